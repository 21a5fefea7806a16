"""The dispatch use case: resolve the route, guard, send, audit, count. Flask-free: the web layer parses the
request, calls `Dispatcher.dispatch`, and renders what it returns or raises."""

from __future__ import annotations

from ..exceptions import DispatchRefused
from ..model.dispatch import DispatchRequest, outcome_of
from .audit import AuditLog, DispatchAttempt, Origin
from .client import SendOnlyClient, SentTask
from .events.stats import TaskStats
from .routing import RoutingService


class Dispatcher:
    """Publishes checked dispatch requests through the send-only client."""

    def __init__(self, client: SendOnlyClient, routing: RoutingService, audit: AuditLog | None,
                 stats: TaskStats) -> None:
        self.client = client
        self.routing = routing
        self.audit = audit
        self.stats = stats

    def dispatch(self, request: DispatchRequest, origin: Origin) -> SentTask:
        """Publish a checked request; raises BrokerUnavailable, RoutingError, or DispatchRefused unless forced.

        The route is resolved once, by Celery's router, and that resolution is what is guarded and sent. Every
        attempt, sent or not, is written to the audit log; a failing write never fails the dispatch.
        """
        try:
            with DispatchAttempt(self.audit, request, origin) as attempt:
                resolution = self.client.resolve(request.name, request.options, request.args, request.kwargs)
                attempt.queue = resolution.queue  # recorded even when the send fails
                if not request.force:
                    guard = self.routing.guard(request.name, resolution.queue)
                    if guard.blocks:
                        raise DispatchRefused("; and ".join(guard.warnings), guard.warnings, resolution.queue)
                sent = self.client.send(request, resolution)
                attempt.sent(sent.task_id, sent.resolution.queue)
        except Exception as exc:
            self.stats.note_dispatch(outcome_of(exc))
            raise
        self.stats.note_dispatch("sent")
        return sent
