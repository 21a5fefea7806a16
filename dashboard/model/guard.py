"""Should a dispatch be confirmed first? Judged from the routing comparison alone (pure).

"Who consumes a queue" and "who registers a name" are defined once, by the comparison (model/routing.py): a
queue's online consumers, a name's online registrars. Every name an online worker registers is in the report, so
a name it does not hold is registered by nobody.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from .routing import RoutingReport

CLOSE_ENOUGH = 0.9  # difflib's ratio for "did you mean": a typo or two in a dotted task name, not another name


@dataclass(frozen=True)
class Guard:
    """Why a dispatch deserves a confirmation: no consumer for its queue, or no worker registers the name."""

    queue: str
    no_consumer: bool
    unregistered: bool
    known: bool  # False before the first comparison, or while the event stream is down: nothing can be said
    suggestion: str | None = None  # a registered name close to an unregistered one: the typo case

    @property
    def warnings(self) -> list[str]:
        """Plain sentences for the form and the 409 body."""
        out = []
        if self.no_consumer:
            out.append(f"no online worker consumes queue {self.queue!r}: the task would wait there until one does")
        if self.unregistered:
            hint = f" (did you mean {self.suggestion!r}?)" if self.suggestion else ""
            out.append(f"no online worker registers this task name: a worker that receives it discards it{hint}")
        return out

    @property
    def blocks(self) -> bool:
        """True when the user must confirm."""
        return self.no_consumer or self.unregistered


def dispatch_guard(report: RoutingReport | None, name: str, queue: str, *, stream_live: bool) -> Guard:
    """The guard for sending `name` to `queue`, from the latest comparison.

    Nothing is said before the first comparison, nor while the event stream is down: heartbeats stop then and
    every worker looks offline, but the broker's own answer (a 503, or the task accepted) is the truth the sender
    needs, not a "no consumer" guessed from silence.
    """
    if report is None or not stream_live:
        return Guard(queue, False, False, known=False)
    row = report.queue(queue)
    unregistered = not report.registers(name)
    return Guard(queue, no_consumer=row is None or not row.consumers, unregistered=unregistered, known=True,
                 suggestion=closest_registered(report, name) if unregistered else None)


def closest_registered(report: RoutingReport, name: str) -> str | None:
    """The name an online worker registers that `name` most likely misspells, if one is close enough."""
    registered = [task.task for task in report.tasks if task.registered_on and task.task != name]
    found = difflib.get_close_matches(name, registered, n=1, cutoff=CLOSE_ENOUGH)
    return found[0] if found else None
