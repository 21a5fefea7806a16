"""Alerts from routing conditions: raised after a grace period, updated while they hold, cleared when gone."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final, Literal, get_args

from .routing import RoutingReport, hosts_phrase

AlertKind = Literal["orphaned_queue", "unregistered_task", "route_drift", "queue_lost_consumer"]
ALERT_KINDS: Final[tuple[str, ...]] = get_args(AlertKind)
ChangeStatus = Literal["raised", "updated", "cleared"]


@dataclass(frozen=True, slots=True)
class Condition:
    """Something that holds right now and deserves an alert once it has held for the grace period."""

    kind: AlertKind
    key: str  # stable identity across evaluations, e.g. "orphaned_queue:llm2"
    queue: str | None
    task: str | None
    depth: int | None
    message: str

    @classmethod
    def for_queue(cls, kind: AlertKind, queue: str, message: str, depth: int | None = None) -> Condition:
        """A condition about a queue, keyed by kind and queue name."""
        return cls(kind, f"{kind}:{queue}", queue, None, depth, message)

    @classmethod
    def for_task(cls, kind: AlertKind, task: str, message: str, queue: str | None = None) -> Condition:
        """A condition about a task name, keyed by kind and task name."""
        return cls(kind, f"{kind}:{task}", queue, task, None, message)


@dataclass(frozen=True, slots=True)
class Alert:
    """A raised alert: the condition's facts plus when it started, was raised, last changed and cleared."""

    kind: AlertKind
    key: str
    queue: str | None
    task: str | None
    depth: int | None
    since: float  # when the condition was first seen in this continuous stretch
    raised_at: float
    updated_at: float
    message: str
    cleared_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict; queue, task, depth and cleared_at are left out when None."""
        out: dict[str, Any] = {"kind": self.kind, "key": self.key}
        for name in ("queue", "task", "depth"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out["since"] = self.since
        out["since_iso"] = datetime.fromtimestamp(self.since, UTC).isoformat()
        out["raised_at"] = self.raised_at
        out["updated_at"] = self.updated_at
        if self.cleared_at is not None:
            out["cleared_at"] = self.cleared_at
        out["message"] = self.message
        return out


@dataclass(frozen=True, slots=True)
class AlertChange:
    """One transition returned by AlertBook.evaluate."""

    status: ChangeStatus
    alert: Alert

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {"status": self.status, "alert": self.alert.to_dict()}


_CHANGE_ORDER: Final[dict[str, int]] = {"cleared": 0, "raised": 1, "updated": 2}


class AlertBook:
    """Pending (in grace) and active alerts; one owner thread calls evaluate(), so there is no lock."""

    __slots__ = ("_grace", "_pending", "_active")

    def __init__(self, grace: float) -> None:
        """Create an empty book; a condition must hold for `grace` seconds (0: at once) to raise."""
        if not grace >= 0:  # also refuses NaN, which would never compare as elapsed
            raise ValueError("grace must be a number of seconds >= 0")
        self._grace = grace
        self._pending: dict[str, float] = {}  # key -> since
        self._active: dict[str, Alert] = {}

    @property
    def grace(self) -> float:
        """Seconds a condition must hold before it is raised."""
        return self._grace

    def evaluate(self, conditions: Iterable[Condition], now: float) -> list[AlertChange]:
        """Apply everything that holds at `now`; return the changes: cleared, raised, updated, each by key."""
        current = {condition.key: condition for condition in conditions}  # a repeated key: the last wins
        changes: list[AlertChange] = []
        for key in self._active.keys() - current.keys():
            gone = self._active.pop(key)
            changes.append(AlertChange("cleared", replace(gone, updated_at=now, cleared_at=now)))
        for key in self._pending.keys() - current.keys():
            # Did not hold for the whole grace period: dropped without a trace, so a flapping
            # condition never reaches the page.
            del self._pending[key]
        for key, condition in current.items():
            alert = self._active.get(key)
            if alert is not None:
                if (alert.queue, alert.task, alert.depth, alert.message) != (
                    condition.queue,
                    condition.task,
                    condition.depth,
                    condition.message,
                ):
                    alert = replace(
                        alert,
                        queue=condition.queue,
                        task=condition.task,
                        depth=condition.depth,
                        message=condition.message,
                        updated_at=now,
                    )
                    self._active[key] = alert
                    changes.append(AlertChange("updated", alert))
                continue
            since = self._pending.setdefault(key, now)
            if now - since >= self._grace:
                del self._pending[key]
                alert = Alert(
                    kind=condition.kind,
                    key=key,
                    queue=condition.queue,
                    task=condition.task,
                    depth=condition.depth,
                    since=since,
                    raised_at=now,
                    updated_at=now,
                    message=condition.message,
                )
                self._active[key] = alert
                changes.append(AlertChange("raised", alert))
        changes.sort(key=lambda change: (_CHANGE_ORDER[change.status], change.alert.key))
        return changes

    def active(self) -> list[Alert]:
        """Active alerts, oldest condition first."""
        return sorted(self._active.values(), key=lambda alert: (alert.since, alert.key))


def conditions_from(
    report: RoutingReport,
    *,
    not_registered_names: Iterable[str] = (),
    previously_consumed: Iterable[str] = (),
) -> list[Condition]:
    """Derive the alert conditions that hold now from a routing report and facts the caller tracks."""
    failed = frozenset(not_registered_names)
    consumed_before = frozenset(previously_consumed)
    conditions: list[Condition] = []
    for queue in report.queues:
        if queue.status == "orphaned":
            conditions.append(
                Condition.for_queue(
                    "orphaned_queue",
                    queue.name,
                    f"{queue.depth} message(s) waiting in {queue.name!r} and no online worker consumes it.",
                    queue.depth,
                )
            )
        if queue.routed and not queue.consumers and queue.name in consumed_before:
            offline = f" ({hosts_phrase(queue.offline_consumers)} offline)" if queue.offline_consumers else ""
            conditions.append(
                Condition.for_queue(
                    "queue_lost_consumer",
                    queue.name,
                    f"Queue {queue.name!r} lost its last online consumer{offline}; "
                    "tasks routed there now wait.",
                    queue.depth,
                )
            )
    known: set[str] = set()
    for task in report.tasks:
        known.add(task.task)
        if task.status == "unregistered" and (task.sent or task.task in failed):
            how = "was rejected as NotRegistered" if task.task in failed else "was sent"
            conditions.append(
                Condition.for_task(
                    "unregistered_task",
                    task.task,
                    f"{task.task!r} {how}, but no online worker registers it; workers discard it.",
                    task.api_queue,
                )
            )
        for problem in task.problems:
            if problem.code == "drift":
                conditions.append(
                    Condition.for_task("route_drift", task.task, problem.explanation, task.api_queue)
                )
    # Every name an online worker registers is in the report, so a failed name outside it is
    # registered nowhere online: still unregistered, even though no task-sent event was seen.
    for name in sorted(failed - known):
        conditions.append(
            Condition.for_task(
                "unregistered_task",
                name,
                f"{name!r} was rejected as NotRegistered, and no online worker registers it.",
            )
        )
    return conditions
