"""One worker, asked and told directly: what it runs and how (inspect with destination=[hostname], limit=1, each
question bounded), and the commands that change it (pool size, autoscale, consumers, rate and time limits)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from celery.app.control import Inspect

from ...exceptions import BrokerUnavailable
from ...model.actions import ActionError, PoolSupport, mask_settings, pool_size, pool_support
from ...model.secrets import reason
from ..client import BROKER_ERRORS
from ..inspection import WorkerInspector
from .control import Control

log = logging.getLogger(__name__)

RESIZE_WAIT = 8.0  # seconds a pool command waits for stats to show the new size
TASK_INFO = ("rate_limit", "time_limit", "soft_time_limit")  # attributes `registered` reports for each task


@dataclass(frozen=True)
class RegisteredTask:
    """A task name a worker registers, with the limits it reports (None: not set)."""

    name: str
    rate_limit: str | None = None
    time_limit: str | None = None
    soft_time_limit: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"name": self.name, "rate_limit": self.rate_limit, "time_limit": self.time_limit,
                "soft_time_limit": self.soft_time_limit}


@dataclass(frozen=True)
class WorkerDetail:
    """What one worker answered, question by question (None: it did not answer that one in time)."""

    hostname: str
    stats: Mapping[str, Any] | None = None
    queues: list[Mapping[str, Any]] | None = None
    registered: list[RegisteredTask] | None = None
    active: list[Mapping[str, Any]] | None = None
    reserved: list[Mapping[str, Any]] | None = None
    scheduled: list[Mapping[str, Any]] | None = None
    conf: Mapping[str, Any] | None = None
    unanswered: tuple[str, ...] = ()
    support: PoolSupport = field(default_factory=lambda: pool_support(None))

    @property
    def answered(self) -> bool:
        """True when the worker answered at least one question."""
        return any(value is not None for value in (self.stats, self.queues, self.registered, self.active,
                                                   self.reserved, self.scheduled, self.conf))

    @property
    def pool(self) -> Mapping[str, Any]:
        """stats' pool section (empty when unknown)."""
        pool = self.stats.get("pool") if self.stats else None
        return pool if isinstance(pool, Mapping) else {}

    @property
    def pool_size(self) -> int | None:
        """Processes (prefork) or concurrency."""
        return pool_size(self.stats)

    @property
    def queue_names(self) -> list[str]:
        """Names of the queues consumed."""
        return sorted(str(queue.get("name")) for queue in self.queues or () if queue.get("name"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (`GET /api/workers/<hostname>`)."""
        return {
            "hostname": self.hostname, "pool": {**self.support.to_dict(), "size": self.pool_size,
                                                "processes": _processes(self.pool)},
            "stats": self.stats, "queues": self.queues,
            "registered": [task.to_dict() for task in self.registered] if self.registered is not None else None,
            "active": self.active, "reserved": self.reserved, "scheduled": self.scheduled, "conf": self.conf,
            "unanswered": list(self.unanswered),
        }


class WorkerControl:
    """Inspects one worker and sends it commands, every call bounded by the inspector's and control's timeouts."""

    def __init__(self, inspector: WorkerInspector, control: Control) -> None:
        self.inspector = inspector
        self.control = control

    def detail(self, hostname: str) -> WorkerDetail:
        """Ask one worker everything the worker page shows, the questions side by side.

        BrokerUnavailable when the broker cannot be reached; a question left unanswered is None (listed in
        `unanswered`)."""
        questions: dict[str, Callable[[Inspect], Any]] = {
            "stats": lambda i: i.stats(),
            "queues": lambda i: i.active_queues(),
            "registered": lambda i: i.registered(*TASK_INFO),
            "active": lambda i: i.active(),
            "reserved": lambda i: i.reserved(),
            "scheduled": lambda i: i.scheduled(),
            "conf": lambda i: i.conf(with_defaults=False),
        }
        with ThreadPoolExecutor(max_workers=len(questions), thread_name_prefix="worker-detail") as pool:
            futures = {key: pool.submit(self.inspector.ask, ask, [hostname], 1) for key, ask in questions.items()}
            answers: dict[str, Any] = {}
            failure: BaseException | None = None
            for key, future in futures.items():
                try:
                    reply = future.result()
                except BROKER_ERRORS as exc:
                    failure = exc
                    continue
                answers[key] = reply.get(hostname) if isinstance(reply, Mapping) else None
        if failure is not None and not answers:
            raise BrokerUnavailable(f"the broker did not take the inspection ({reason(failure)})")
        stats = _mapping(answers.get("stats"))
        return WorkerDetail(
            hostname=hostname, stats=stats, queues=_list(answers.get("queues")),
            registered=_registered(answers.get("registered")), active=_list(answers.get("active")),
            reserved=_list(answers.get("reserved")), scheduled=_list(answers.get("scheduled")),
            conf=mask_settings(_mapping(answers.get("conf"))) if answers.get("conf") is not None else None,
            unanswered=tuple(key for key in questions if answers.get(key) is None),
            support=pool_support(stats),
        )

    def pool(self, hostname: str, direction: str, n: int) -> str:
        """pool_grow / pool_shrink by n; waits (briefly) until stats show the new size, and says it."""
        if direction not in ("grow", "shrink"):
            raise ActionError("give grow or shrink")
        before = self._pool_size(hostname)
        answer = self.control.command(f"pool_{direction}", hostname, {"n": n})
        if before is None:
            return answer
        deadline = time.monotonic() + RESIZE_WAIT
        while True:  # the pool starts or stops its processes after answering
            size = self._pool_size(hostname)
            if size is not None and size != before:
                return f"{answer}: {size} processes now (were {before})"
            if time.monotonic() >= deadline:
                return f"{answer}: still {before} processes after {RESIZE_WAIT:.0f}s (the pool may resize later)"
            time.sleep(0.2)

    def _pool_size(self, hostname: str) -> int | None:
        try:
            reply = self.inspector.ask(lambda i: i.stats(), [hostname], 1)
        except BROKER_ERRORS:
            return None
        stats = reply.get(hostname) if isinstance(reply, Mapping) else None
        return pool_size(stats if isinstance(stats, Mapping) else None)

    def autoscale(self, hostname: str, high: int, low: int) -> str:
        """Set the autoscale range."""
        return self.control.command("autoscale", hostname, {"max": high, "min": low})

    def add_consumer(self, hostname: str, queue: str) -> str:
        """Start consuming `queue`."""
        return self.control.command("add_consumer", hostname, {"queue": queue})

    def cancel_consumer(self, hostname: str, queue: str) -> str:
        """Stop consuming `queue`."""
        return self.control.command("cancel_consumer", hostname, {"queue": queue})

    def rate_limit(self, hostname: str, task: str, rate: str) -> str:
        """Set a task's rate limit ("" or "0": none)."""
        return self.control.command("rate_limit", hostname, {"task_name": task, "rate_limit": rate})

    def time_limit(self, hostname: str, task: str, soft: float | None, hard: float | None) -> str:
        """Set a task's soft and hard time limits (None: none)."""
        return self.control.command("time_limit", hostname, {"task_name": task, "soft": soft, "hard": hard})


def _mapping(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) else None


def _list(value: Any) -> list[Mapping[str, Any]] | None:
    if not isinstance(value, list):
        return None
    return [item for item in value if isinstance(item, Mapping)]


def _processes(pool: Mapping[str, Any]) -> list[int] | None:
    processes = pool.get("processes")
    return [pid for pid in processes if isinstance(pid, int)] if isinstance(processes, list) else None


def _registered(value: Any) -> list[RegisteredTask] | None:
    """"name [rate_limit=10/m time_limit=60]" items, as `registered(*TASK_INFO)` answers, without Celery's own."""
    if not isinstance(value, list):
        return None
    tasks = []
    for item in value:
        if not isinstance(item, str) or item.startswith("celery."):
            continue
        name, _, rest = item.partition(" [")
        info = dict(part.split("=", 1) for part in rest.rstrip("]").split() if "=" in part)
        tasks.append(RegisteredTask(name, info.get("rate_limit"), info.get("time_limit"),
                                    info.get("soft_time_limit")))
    return sorted(tasks, key=lambda task: task.name)
