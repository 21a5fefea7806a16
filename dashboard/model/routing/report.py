"""The routing comparison's result: one row per task, one per queue, their statuses and problems (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

RouteSource = Literal["route", "default", "override"]
ProblemCode = Literal["unregistered", "orphaned", "wrong_queue", "drift"]
TaskStatus = Literal["ok", "unregistered", "orphaned", "wrong_queue", "drift"]
QueueStatus = Literal["ok", "orphaned", "unrouted"]

#: Task problems, most severe first: a task's status is the first that applies.
SEVERITY: Final[tuple[ProblemCode, ...]] = ("unregistered", "orphaned", "wrong_queue", "drift")
#: Hostnames spelled out in an explanation before "and N more": a 500-worker list is not a sentence.
MAX_NAMED_HOSTS: Final = 3


@dataclass(frozen=True, slots=True)
class ApiRoute:
    """The API's resolution of one task name: the queue, the task_routes key that matched, and why."""

    queue: str
    pattern: str | None
    source: RouteSource


@dataclass(frozen=True, slots=True)
class WorkerSnapshot:
    """What one worker reported: liveness, consumed queues, registered names and its own route resolution."""

    hostname: str
    online: bool
    queues: frozenset[str]
    registered: frozenset[str]
    # name -> queue by the worker's own task_routes for the known names; None when it declares no task_routes.
    # Workers with the same config should share one mapping object (resolve once per distinct config):
    # identity makes grouping free; equal copies cost one comparison each.
    routes: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class BrokerQueue:
    """A queue found on the broker and the messages waiting in it (None when unknown)."""

    name: str
    depth: int | None


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a task's routing, with a sentence for the UI."""

    code: ProblemCode
    explanation: str


@dataclass(frozen=True, slots=True)
class TaskRouting:
    """One task name: the API's queue, the workers' view of it, and what is wrong."""

    task: str
    api_queue: str
    api_pattern: str | None
    api_source: RouteSource
    worker_route: str | None  # the queue most declaring workers give it; None when none declares one
    worker_routes: tuple[tuple[str, int], ...]  # (queue, how many online workers route it there), by queue
    drifting: tuple[tuple[str, tuple[str, ...]], ...]  # (queue, hosts) of workers that disagree with the API
    consumers: tuple[str, ...]  # online hosts consuming api_queue
    registered_on: tuple[str, ...]  # online hosts registering the name
    problems: tuple[Problem, ...]  # in SEVERITY order
    sent: bool  # seen in a task-sent event

    @property
    def status(self) -> TaskStatus:
        """The most severe problem, or "ok"."""
        return self.problems[0].code if self.problems else "ok"

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems

    def has(self, code: ProblemCode) -> bool:
        """True when `code` is among the problems."""
        return any(problem.code == code for problem in self.problems)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (one row of `GET /api/routing` "tasks")."""
        return {
            "task": self.task,
            "api_queue": self.api_queue,
            "api_pattern": self.api_pattern,
            "api_source": self.api_source,
            "worker_route": self.worker_route,
            "worker_routes": dict(self.worker_routes),
            "drifting_workers": {queue: list(hosts) for queue, hosts in self.drifting},
            "consumers": list(self.consumers),
            "registered_on": list(self.registered_on),
            "status": self.status,
            "problems": [problem.code for problem in self.problems],
            "explanations": [problem.explanation for problem in self.problems],
            "sent": self.sent,
        }


@dataclass(frozen=True, slots=True)
class QueueRouting:
    """One queue: depth, online consumers, the tasks the API routes there, and its status."""

    name: str
    depth: int | None
    consumers: tuple[str, ...]
    routed_tasks: tuple[str, ...]
    status: QueueStatus
    is_default: bool
    offline_consumers: tuple[str, ...]  # offline hosts that last reported consuming it
    note: str | None  # what the UI should say beyond the status, e.g. "routed here but no consumer yet"

    @property
    def has_consumers(self) -> bool:
        """True when an online worker consumes the queue."""
        return bool(self.consumers)

    @property
    def routed(self) -> bool:
        """True when the API sends tasks here (the default queue takes every unmatched name)."""
        return bool(self.routed_tasks) or self.is_default

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (one row of `GET /api/routing` "queues")."""
        return {
            "name": self.name,
            "depth": self.depth,
            "consumers": list(self.consumers),
            "routed_tasks": list(self.routed_tasks),
            "status": self.status,
            "has_consumers": self.has_consumers,
            "is_default": self.is_default,
            "offline_consumers": list(self.offline_consumers),
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class RoutingReport:
    """The whole comparison: tasks and queues sorted by name."""

    tasks: tuple[TaskRouting, ...]
    queues: tuple[QueueRouting, ...]
    default_queue: str
    offline_workers: tuple[str, ...] = ()

    @property
    def consistent(self) -> bool:
        """True when no task has a problem and no queue is orphaned ("unrouted" is informational)."""
        return all(task.ok for task in self.tasks) and all(q.status != "orphaned" for q in self.queues)

    def mismatches(self) -> RoutingReport:
        """The same report keeping only tasks and queues whose status is not "ok" (unrouted included)."""
        return RoutingReport(
            tasks=tuple(task for task in self.tasks if not task.ok),
            queues=tuple(queue for queue in self.queues if queue.status != "ok"),
            default_queue=self.default_queue,
            offline_workers=self.offline_workers,
        )

    def queue(self, name: str) -> QueueRouting | None:
        """The row of queue `name`, if compared."""
        return next((queue for queue in self.queues if queue.name == name), None)

    def task(self, name: str) -> TaskRouting | None:
        """The row of task `name`, if compared (every name an online worker registers is)."""
        return next((task for task in self.tasks if task.task == name), None)

    def registers(self, name: str) -> bool:
        """True when an online worker registers `name` (the one definition: the guard and the queue browser)."""
        task = self.task(name)
        return task is not None and bool(task.registered_on)

    def consumed_queues(self) -> frozenset[str]:
        """Queues with an online consumer now; callers accumulate these for `previously_consumed`."""
        return frozenset(queue.name for queue in self.queues if queue.consumers)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict: the `GET /api/routing` body."""
        return {
            "tasks": [task.to_dict() for task in self.tasks],
            "queues": [queue.to_dict() for queue in self.queues],
            "default_queue": self.default_queue,
            "consistent": self.consistent,
            "offline_workers": list(self.offline_workers),
        }


def hosts_phrase(hosts: Sequence[str], limit: int = MAX_NAMED_HOSTS) -> str:
    """Hostnames for a sentence: "a, b and c" or "a, b, c and 4 more"."""
    if len(hosts) > limit:
        return f"{', '.join(hosts[:limit])} and {len(hosts) - limit} more"
    if len(hosts) > 1:
        return f"{', '.join(hosts[:-1])} and {hosts[-1]}"
    return hosts[0] if hosts else "no worker"
