"""The queue browser and rescue: a page of a queue's messages with what the dashboard knows of each name, and the
actions on them (move, purge, delete by name), on whichever broker the app uses (services/broker/queues.py)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..exceptions import CannotPeek, DashboardError, QueueNotFound
from ..model.guard import closest_registered
from ..model.messages import MoveRequest, QueuedMessage, Selection
from ..model.state import State
from .broker.queues import QueueBrowser, QueuePeek
from .client import SendOnlyClient
from .routing import RoutingService


class QueuesUnavailable(DashboardError):
    """This app cannot browse queues (a transport without a browser); the message says why."""


@dataclass(frozen=True)
class MessageRow:
    """One message of a page, with what the dashboard knows about it."""

    message: QueuedMessage
    registered: bool  # an online worker registers its name (the routing report's definition)
    sent_at: float | None  # from the task-sent event, when the dashboard saw it
    target: str | None  # where the workers' own routes (else the API's) send this name
    suggestion: str | None = None  # for an unregistered name: the registered name it most likely misspells

    def to_dict(self) -> dict[str, object]:
        """The JSON API's message shape."""
        return {**self.message.to_dict(registered=self.registered, sent_at=self.sent_at), "target": self.target,
                "did_you_mean": self.suggestion}


@dataclass(frozen=True)
class QueuePage:
    """What the queue page and `GET /api/queues/<queue>/messages` show."""

    queue: str
    depth: int
    offset: int
    limit: int
    rows: tuple[MessageRow, ...]
    exists: bool
    registered_known: bool  # False before the first comparison: every "registered" is then False, and unknown
    requeued: bool
    peek_error: str | None = None  # why the messages cannot be shown (RabbitMQ without the management API)
    suggested_target: str | None = None
    names: tuple[tuple[str, int], ...] = field(default_factory=tuple)  # (task name, messages on this page)

    @property
    def unregistered(self) -> tuple[str, ...]:
        """Names on this page that no online worker registers."""
        return tuple(sorted({row.message.name or "" for row in self.rows if not row.registered}))

    def to_dict(self) -> dict[str, object]:
        """The `GET /api/queues/<queue>/messages` body."""
        return {
            "queue": self.queue, "depth": self.depth, "offset": self.offset, "limit": self.limit,
            "messages": [row.to_dict() for row in self.rows], "exists": self.exists,
            "registered_known": self.registered_known, "requeued": self.requeued,
            "suggested_target": self.suggested_target,
        }


class QueueService:
    """Reads and acts on queues through the broker's QueueBrowser; knows who registers and routes each name."""

    def __init__(self, browser: QueueBrowser | None, routing: RoutingService, state: State, client: SendOnlyClient,
                 *, unavailable: str | None = None) -> None:
        self.browser = browser
        self.routing = routing
        self.state = state
        self.client = client
        self.unavailable = unavailable or "this broker's queues cannot be browsed"

    def _browser(self) -> QueueBrowser:
        if self.browser is None:
            raise QueuesUnavailable(self.unavailable)
        return self.browser

    @property
    def peek_method(self) -> str:
        """How a page is read on this broker ("" when it cannot be)."""
        return self.browser.peek_method if self.browser is not None else ""

    def page(self, queue: str, limit: int, offset: int = 0) -> QueuePage:
        """A page of `queue`'s messages in serving order, none consumed, each with its name's standing."""
        browser = self._browser()
        try:
            peek = browser.peek(queue, limit, offset)
        except CannotPeek as exc:
            return QueuePage(queue, browser.depth(queue), offset, limit, (), exists=True,
                             registered_known=self.routing.report is not None, requeued=False, peek_error=str(exc),
                             suggested_target=self.suggested_target(queue, ()))
        return self._page(peek, limit)

    def _page(self, peek: QueuePeek, limit: int) -> QueuePage:
        report = self.routing.report
        targets: dict[str, str | None] = {}
        suggestions: dict[str, str | None] = {}
        rows = []
        for message in peek.messages:
            name = message.name
            if name is not None and name not in targets:
                targets[name] = self.target_for(name)
            registered = report is not None and name is not None and report.registers(name)
            if report is not None and name is not None and not registered and name not in suggestions:
                suggestions[name] = closest_registered(report, name)
            task = self.state.task(message.id) if message.id else None
            rows.append(MessageRow(
                message, registered=registered, sent_at=task.timestamps.get("sent") if task is not None else None,
                target=targets.get(name) if name is not None else None,
                suggestion=suggestions.get(name) if name is not None and not registered else None,
            ))
        names = Counter(message.name or "" for message in peek.messages)
        return QueuePage(peek.queue, peek.depth, peek.offset, limit, tuple(rows), peek.exists,
                         registered_known=report is not None, requeued=peek.requeued,
                         suggested_target=self.suggested_target(peek.queue, [n for n, _ in names.most_common()]),
                         names=tuple(sorted(names.items())))

    def target_for(self, name: str) -> str | None:
        """Where `name` belongs: the queue the workers' own routes name, else the API's route (Celery's router)."""
        report = self.routing.report
        task = report.task(name) if report is not None else None
        if task is not None:
            return task.worker_route or task.api_queue
        try:
            return self.client.resolve(name).queue
        except DashboardError:
            return None

    def suggested_target(self, queue: str, names: list[str] | tuple[str, ...]) -> str | None:
        """The move form's prefilled target: the first of `names` (most frequent first) that belongs elsewhere;
        else, for a queue the API routes tasks to, where the first of those tasks belongs by the workers' routes."""
        for name in names:
            target = self.target_for(name) if name else None
            if target and target != queue:
                return target
        report = self.routing.report
        row = report.queue(queue) if report is not None else None
        for name in row.routed_tasks if row is not None else ():
            task = report.task(name) if report is not None else None
            if task is not None and task.worker_route and task.worker_route != queue:
                return task.worker_route
        return None

    def move(self, queue: str, request: MoveRequest) -> int:
        """Move the selected messages to `request.to`; how many moved."""
        return self._browser().move(queue, request.to, request.selection)

    def delete(self, queue: str, selection: Selection) -> int:
        """Delete the selected messages (one task name's)."""
        return self._browser().delete(queue, selection)

    def purge(self, queue: str) -> int:
        """Delete every message waiting in `queue`."""
        return self._browser().purge(queue)

    def close(self) -> None:
        """Release the browser's connections."""
        if self.browser is not None:
            self.browser.close()


__all__ = ["MessageRow", "QueueNotFound", "QueuePage", "QueueService", "QueuesUnavailable"]
