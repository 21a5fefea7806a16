"""A small reverse proxy for tests: serves a dashboard under a path prefix, as nginx with X-Forwarded-* would.

Each client connection carries one request (the proxy asks both sides to close after it), or one websocket,
piped byte for byte after the rewritten request head.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
from collections.abc import Iterator

HEAD_LIMIT = 64 * 1024
IO_TIMEOUT = 30.0


class _Handler(socketserver.BaseRequestHandler):
    server: _ProxyServer

    def handle(self) -> None:
        client: socket.socket = self.request
        client.settimeout(IO_TIMEOUT)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk or len(head) > HEAD_LIMIT:
                return
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, version = request_line.split(" ", 2)
        prefix = self.server.prefix
        if not (target == prefix or target.startswith(prefix + "/") or target.startswith(prefix + "?")):
            client.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        target = target[len(prefix):] or "/"
        upgrade = any(line.lower().startswith("upgrade:") for line in header_lines)
        kept = [line for line in header_lines if not line.lower().startswith(("connection:", "x-forwarded-"))]
        public_host = next((line.split(":", 1)[1].strip() for line in header_lines if line.lower().startswith("host:")),
                           "")
        kept += [
            f"X-Forwarded-For: {self.client_address[0]}",
            "X-Forwarded-Proto: http",
            f"X-Forwarded-Host: {public_host}",
            f"X-Forwarded-Prefix: {prefix}",
            "Connection: Upgrade" if upgrade else "Connection: close",
        ]
        upstream = socket.create_connection(self.server.upstream, timeout=IO_TIMEOUT)
        with upstream:
            upstream.sendall(f"{method} {target} {version}\r\n".encode("latin-1")
                             + "\r\n".join(kept).encode("latin-1") + b"\r\n\r\n" + rest)
            _pipe(client, upstream)


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""

    def copy(source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                target.sendall(chunk)
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    back = threading.Thread(target=copy, args=(b, a), daemon=True)
    back.start()
    copy(a, b)
    back.join(IO_TIMEOUT)


class _ProxyServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream: tuple[str, int], prefix: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = upstream
        self.prefix = prefix.rstrip("/")


@contextlib.contextmanager
def reverse_proxy(upstream_port: int, prefix: str) -> Iterator[str]:
    """Serve http://127.0.0.1:<port><prefix>/ -> 127.0.0.1:`upstream_port`; yields the public base URL."""
    server = _ProxyServer(("127.0.0.1", upstream_port), prefix)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{server.prefix}"
    finally:
        server.shutdown()
        server.server_close()
