"""Helpers shared by the test packages (fixtures live in the conftest files)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import pytest
import simple_websocket

from dashboard.services.processes import ProcessError


class _Process(Protocol):
    def start(self) -> object: ...

    def stop(self) -> object: ...


P = TypeVar("P", bound=_Process)


@contextmanager
def started(process: P) -> Iterator[P]:
    """Start a RedisServer, CeleryWorker or similar; fail the test with its log tail if it cannot; stop it after."""
    try:
        process.start()
    except ProcessError as exc:  # the message carries the process's log tail
        pytest.fail(str(exc), pytrace=False)
    try:
        yield process
    finally:
        process.stop()


class WebSocketClient(simple_websocket.Client):
    """simple_websocket's client without its handshake race (simple-websocket 1.1.0).

    Its handshake reads the socket once and takes only the first event: when the server's first frame came in
    the same read as the 101 answer (a busy machine, a server that sends a snapshot at once), wsproto holds that
    frame, and the reader thread looks at it only after the next read, which may never come: `receive()` then
    times out on a message that arrived. Surface what the handshake read before the reader thread starts.
    """

    def handshake(self) -> None:
        super().handshake()
        if self.connected:
            self.connected = self._handle_events()


# -- HTTP against a live dashboard -----------------------------------------------------------------------------

HTTP_TIMEOUT = 5.0
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy for 127.0.0.1


class _Served(Protocol):
    url: str

    def log_tail(self, lines: int = ...) -> str: ...


@dataclass(frozen=True)
class Reply:
    """An HTTP answer, whatever its status, with the body decoded as JSON when it is JSON."""

    status: int
    body: Any


def call(server: _Served, method: str, path: str, payload: Any = None, *, raw: bytes | None = None,
         timeout: float = HTTP_TIMEOUT) -> Reply:
    """One bounded request; `payload` is sent as JSON, `raw` as is (for malformed bodies)."""
    data = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else None)
    headers = {"Content-Type": "application/json"} if data is not None else {}
    request = urllib.request.Request(server.url + path, data=data, method=method, headers=headers)
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    try:
        return Reply(status, json.loads(body))
    except ValueError:
        return Reply(status, body.decode(errors="replace"))


def get(server: _Served, path: str) -> Any:
    """GET a JSON endpoint that must answer 200."""
    reply = call(server, "GET", path)
    assert reply.status == 200, (path, reply)
    return reply.body


def wait_until(condition: Callable[[], Any], timeout: float, what: str, server: _Served | None = None) -> Any:
    """Poll `condition` until it returns something truthy, or fail after `timeout` s (with the server's log)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            tail = f"\n--- server log ---\n{server.log_tail(30)}" if server is not None else ""
            pytest.fail(f"no {what} within {timeout:.1f} s{tail}", pytrace=False)
        time.sleep(0.1)
