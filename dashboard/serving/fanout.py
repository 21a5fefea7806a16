"""The fan-out thread: renders every websocket client's frames and queues them on the loop.

One thread for all clients of a process, instead of one per client: each tick it visits the clients whose frame
is due and who have changes, asks their session for the messages (the session renders the *current* state of
what changed, from the shared render cache), frames them (a message many clients get is framed once) and hands
the loop one buffer per client to write without blocking: the loop itself only writes. A client
whose socket is backed up is skipped: its changes coalesce in its subscriber until it catches up (or, past the
subscriber's bound, it gets a fresh snapshot).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from .websocket import FrameCache, WebSocketConnection

log = logging.getLogger(__name__)

TICK_SECONDS = 0.02
# At most this share of the time goes to rendering frames: past it the thread rests in proportion (clients' changes
# coalesce meanwhile), so that under a flood of events and viewers the loop and the request threads still get the
# interpreter and HTTP keeps answering. Frames then come later and carry more; nothing is lost.
MAX_BUSY_SHARE = 0.5


class SessionLike(Protocol):
    """What the fan-out drives (dashboard.web.live.LiveSession)."""

    client: str
    frame_seconds: float

    def open(self) -> None:
        """Start receiving changes."""

    @property
    def has_changes(self) -> bool:
        """True when something changed since the last frame."""

    def frame(self, first: bool) -> list[str] | None:
        """The messages for the next frame (the snapshot when `first`); None when the session ended."""

    def close(self) -> None:
        """Stop receiving changes."""


@dataclass(slots=True)
class _Client:
    connection: WebSocketConnection
    session: SessionLike
    due: float = 0.0
    first: bool = True


class Fanout:
    """Drives every websocket session of one process from one thread."""

    def __init__(self) -> None:
        self._clients: list[_Client] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._framed = FrameCache()  # this thread's own: the same task message framed once for every client

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dashboard-fanout", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread and close every session."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5.0)
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.session.close()

    def add(self, connection: WebSocketConnection, session: SessionLike) -> None:
        """Drive `session` over `connection` from now on: a snapshot first."""
        session.open()
        with self._lock:
            self._clients.append(_Client(connection, session))
        self._wake.set()

    @property
    def size(self) -> int:
        """Clients driven."""
        return len(self._clients)

    def _run(self) -> None:
        rest = TICK_SECONDS
        while not self._stop.is_set():
            self._wake.wait(rest)
            self._wake.clear()
            with self._lock:
                clients = list(self._clients)
            started = time.monotonic()
            gone = [client for client in clients if not self._visit(client)]
            busy = time.monotonic() - started
            rest = max(TICK_SECONDS, busy * (1 - MAX_BUSY_SHARE) / MAX_BUSY_SHARE)
            if gone:
                with self._lock:
                    self._clients = [client for client in self._clients if client not in gone]
                for client in gone:
                    client.session.close()

    def _visit(self, client: _Client) -> bool:
        """Send the client's frame if it is due; False when the client is gone."""
        connection, session = client.connection, client.session
        if connection.closed:
            return False
        now = time.monotonic()
        if now < client.due or connection.lagging or (not client.first and not session.has_changes):
            return True
        try:
            messages = session.frame(client.first)
        except Exception:  # noqa: BLE001 - one client's failure must not stop the others' frames
            log.exception("a websocket frame failed; closing that client")
            connection.loop.call_soon_threadsafe(connection.close, 1011, "internal error")
            return False
        if messages is None:
            connection.loop.call_soon_threadsafe(connection.close, 1001, "")
            return False
        client.first = False
        client.due = now + session.frame_seconds
        if any(messages):
            connection.send_threadsafe(self._framed.frames(messages))
        return True
