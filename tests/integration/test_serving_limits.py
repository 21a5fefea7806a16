"""Slow, idle and half-sent connections, websocket floods and oversized requests against `dispatch-dashboard serve`.

Once (gunicorn gthread, 64 threads): 64 connections that sent "GET /heal" and nothing more, or 64 open websockets,
left no thread for anyone: /healthz timed out for as long as they stayed. Every check here runs on the real
server (gunicorn master + the dashboard's worker) with a low request_timeout and low websocket caps, on the
session's real Redis.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import simple_websocket

from tests.support.http import WebSocketClient, call
from tests.support.live_server import LiveServer, LiveServerError, dashboard_config, start_live_server
from tests.support.waits import wait_until

REQUEST_TIMEOUT = 2.0  # [server] request_timeout for these servers
MAX_WEBSOCKETS = 40
PER_CLIENT = 100  # above the process cap here: the per-client cap has its own test (tests/unit/test_serving.py)
FLOOD = 200  # far more than the 64 threads that once were the limit
ANSWER_BOUND = 2.0  # /healthz and the API must answer within this while the flood holds on
SLACK = 2.0


@pytest.fixture(scope="module")
def server(broker_url: str, backend_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    config = dashboard_config(
        broker_url, backend_url, audit={"path": ""},
        server={"request_timeout": REQUEST_TIMEOUT, "max_websockets": MAX_WEBSOCKETS,
                "max_websockets_per_client": PER_CLIENT},
    )
    try:
        started = start_live_server(config, tmp_path_factory.mktemp("limits"), name="limits")
    except LiveServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield started
    finally:
        started.stop()


def timed_health(server: LiveServer) -> float:
    started = time.monotonic()
    reply = call(server, "GET", "/healthz", timeout=ANSWER_BOUND + SLACK)
    assert reply.status == 200, reply
    return time.monotonic() - started


@contextlib.contextmanager
def connections(server: LiveServer, count: int, payload: bytes) -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            if payload:
                sock.sendall(payload)
            opened.append(sock)
        yield opened
    finally:
        for sock in opened:
            sock.close()


def closed_by_server(sock: socket.socket, within: float) -> bytes | None:
    """What the server sent before closing the connection, or None if it stayed open for `within` s."""
    sock.settimeout(within)
    received = b""
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            chunk = sock.recv(4096)
            if not chunk:
                return received
            received += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        return received
    return None


HALF_BODY = b"POST /api/dispatch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 500\r\n\r\n{"


@pytest.mark.parametrize("payload", [b"GET /heal", b"", HALF_BODY], ids=["half-request-line", "idle", "half-body"])
def test_a_flood_of_stalled_connections_stops_nobody(server: LiveServer, payload: bytes) -> None:
    with connections(server, FLOOD, payload) as stalled:
        slowest = max(timed_health(server) for _ in range(5))
        assert call(server, "GET", "/api/status").status == 200
        print(f"\n[limits] {FLOOD} stalled ({payload[:20]!r}): slowest /healthz {slowest * 1000:.0f} ms")
        assert slowest <= ANSWER_BOUND

        # The server closes them itself once the request deadline passed (408 when a request had begun)
        answer = closed_by_server(stalled[0], REQUEST_TIMEOUT + SLACK + 3)
        assert answer is not None, "a stalled connection was never closed"
        if payload:
            assert answer.startswith(b"HTTP/1.1 408"), answer[:80]


def test_a_slowloris_drip_is_cut_at_the_request_deadline(server: LiveServer) -> None:
    with connections(server, 1, b"G") as (sock,):
        started = time.monotonic()
        closed = False
        for byte in b"ET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaa":
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.25)
            if time.monotonic() - started > REQUEST_TIMEOUT + SLACK + 3:
                break
        answer = b"" if closed else closed_by_server(sock, SLACK)
        assert closed or (answer is not None and answer.startswith(b"HTTP/1.1 408")), answer
        assert time.monotonic() - started <= REQUEST_TIMEOUT + SLACK + 4


def ws_connect(server: LiveServer, path: str = "/ws/events?tasks=0") -> WebSocketClient:
    client: WebSocketClient = WebSocketClient.connect(f"ws://127.0.0.1:{server.port}{path}",
                                                      headers={"Origin": "http://127.0.0.1"})
    return client


def test_websockets_past_the_cap_are_refused_at_once_and_http_keeps_answering(server: LiveServer) -> None:
    opened: list[Any] = []
    try:
        for _ in range(MAX_WEBSOCKETS):
            ws = ws_connect(server)
            assert ws.receive(timeout=5) is not None  # the snapshot: this socket is really served
            opened.append(ws)
        slowest = max(timed_health(server) for _ in range(5))
        print(f"\n[limits] {len(opened)} websockets open: slowest /healthz {slowest * 1000:.0f} ms")
        assert slowest <= ANSWER_BOUND
        assert call(server, "GET", "/api/tasks").status == 200
        # an open websocket is not a request in flight: the event thread would otherwise pause for it
        metrics = call(server, "GET", "/metrics").text
        assert "dispatch_dashboard_requests_in_flight 1.0" in metrics  # that /metrics request alone

        started = time.monotonic()
        with pytest.raises(simple_websocket.ConnectionError) as refused:
            ws_connect(server)
        assert time.monotonic() - started <= ANSWER_BOUND, "the refusal came at once, not after a hang"
        assert refused.value.status_code == 503

        opened.pop().close()
        time.sleep(0.5)
        again = ws_connect(server)  # a freed place can be taken again
        opened.append(again)
    finally:
        for ws in opened:
            with contextlib.suppress(Exception):
                ws.close()


def test_a_client_that_never_reads_does_not_slow_the_others(server: LiveServer) -> None:
    # A raw websocket that completes the handshake, then never reads: the server's queue for it is bounded.
    with connections(server, 1, b"") as (silent,):
        silent.sendall(b"GET /ws/events?tasks=1000 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                       b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       b"Sec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1\r\n\r\n")
        silent.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        ws = ws_connect(server)
        try:
            assert ws.receive(timeout=5) is not None
            assert timed_health(server) <= ANSWER_BOUND
        finally:
            ws.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 64_000 + b"\r\n\r\n", b"431"),
        (b"POST /api/dispatch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000000\r\n\r\n", b"413"),
        (b"NOT HTTP AT ALL\r\n\r\n", b"400"),
    ],
    ids=["huge-header", "huge-body", "garbage"],
)
def test_oversized_or_malformed_requests_are_refused_without_reading_on(
    server: LiveServer, request_bytes: bytes, status: bytes
) -> None:
    with connections(server, 1, b"") as (sock,):
        with contextlib.suppress(OSError):
            sock.sendall(request_bytes)
        answer = closed_by_server(sock, 5)
    assert answer is not None and answer.split(b" ", 2)[1] == status, (answer or b"")[:120]


def test_no_server_header_and_forwarded_proto_is_not_believed(server: LiveServer) -> None:
    with connections(server, 1, b"") as (sock,):
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n")
        answer = closed_by_server(sock, 5) or b""
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 "), head[:80]
    assert b"\r\nserver:" not in head, "the Server header names the software"
    cookies = [line for line in head.split(b"\r\n") if line.startswith(b"set-cookie")]
    assert cookies, "the page sets its session cookie (the CSRF token)"
    assert not any(b"secure" in cookie for cookie in cookies), cookies


def test_readyz_says_ready_once_the_stream_is_live_and_workers_were_inspected(server: LiveServer) -> None:
    def ready() -> Any:
        reply = call(server, "GET", "/readyz")
        assert reply.status in (200, 503), reply
        return reply.data if reply.status == 200 else None

    body = wait_until(ready, 20.0, "/readyz 200", server)
    assert body == {"status": "ready", "broker": "live", "inspected": True}
    assert call(server, "GET", "/healthz").status == 200
