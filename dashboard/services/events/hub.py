"""Fan-out of state changes to connected clients, coalesced and bounded per client.

The event thread only marks keys dirty (O(1) per subscriber, never blocking on a socket). Each client's
own thread takes the dirty keys at its own frame rate and renders the *current* state of each, so a burst
of 1000 events about one task costs one message, and a slow client only falls behind itself: when its
pending set overflows it is resynced with a full snapshot instead of being left stale.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["task", "worker", "alert", "status", "routing", "gap", "webhook"]
KINDS: tuple[Kind, ...] = ("task", "worker", "alert", "status", "routing", "gap", "webhook")
DEFAULT_MAX_PENDING = 5_000


@dataclass(slots=True)
class Batch:
    """What changed for one client since its last frame; `resync` means: send a whole snapshot instead."""

    keys: dict[Kind, list[str]] = field(default_factory=dict)
    resync: bool = False

    def __bool__(self) -> bool:
        return self.resync or any(self.keys.values())

    def get(self, kind: Kind) -> list[str]:
        """The dirty keys of one kind, oldest mark first."""
        return self.keys.get(kind, [])


class Subscriber:
    """One client's pending changes: a bounded, de-duplicated set of dirty keys per kind."""

    def __init__(self, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._pending: dict[Kind, dict[str, None]] = {kind: {} for kind in KINDS}
        self._count = 0
        self._max_pending = max_pending
        self._resync = False
        self._closed = False
        self.overflows = 0

    def mark(self, kind: Kind, key: str) -> None:
        """Note that `key` changed; called by the event thread, never blocks on I/O."""
        with self._cond:
            if self._closed or self._resync:
                return
            pending = self._pending[kind]
            if key not in pending:
                if self._count >= self._max_pending:
                    self._overflow()
                else:
                    pending[key] = None
                    self._count += 1
            self._cond.notify()

    def request_resync(self) -> None:
        """Ask for a full snapshot at the next frame (after a broker reconnect, say)."""
        with self._cond:
            self._resync = True
            self._clear()
            self._cond.notify()

    def _overflow(self) -> None:
        self.overflows += 1
        self._resync = True
        self._clear()

    def _clear(self) -> None:
        for pending in self._pending.values():
            pending.clear()
        self._count = 0

    def take(self, timeout: float) -> Batch | None:
        """Wait up to `timeout` for changes and take them all; None when closed."""
        with self._cond:
            if not self._closed and not self._resync and self._count == 0:
                self._cond.wait(timeout)
            if self._closed:
                return None
            batch = Batch({kind: list(keys) for kind, keys in self._pending.items() if keys}, self._resync)
            self._resync = False
            self._clear()
            return batch

    def close(self) -> None:
        """Stop delivering; a waiting take() returns None."""
        with self._cond:
            self._closed = True
            self._clear()
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        """True once closed."""
        return self._closed

    @property
    def has_changes(self) -> bool:
        """True when a take() would return something now (read without the lock: a hint for pollers)."""
        return self._count > 0 or self._resync


class Hub:
    """The set of subscribers; the event thread publishes changes to all of them."""

    def __init__(self, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self._lock = threading.Lock()
        self._subscribers: tuple[Subscriber, ...] = ()
        self._max_pending = max_pending

    def subscribe(self) -> Subscriber:
        """A new subscriber that receives every change from now on."""
        subscriber = Subscriber(self._max_pending)
        with self._lock:
            self._subscribers = (*self._subscribers, subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Forget a subscriber and close it."""
        subscriber.close()
        with self._lock:
            self._subscribers = tuple(s for s in self._subscribers if s is not subscriber)

    def publish(self, kind: Kind, key: str = "") -> None:
        """Mark `key` of `kind` dirty for every subscriber."""
        for subscriber in self._subscribers:  # a tuple swapped atomically: no lock on the hot path
            subscriber.mark(kind, key)

    def publish_many(self, kind: Kind, keys: Iterable[str]) -> None:
        """Mark several keys dirty."""
        for key in keys:
            self.publish(kind, key)

    def resync_all(self) -> None:
        """Every subscriber gets a full snapshot at its next frame."""
        for subscriber in self._subscribers:
            subscriber.request_resync()

    @property
    def size(self) -> int:
        """How many clients are subscribed."""
        return len(self._subscribers)

    def overflow_total(self) -> int:
        """Resyncs forced by overflow across the current subscribers."""
        return sum(s.overflows for s in self._subscribers)
