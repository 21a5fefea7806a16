"""The dispatch use case: resolve the route, guard, send, audit, count. Flask-free: the web layer parses the
request, calls `Dispatcher.dispatch`, and renders what it returns or raises."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.utils import uuid
from celery.utils.saferepr import saferepr

from ..exceptions import DispatchRefused
from ..model.dispatch import DispatchRequest, outcome_of
from .audit import AuditStore, DispatchAttempt, Origin
from .client import SendOnlyClient, SentTask
from .events.sink import EventSink
from .events.stats import TaskStats
from .routing import RoutingService

log = logging.getLogger(__name__)
SENDER = "dispatch-dashboard"  # the hostname of the task-sent records this dashboard makes for its own dispatches


class Dispatcher:
    """Publishes checked dispatch requests through the send-only client."""

    def __init__(self, client: SendOnlyClient, routing: RoutingService, audit: AuditStore | None,
                 stats: TaskStats, sink: EventSink) -> None:
        self.client = client
        self.routing = routing
        self.audit = audit
        self.stats = stats
        self.sink = sink

    def dispatch(self, request: DispatchRequest, origin: Origin) -> SentTask:
        """Publish a checked request; raises BrokerUnavailable, RoutingError, or DispatchRefused unless forced.

        The route is resolved once, by Celery's router, and that resolution is what is guarded and sent. Every
        attempt, sent or not, is written to the audit log; one that gets as far as publishing is written durably
        while it is published, with the task id it is published with, and its outcome after. A failing write never
        fails the dispatch.
        """
        try:
            with DispatchAttempt(self.audit, request, origin) as attempt:
                resolution = self.client.resolve(request.name, request.options, request.args, request.kwargs)
                attempt.queue = resolution.queue  # recorded even when the send fails
                if not request.force:
                    guard = self.routing.guard(request.name, resolution.queue)
                    if guard.blocks:
                        raise DispatchRefused("; and ".join(guard.warnings), guard.warnings, resolution.queue)
                task_id = uuid()
                attempt.begin(task_id)  # written durably while the task is published; awaited when the block ends
                sent = self.client.send(request, resolution, task_id)
                attempt.sent(sent.task_id, sent.resolution.queue)
        except Exception as exc:
            self.stats.note_dispatch(outcome_of(exc))
            raise
        self.stats.note_dispatch("sent")
        self._know(sent, request)
        return sent

    def _know(self, sent: SentTask, request: DispatchRequest) -> None:
        """The dashboard knows its own dispatch from the moment the broker took it, whatever becomes of the
        task-sent event (sent before the stream was live, or lost in a gap): the same record, applied now."""
        try:
            self.sink.apply(sent_event(sent, request, time.time()))
        except Exception:  # noqa: BLE001 - knowing it early must never fail a dispatch that succeeded
            log.exception("could not record the dispatch of %s in the live state", sent.task_id)


def sent_event(sent: SentTask, request: DispatchRequest, now: float) -> dict[str, Any]:
    """The task-sent event Celery's producer emits for this dispatch (args and kwargs as its saferepr), marked as
    made up by the dashboard so it does not count as an event taken in."""
    options = request.options
    return {
        "type": "task-sent", "uuid": sent.task_id, "name": sent.name, "args": saferepr(list(request.args)),
        "kwargs": saferepr(dict(request.kwargs)), "queue": sent.resolution.queue,
        "routing_key": sent.resolution.routing_key, "exchange": sent.resolution.exchange,
        "eta": options.eta.isoformat() if options.eta is not None else None, "retries": 0,
        "root_id": sent.task_id, "parent_id": None, "hostname": SENDER, "timestamp": now, "local_received": now,
        "resync": True,
    }
