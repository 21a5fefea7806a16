"""The event stream's record: its current status, and the gaps in it (times when events may have been lost).

Written by the listener's callbacks (event thread) and by the resync job, read by any web thread: everything
here is under one lock, and readers get copies.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .listener import BrokerStatus, StatusReport

MAX_GAPS = 20


@dataclass
class Gap:
    """A time when events may have been lost: from `started` (the last moment the stream was known whole: the
    newest event's send time) to `ended` (subscribed again); `detected` is when the cut was noticed, `resynced`
    when the recovery of task states after it finished."""

    started: float
    ended: float | None = None
    reason: str = ""
    detected: float | None = None
    resynced: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"started": self.started, "ended": self.ended, "reason": self.reason, "detected": self.detected,
                "resynced": self.resynced}


class StreamLog:
    """The stream's status and its latest gaps."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._status = StatusReport(BrokerStatus.CONNECTING, clock(), "not started")
        self._gaps: list[Gap] = []
        self._was_live = False
        self.gaps_total = 0
        self.connects = 0

    @property
    def status(self) -> StatusReport:
        """The latest status report."""
        return self._status

    @property
    def live(self) -> bool:
        """True while the stream is live."""
        return self._status.status is BrokerStatus.LIVE

    @property
    def gaps(self) -> list[Gap]:
        """The latest gaps (at most MAX_GAPS), oldest first, as copies."""
        with self._lock:
            return [dataclasses.replace(gap) for gap in self._gaps]

    def reported(self, report: StatusReport, sure_until: float | None) -> bool:
        """Record a status change; True when it opened a gap (a live stream was lost). Events were surely all
        received up to `sure_until` (the newest event's send time), so the gap starts there, not at the report."""
        with self._lock:
            self._status = report
            if report.status is BrokerStatus.LIVE or not self._was_live:
                return False
            self._was_live = False
            started = min(sure_until, report.since) if sure_until is not None else report.since
            self.gaps_total += 1
            self._gaps.append(Gap(started, None, report.detail, detected=report.since))
            del self._gaps[:-MAX_GAPS]
            return True

    def connected(self) -> bool:
        """The stream is subscribed (again); True when that closed an open gap."""
        with self._lock:
            self.connects += 1
            self._was_live = True
            if self._gaps and self._gaps[-1].ended is None:
                self._gaps[-1].ended = self.clock()
                return True
            return False

    def downtime(self, started: float) -> None:
        """The dashboard itself was down since `started` (the newest change history holds): a gap like any other,
        closed at once when the stream is already live, else when it connects; the resync job recovers it."""
        with self._lock:
            now = self.clock()
            self.gaps_total += 1
            self._gaps.append(Gap(min(started, now), now if self._was_live else None,
                                  "the dashboard was not running", detected=now))
            del self._gaps[:-MAX_GAPS]

    def unresynced_gap(self) -> int | None:
        """The number (gaps_total) of the latest gap when it has closed and not been resynced yet, else None."""
        with self._lock:
            if self._gaps and self._gaps[-1].ended is not None and self._gaps[-1].resynced is None:
                return self.gaps_total
            return None

    def resynced(self, number: int) -> bool:
        """The resync after gap `number` finished; True when that gap is still the latest."""
        with self._lock:
            if number != self.gaps_total or not self._gaps or self._gaps[-1].resynced is not None:
                return False
            self._gaps[-1].resynced = self.clock()
            return True
