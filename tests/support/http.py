"""HTTP and websocket clients for tests against a live dashboard: one Reply, one request function."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from typing import Any, Protocol

import simple_websocket

HTTP_TIMEOUT = 10.0
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy for 127.0.0.1


class Served(Protocol):
    """A server the tests reach by URL (tests.support.live_server.LiveServer)."""

    url: str

    def log_tail(self, lines: int = ...) -> str: ...


@dataclass(frozen=True)
class Reply:
    """An HTTP answer, whatever its status, and how long it took."""

    status: int
    headers: Message
    body: bytes
    elapsed: float

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)

    @property
    def text(self) -> str:
        """The body as text."""
        return self.body.decode("utf-8", "replace")

    @property
    def data(self) -> Any:
        """The body as JSON when it is JSON, else as text."""
        try:
            return self.json()
        except ValueError:
            return self.text


def request(server: Served, method: str, path: str, payload: Any = None, *, raw: bytes | None = None,
            headers: Mapping[str, str] | None = None, timeout: float = HTTP_TIMEOUT) -> Reply:
    """One bounded request; `payload` is sent as JSON, `raw` as is. 4xx/5xx come back as a Reply too."""
    data = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else None)
    sent = {"Content-Type": "application/json"} if data is not None else {}
    sent.update(headers or {})
    req = urllib.request.Request(server.url + path, data=data, method=method, headers=sent)
    started = time.monotonic()
    try:
        with _OPENER.open(req, timeout=timeout) as response:
            return Reply(response.status, response.headers, response.read(), time.monotonic() - started)
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.headers, exc.read(), time.monotonic() - started)


call = request  # the name the routing and RabbitMQ tests use


def get_json(server: Served, path: str) -> Any:
    """GET a JSON endpoint that must answer 200."""
    reply = request(server, "GET", path)
    assert reply.status == 200, (path, reply.status, reply.body[:500])
    return reply.json()


get = get_json


class WebSocketClient(simple_websocket.Client):
    """simple_websocket's client without its handshake race (simple-websocket 1.1.0).

    Its handshake reads the socket once and takes only the first event: when the server's first frame came in
    the same read as the 101 answer (a busy machine, a server that sends a snapshot at once), wsproto holds that
    frame, and the reader thread looks at it only after the next read, which may never come: `receive()` then
    times out on a message that arrived. Surface what the handshake read before the reader thread starts.
    """

    def handshake(self) -> None:
        super().handshake()
        if self.connected:  # type: ignore[has-type]  # an attribute of the untyped base
            self.connected = self._handle_events()
