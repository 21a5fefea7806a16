"""The fan-out thread: renders the websocket clients' frames, once per group of clients, and queues them on the loop.

One thread for all clients of a process. Clients that follow the same stream in the same way (same endpoint and
normalised query arguments, same path prefix, same role: the session's `group`) form a broadcast group with one
hub subscriber and one renderer (the group's stream). Each tick the thread visits the groups whose frame is due
and who have changes, renders the frame once, frames it once and hands the loop the same bytes object for every
member: per client, a frame costs one write, not one render (before December 2026 every client rendered its own
frame, and the work grew as clients × new tasks). The few fragments that carry a per-session secret (the CSRF token
in an operator's forms) are rendered with a placeholder, replaced per member only in the frames that contain it.

A member that joins, or whose socket was backed up when a frame went out (it skips frames: they are not queued for
it), is out of step: once its socket has room again it gets the group's snapshot (rendered once per group and tick
for every such member), then the group's frames. No per-client queue of rendered messages exists anywhere.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Protocol

from .websocket import FrameCache, Written, write_all

log = logging.getLogger(__name__)

TICK_SECONDS = 0.02
# The thread waits (at most this long) until the loop has written a tick's frames before it renders again: each
# socket write releases the interpreter, and a rendering thread waiting for it took it for up to the switch
# interval (1 ms) at every write, so the loop's writes crawled while frames were rendered (measured: ~90 µs a write,
# up to 134 ms for one tick's writes to 300 clients).
WRITE_WAIT_SECONDS = 0.5
# At most this share of the time goes to frames (rendering them here, writing them on the loop; counted in CPU time,
# not in time spent waiting for a CPU): past it the thread rests in proportion (groups' changes coalesce meanwhile),
# so that under a flood of events and viewers the request threads still get the interpreter and HTTP keeps
# answering. Frames then come later and carry more; nothing is lost.
MAX_BUSY_SHARE = 0.5


class StreamLike(Protocol):
    """What one broadcast group's frames come from (dashboard.web.live.Broadcast)."""

    frame_seconds: float
    placeholder: str  # in frames, stands for each member's own secret ("" when the stream has none)

    def open(self) -> None:
        """Start receiving changes."""

    @property
    def has_changes(self) -> bool:
        """True when something changed since the last frame."""

    def snapshot(self) -> list[str]:
        """What a client joining now (or catching up) is sent first; the stream's own frames are not affected."""

    def joined(self) -> None:
        """Clients were just sent a snapshot: the next frame must suit them as well as the others."""

    def frame(self) -> list[str] | None:
        """The messages for what changed since the last frame (a snapshot after an overflow); None when ended."""

    def close(self) -> None:
        """Stop receiving changes."""


class SessionLike(Protocol):
    """What one websocket client asked for (dashboard.web.live.LiveSession)."""

    client: str  # who holds it (the per-client socket cap counts it)
    group: Hashable  # clients with equal groups are sent the same frames
    secret: str  # what the stream's placeholder stands for in this client's frames

    def broadcast(self) -> StreamLike:
        """A stream for this session's group (called for the group's first member only)."""


class _Connection(Protocol):
    """What the fan-out needs of a socket (WebSocketConnection)."""

    loop: asyncio.AbstractEventLoop

    @property
    def closed(self) -> bool: ...

    @property
    def lagging(self) -> bool: ...

    def write_frames(self, frames: bytes) -> None: ...

    def close(self, code: int = 1000, reason: str = "") -> None: ...


@dataclass(slots=True)
class _Member:
    connection: _Connection
    secret: str
    in_step: bool = False  # had the group's snapshot and every frame since


@dataclass(slots=True)
class _Group:
    stream: StreamLike
    members: list[_Member] = field(default_factory=list)
    due: float = 0.0


Writes = dict[asyncio.AbstractEventLoop, list[tuple[_Connection, bytes]]]


class Fanout:
    """Drives every websocket session of one process from one thread, one render per group and frame."""

    def __init__(self) -> None:
        self._groups: dict[Hashable, _Group] = {}
        self._joining: list[tuple[_Connection, SessionLike]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._framed = FrameCache()  # this thread's own: a message several groups send is framed once
        self._size = 0

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dashboard-fanout", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread and close every stream."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5.0)
        groups, self._groups = self._groups, {}
        for group in groups.values():
            group.stream.close()

    def add(self, connection: _Connection, session: SessionLike) -> None:
        """Drive `session` over `connection` from the next tick on: its group's snapshot first, then its frames."""
        with self._lock:
            self._joining.append((connection, session))
            self._size += 1
        self._wake.set()

    @property
    def size(self) -> int:
        """Clients driven (or about to be)."""
        return self._size

    @property
    def groups(self) -> int:
        """Broadcast groups (streams rendered)."""
        return len(self._groups)

    def _run(self) -> None:
        rest = TICK_SECONDS
        while not self._stop.is_set():
            self._wake.wait(rest)
            self._wake.clear()
            cpu = time.thread_time()
            busy = self.tick(time.monotonic()) + time.thread_time() - cpu
            rest = max(TICK_SECONDS, busy * (1 - MAX_BUSY_SHARE) / MAX_BUSY_SHARE)

    def tick(self, now: float) -> float:
        """One pass: new members join their groups; each due group with changes sends one frame; members out of
        step get a snapshot; the writes go to the loop in one call. Returns the CPU seconds the loop spent
        writing."""
        with self._lock:
            joining, self._joining = self._joining, []
        for connection, session in joining:
            self._join(connection, session)
        writes: Writes = {}
        for key, group in list(self._groups.items()):
            if not self._visit(group, now, writes):
                del self._groups[key]
                self._close_stream(group)
        writing = 0.0
        for loop, pairs in writes.items():
            written = Written()
            try:
                loop.call_soon_threadsafe(write_all, pairs, written)
            except RuntimeError:  # the loop has closed: the process is stopping
                continue
            if written.wait(WRITE_WAIT_SECONDS):
                writing += written.cpu_seconds
        self._size = sum(len(group.members) for group in self._groups.values()) + len(self._joining)
        return writing

    def _join(self, connection: _Connection, session: SessionLike) -> None:
        group = self._groups.get(session.group)
        if group is None:
            try:
                stream = session.broadcast()
                stream.open()
            except Exception:  # noqa: BLE001 - one client's failure must not stop the others' frames
                log.exception("a websocket stream failed to start; closing that client")
                connection.loop.call_soon_threadsafe(connection.close, 1011, "internal error")
                return
            group = self._groups[session.group] = _Group(stream)
        group.members.append(_Member(connection, session.secret))

    def _visit(self, group: _Group, now: float, writes: Writes) -> bool:
        """Send the group's frame if due and any snapshots owed; False when the group is over."""
        group.members = [member for member in group.members if not member.connection.closed]
        if not group.members:
            return False
        stream = group.stream
        try:
            if now >= group.due and stream.has_changes:
                messages = stream.frame()
                if messages is None:
                    self._close_all(group, 1001, "")
                    return False
                group.due = now + stream.frame_seconds
                if any(messages):
                    self._send(group, messages, writes, in_step=True)
            if any(not member.in_step and not member.connection.lagging for member in group.members):
                self._send(group, stream.snapshot(), writes, in_step=False)
                stream.joined()
        except Exception:  # noqa: BLE001 - one group's failure must not stop the others' frames
            log.exception("a websocket frame failed; closing that stream's clients")
            self._close_all(group, 1011, "internal error")
            return False
        return True

    def _send(self, group: _Group, messages: list[str], writes: Writes, *, in_step: bool) -> None:
        """Queue `messages` for the members in step (a frame), or for those out of step with room (a snapshot)."""
        shared = self._framed.frames(messages)
        placeholder = group.stream.placeholder
        personal = bool(placeholder) and any(placeholder in message for message in messages)
        by_secret: dict[str, bytes] = {}
        for member in group.members:
            connection = member.connection
            if member.in_step != in_step:
                continue
            if connection.lagging:
                member.in_step = False  # it misses this frame: a snapshot once it caught up
                continue
            member.in_step = True
            data = shared
            if personal:
                data = by_secret.get(member.secret, b"")
                if not data:
                    data = by_secret[member.secret] = self._framed.frames(
                        [message.replace(placeholder, member.secret) for message in messages], keep=False)
            if data:
                writes.setdefault(connection.loop, []).append((connection, data))

    def _close_all(self, group: _Group, code: int, reason: str) -> None:
        for member in group.members:
            member.connection.loop.call_soon_threadsafe(member.connection.close, code, reason)
        group.members = []

    @staticmethod
    def _close_stream(group: _Group) -> None:
        try:
            group.stream.close()
        except Exception:  # noqa: BLE001 - closing must go on for the other groups
            log.exception("closing a websocket stream failed")
