"""Periodic jobs on one thread (worker and broker inspection, the routing comparison, resync, retention), with
a quick retry and a capped backoff while the broker is away."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..client import BROKER_ERRORS

log = logging.getLogger(__name__)

JOB_RETRY_SECONDS = 1.0  # a job the broker failed runs again this soon, not a whole interval later


@dataclass
class Job:
    """A named job run every `every` seconds (and soon after it is kicked)."""

    name: str
    every: float
    run: Callable[[], None]
    due: float = 0.0
    failures: int = 0  # broker failures in a row


class Bell:
    """Rung to make jobs due now (a worker came or went; the stream reconnected), by whoever notices: built before
    the jobs, so that what the jobs depend on can ring it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rung: set[str | None] = set()
        self.event = threading.Event()

    def ring(self, name: str | None = None) -> None:
        """Make job `name` (None: every job) due now, and wake the jobs thread."""
        with self._lock:
            self._rung.add(name)
        self.event.set()

    def take(self) -> set[str | None]:
        """The names rung since the last take."""
        with self._lock:
            rung, self._rung = self._rung, set()
        return rung


class Jobs:
    """The jobs of one process, given at construction. `run_due` runs the due ones in order; a ring of the bell
    makes one (or all) due now and wakes the thread that waits in `wait`."""

    def __init__(self, jobs: Iterable[Job], bell: Bell | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._jobs = tuple(jobs)
        self.bell = bell if bell is not None else Bell()
        self.clock = clock

    @property
    def names(self) -> tuple[str, ...]:
        """The jobs' names, in the order they run."""
        return tuple(job.name for job in self._jobs)

    def kick(self, name: str | None = None) -> None:
        """Make a job (or every job) due now, e.g. after a worker came online or the broker came back."""
        self.bell.ring(name)

    def wait(self, timeout: float) -> None:
        """Sleep until the bell rings or `timeout` passed."""
        self.bell.event.wait(timeout)
        self.bell.event.clear()

    def wake(self) -> None:
        """Wake the waiting thread without making anything due (to stop it)."""
        self.bell.event.set()

    def run_due(self) -> None:
        """Run every due job, one after another (rung ones first made due)."""
        rung = self.bell.take()
        for job in self._jobs:
            if None in rung or job.name in rung:
                job.due = 0.0
                job.failures = 0  # e.g. the broker is back: a failure now is retried after a second again
        now = self.clock()
        for job in self._jobs:
            if now < job.due:
                continue
            job.due = now + job.every
            try:
                job.run()
            except BROKER_ERRORS as exc:
                # Try again soon rather than a whole interval later (the broker may be back in a second),
                # backing off while it stays away: 1 s, 2 s, 4 s ... up to the job's own interval.
                job.due = now + min(job.every, JOB_RETRY_SECONDS * 2 ** min(job.failures, 16))
                job.failures += 1
                level = logging.WARNING if job.failures == 1 else logging.DEBUG
                log.log(level, "%s: broker unreachable (%s)", job.name, type(exc).__name__)
            except Exception:  # noqa: BLE001 - one failing job must not stop the others
                log.exception("%s failed", job.name)
            else:
                if job.failures:
                    log.info("%s: broker reachable again after %d failed run(s)", job.name, job.failures)
                job.failures = 0
