"""Worker inspection: ask the workers what they consume, register and route, with explicit timeouts.

Every call is a broadcast on the broker plus a wait for replies. `inspect()` waits its whole timeout unless
`limit` says how many replies to expect, so we pass the number of workers we believe are online: a healthy
cluster answers in milliseconds, and only a missing worker costs the full timeout.

Every broadcast runs on a connection of its own, opened for it and closed after it, never on one from Celery's
pool: after a broker restart the pooled connections are dead sockets, and the first questions asked through
them fail ("Connection closed by server") until each has been tried once. A broadcast is seconds apart, so
a fresh connection (one connect and handshake) costs nothing that matters. The pool size cannot be set per
app instead: Celery applies `broker_pool_limit` to kombu's pools process-wide, the dispatch client's too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from celery import Celery
from celery.app.control import Inspect

log = logging.getLogger(__name__)

INTERNAL_TASK_PREFIX = "celery."  # Celery's built-ins (chord_unlock, backend_cleanup, ...)

T = TypeVar("T")


class NoReply(Exception):
    """A worker did not answer a control command in time."""


class WorkerRefused(Exception):
    """A worker answered a control command with an error."""


@dataclass(frozen=True)
class WorkerReport:
    """What one worker answered (None for a question it did not answer)."""

    hostname: str
    queues: tuple[str, ...] | None = None
    registered: tuple[str, ...] | None = None
    conf: Mapping[str, Any] | None = None
    stats: Mapping[str, Any] | None = None

    @property
    def task_routes(self) -> Any:
        """The worker's own task_routes, when it set any (conf() only returns non-default settings)."""
        if self.conf is None:
            return None
        return self.conf.get("task_routes") or None

    @property
    def default_queue(self) -> str:
        """The worker's task_default_queue (Celery's default when it did not set one)."""
        if self.conf is None:
            return "celery"
        return str(self.conf.get("task_default_queue") or "celery")


@dataclass
class InspectionResult:
    """One round of inspection: per-worker reports, and which questions went unanswered."""

    workers: dict[str, WorkerReport] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


class WorkerInspector:
    """Runs the inspect broadcasts through a bounded Celery app (the monitor's control app)."""

    def __init__(self, app: Celery, timeout: float = 1.0) -> None:
        self.app = app
        self.timeout = timeout

    def inspect(self, expected: int | None = None, destination: Iterable[str] | None = None) -> InspectionResult:
        """Ask every worker (or `destination`) for queues, registered names, conf and stats.

        Raises the broker's connection errors (callers decide how to report them); a worker that does not
        answer one question simply has None there.
        """
        limit = expected if expected and expected > 0 else None
        targets = list(destination) if destination else None
        questions: dict[str, Callable[[Inspect], Any]] = {
            "active_queues": lambda inspector: inspector.active_queues(),
            "registered": lambda inspector: inspector.registered(),
            "conf": lambda inspector: inspector.conf(with_defaults=False),  # only what the worker set itself
            "stats": lambda inspector: inspector.stats(),
        }
        replies: dict[str, dict[str, Any]] = {}
        # The four broadcasts run side by side: when the number of workers is unknown (or one is missing),
        # each waits its whole timeout, and one after another that would be four timeouts.
        with ThreadPoolExecutor(max_workers=len(questions), thread_name_prefix="inspect") as pool:
            futures = {
                question: pool.submit(self.ask, ask, destination=targets, limit=limit)
                for question, ask in questions.items()
            }
            answers = {question: future.result() for question, future in futures.items()}
        for question, answer in answers.items():
            for hostname, value in (answer or {}).items():
                replies.setdefault(str(hostname), {})[question] = value
        result = InspectionResult()
        for hostname, answers in replies.items():
            result.workers[hostname] = WorkerReport(
                hostname=hostname,
                queues=_queue_names(answers.get("active_queues")),
                registered=_task_names(answers.get("registered")),
                conf=answers.get("conf") if isinstance(answers.get("conf"), Mapping) else None,
                stats=answers.get("stats") if isinstance(answers.get("stats"), Mapping) else None,
            )
        return result

    def ask(self, question: Callable[[Inspect], T], destination: list[str] | None = None,
            limit: int | None = None) -> T:
        """Run one inspect question (e.g. `lambda i: i.active()`) on a connection of its own."""
        with self.app.connection_for_write() as connection:
            inspector = self.app.control.inspect(
                destination=destination, timeout=self.timeout, limit=limit, connection=connection
            )
            return question(inspector)

    def add_consumer(self, queue: str, hostname: str) -> str:
        """Tell one worker to start consuming `queue`; returns the worker's answer (raises on no answer)."""
        with self.app.connection_for_write() as connection:
            replies = self.app.control.add_consumer(
                queue, destination=[hostname], reply=True, timeout=max(self.timeout, 2.0), connection=connection
            )
        for reply in replies or []:
            if isinstance(reply, Mapping) and hostname in reply:
                answer = reply[hostname]
                if isinstance(answer, Mapping):
                    if "error" in answer:
                        raise WorkerRefused(str(answer["error"]))
                    return str(answer.get("ok", answer))
                return str(answer)
        raise NoReply(f"worker {hostname} did not answer within {max(self.timeout, 2.0):.0f}s")


def _queue_names(value: Any) -> tuple[str, ...] | None:
    if not isinstance(value, list):
        return None
    names = []
    for queue in value:
        if isinstance(queue, Mapping) and isinstance(queue.get("name"), str):
            names.append(queue["name"])
    return tuple(sorted(set(names)))


def _task_names(value: Any) -> tuple[str, ...] | None:
    if not isinstance(value, list):
        return None
    names = set()
    for item in value:
        if isinstance(item, str):
            name = item.split(" ", 1)[0]  # "name [rate_limit=...]" when taskinfo items were asked for
            if name and not name.startswith(INTERNAL_TASK_PREFIX):
                names.add(name)
    return tuple(sorted(names))
