"""The serving loop tells the event thread's priority gate of every request, from its first byte until its answer
is written, and never of an idle connection (a real Server on a loopback socket, in a thread)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dashboard.services.priority import RequestPriority
from dashboard.serving.server import Limits, Server


@pytest.fixture
def served() -> Iterator[tuple[Server, RequestPriority, int, list[int]]]:
    priority = RequestPriority()
    seen_in_flight: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen_in_flight.append(priority.in_flight)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = Server(app, Limits(request_timeout=1.0, keepalive_timeout=1.0), requests=priority)
    thread = threading.Thread(target=server.run, args=([listener],), daemon=True)
    thread.start()
    yield server, priority, port, seen_in_flight
    server.stop()
    thread.join(10)
    listener.close()


def get(sock: socket.socket) -> bytes:
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = b""
    while not answer.endswith(b"ok"):
        chunk = sock.recv(4096)
        assert chunk, "the server closed the connection"
        answer += chunk
    return answer


def settles(priority: RequestPriority, value: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if priority.in_flight == value:
            return True
        time.sleep(0.01)
    return False


def test_each_request_counts_while_it_is_handled_and_not_after(
        served: tuple[Server, RequestPriority, int, list[int]]) -> None:
    _, priority, port, seen = served
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        for _ in range(3):  # kept alive: three requests on one connection
            assert b"200 OK" in get(sock)
        assert settles(priority, 0)  # the connection is open and idle: nothing counts

    assert seen == [1, 1, 1]


def test_a_request_that_never_completes_stops_counting_at_its_deadline(
        served: tuple[Server, RequestPriority, int, list[int]]) -> None:
    _, priority, port, _ = served
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost")  # half a request
        assert settles(priority, 1)
        assert b"408" in sock.recv(4096)  # request_timeout is 1 s

    assert settles(priority, 0)
