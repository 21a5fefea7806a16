"""A real local HTTP receiver for alert webhooks: records every POST; each path answers as scripted.

Paths: any path answers 200, unless `script(path, [statuses])` gave it statuses to answer first (one per request),
or `hang(path)` made it hold every request until `release()` (or the receiver stops).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dashboard.services.processes import free_port

HOST = "127.0.0.1"
HANG_LIMIT = 60.0  # a held request is answered at the latest after this, so the server always stops


@dataclass(frozen=True)
class Received:
    """One POST as the receiver got it."""

    path: str
    headers: dict[str, str]
    raw: bytes
    at: float  # time.monotonic()

    @property
    def body(self) -> Any:
        """The body as JSON."""
        return json.loads(self.raw)


class WebhookReceiver:
    """A ThreadingHTTPServer on a free loopback port, in a daemon thread."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._scripts: dict[str, list[int]] = {}
        self._hanging: set[str] = set()
        self._released = threading.Event()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.received.append(Received(self.path, dict(self.headers.items()), raw, time.monotonic()))
                    script = receiver._scripts.get(self.path)
                    status = script.pop(0) if script else 200
                    hang = self.path in receiver._hanging
                if hang:
                    receiver._released.wait(HANG_LIMIT)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the dashboard gave up waiting and closed the connection

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
                return

        self.server = ThreadingHTTPServer((HOST, free_port(HOST)), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{HOST}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def start(self) -> WebhookReceiver:
        """Serve in the background."""
        self._thread.start()
        return self

    def script(self, path: str, statuses: list[int]) -> None:
        """Answer the next requests to `path` with these statuses, then 200."""
        with self._lock:
            self._scripts[path] = list(statuses)

    def hang(self, path: str) -> None:
        """Hold every request to `path` until release()."""
        with self._lock:
            self._hanging.add(path)

    def release(self) -> None:
        """Answer the held requests."""
        self._released.set()

    def posts(self, path: str, event: str | None = None, key: str | None = None) -> list[Received]:
        """What `path` received, optionally only one event of one alert key."""
        with self._lock:
            found = [r for r in self.received if r.path == path]
        return [r for r in found if (event is None or r.body.get("event") == event)
                and (key is None or r.body.get("key") == key)]

    def stop(self) -> None:
        """Release held requests and stop serving."""
        self.release()
        self.server.shutdown()
        self.server.server_close()
