"""A broker that hangs: a TCP server on 127.0.0.1 that accepts every connection, reads and discards, never answers."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading


class HungBroker:
    """A TCP server on 127.0.0.1 that accepts every connection, reads and discards, and never answers."""

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self.accepted = 0
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hung-broker", daemon=True)

    def url(self, db: int = 0) -> str:
        """A redis:// URL pointing at it."""
        return f"redis://127.0.0.1:{self.port}/{db}"

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.1):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                if sock is self._listener:
                    with contextlib.suppress(BlockingIOError):
                        conn, _ = sock.accept()
                        conn.setblocking(False)
                        self._selector.register(conn, selectors.EVENT_READ)
                        self.accepted += 1
                    continue
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, ConnectionError):
                    data = b"x"
                if not data:  # the client gave up: forget it
                    self._selector.unregister(sock)
                    sock.close()

    def __enter__(self) -> HungBroker:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()
