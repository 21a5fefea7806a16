"""Requests before ingest: while the serving loop has a request in hand, the event thread pauses between events.

Why: one process runs the event thread and the request threads under one GIL. Draining a backlog, the event
thread never waits on anything, so a request gets the interpreter only at forced switches (every
`sys.getswitchinterval()`, 1 ms here), several times per request: `GET /api/tasks/<id>`, 0.6 ms of work, took
p95 13–46 ms while ingest was saturated (bench/README.md). Pausing the event thread while a request is served
gives the request the interpreter for its whole run; events wait in the socket buffers meanwhile, nothing is
lost. Bounded: a pause lasts at most `max_pause`; when requests were still in flight at its end, the event thread
runs for `min_run` before it pauses again, so a stream of requests slows ingest down but never stops it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

MAX_PAUSE_SECONDS = 0.05
MIN_RUN_SECONDS = 0.01


class RequestPriority:
    """Counts requests in flight (the serving loop) and makes the event thread wait for them (the listener)."""

    def __init__(self, max_pause: float = MAX_PAUSE_SECONDS, min_run: float = MIN_RUN_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_pause = max_pause
        self.min_run = min_run
        self._clock = clock
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self._in_flight = 0
        self._run_until = 0.0
        self.pauses = 0  # times the event thread waited (for /metrics and benchmarks)

    @property
    def in_flight(self) -> int:
        """Requests being served now."""
        return self._in_flight

    def begin(self) -> None:
        """A request arrived (its first bytes)."""
        with self._lock:
            self._in_flight += 1
            self._idle.clear()

    def end(self) -> None:
        """That request's answer is written (or it failed)."""
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)
            if self._in_flight == 0:
                self._idle.set()

    def yield_to_requests(self) -> None:
        """The event thread, between events: wait while requests are served (bounded, see the module's doc)."""
        if not self._in_flight:
            return
        now = self._clock()
        if now < self._run_until:
            return
        self.pauses += 1
        if not self._idle.wait(self.max_pause):
            # requests kept coming for a whole pause: ingest takes its turn before it yields again
            self._run_until = self._clock() + self.min_run
