"""Helpers shared by the test packages (fixtures live in the conftest files)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar

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
