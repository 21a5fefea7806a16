"""GET /metrics: Prometheus text format, computed from the monitor's state at scrape time.

A custom collector reads counters the event thread already keeps (no per-event metric calls on the hot path)
and one registry per app, so several apps in one process (tests) never share or clash.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from flask import Blueprint, Flask, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ..model.alerts import ALERT_KINDS
from ..model.dispatch import OUTCOMES
from ..services.container import Services
from ..services.events.monitor import Monitor
from ..services.events.stats import RUNTIME_BUCKETS
from .context import services
from .history import history_metrics

bp = Blueprint("metrics", __name__)

PREFIX = "dispatch_dashboard"
_REGISTRY_KEY = "dispatch_dashboard_metrics"


class MonitorCollector(Collector):
    """Metrics of one Monitor: events by type, retained tasks, workers, stream status and gaps."""

    def __init__(self, monitor: Monitor, extra: list[Callable[[], Iterator[Metric]]] | None = None) -> None:
        self.monitor = monitor
        self.extra = extra if extra is not None else []

    def collect(self) -> Iterator[Metric]:
        """Build every metric family from one consistent read of the state."""
        state = self.monitor.state
        events = CounterMetricFamily(f"{PREFIX}_events", "Celery events taken in, by event type.", labels=["type"])
        for kind, count in sorted(state.events_total().items()):
            events.add_metric([kind], count)
        yield events

        counts = state.counts()
        yield GaugeMetricFamily(f"{PREFIX}_tasks_retained", "Tasks held in memory.", value=counts.tasks)
        by_state = GaugeMetricFamily(f"{PREFIX}_tasks_retained_by_state", "Retained tasks by state.",
                                     labels=["state"])
        for task_state, count in counts.by_state.items():
            by_state.add_metric([task_state], count)
        yield by_state
        yield CounterMetricFamily(f"{PREFIX}_tasks_evicted", "Tasks evicted, oldest first, to stay under the cap.",
                                  value=counts.tasks_evicted)
        yield GaugeMetricFamily(f"{PREFIX}_workers_online", "Workers whose heartbeat is current.",
                                value=counts.workers_online)
        yield GaugeMetricFamily(f"{PREFIX}_workers_known", "Workers seen, online or not.", value=counts.workers)

        status = self.monitor.status
        up = GaugeMetricFamily(f"{PREFIX}_event_stream_up", "1 while the event stream from the broker is live.",
                               value=1 if status.status.value == "live" else 0)
        yield up
        yield CounterMetricFamily(f"{PREFIX}_event_stream_gaps",
                                  "Times the event stream was cut; events sent meanwhile were lost.",
                                  value=self.monitor.gaps_total)
        yield CounterMetricFamily(f"{PREFIX}_event_stream_connects", "Times the event stream (re)connected.",
                                  value=self.monitor.connects)
        yield GaugeMetricFamily(f"{PREFIX}_websocket_clients", "Connected websocket clients.",
                                value=self.monitor.hub.size)
        for more in self.extra:
            yield from more()


def runtime_metrics(svc: Services) -> Callable[[], Iterator[Metric]]:
    """Queues, alerts, finished tasks, runtimes and dispatch outcomes."""

    def collect() -> Iterator[Metric]:
        yield CounterMetricFamily(f"{PREFIX}_tasks_resynced",
                                  "Tasks recovered after a gap in the event stream (inspect, result backend).",
                                  value=svc.resync.resynced_total)
        depth = GaugeMetricFamily(f"{PREFIX}_queue_depth", "Messages waiting in a queue (Redis: all priorities).",
                                  labels=["queue"])
        consumers = GaugeMetricFamily(f"{PREFIX}_queue_consumers", "Online workers consuming a queue.",
                                      labels=["queue"])
        orphaned = 0
        report = svc.routing.report
        for queue in report.queues if report is not None else ():
            if queue.depth is not None:
                depth.add_metric([queue.name], queue.depth)
            consumers.add_metric([queue.name], len(queue.consumers))
            orphaned += queue.status == "orphaned"
        yield depth
        yield consumers
        yield GaugeMetricFamily(f"{PREFIX}_orphaned_queues", "Queues with messages waiting and no consumer.",
                                value=orphaned)
        alerts = GaugeMetricFamily(f"{PREFIX}_alerts", "Active alerts by kind.", labels=["kind"])
        by_kind: dict[str, int] = dict.fromkeys(ALERT_KINDS, 0)
        for alert in svc.routing.alerts():
            by_kind[alert.kind] = by_kind.get(alert.kind, 0) + 1
        for kind, count in by_kind.items():
            alerts.add_metric([kind], count)
        yield alerts
        yield GaugeMetricFamily(f"{PREFIX}_routing_consistent", "1 when API routes and workers agree.",
                                value=1 if report is not None and report.consistent else 0)

        stats = svc.stats.snapshot()
        finished = CounterMetricFamily(f"{PREFIX}_tasks_finished", "Tasks seen finishing, by name and state.",
                                       labels=["name", "state"])
        for (name, state), count in sorted(stats["finished"].items()):
            finished.add_metric([name, state], count)
        yield finished
        buckets, cumulative = [], 0
        for bound, count in zip((*RUNTIME_BUCKETS, float("inf")), stats["runtime_counts"], strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        runtime_hist = HistogramMetricFamily(f"{PREFIX}_task_runtime_seconds",
                                             "Services of succeeded tasks, from task-succeeded events.")
        runtime_hist.add_metric([], buckets, sum_value=stats["runtime_sum"])
        yield runtime_hist
        yield GaugeMetricFamily(f"{PREFIX}_requests_in_flight",
                                "HTTP requests this process is reading, handling or answering now.",
                                value=svc.priority.in_flight)
        yield CounterMetricFamily(f"{PREFIX}_ingest_pauses",
                                  "Times the event thread paused to let requests in flight run first.",
                                  value=svc.priority.pauses)
        dispatches = CounterMetricFamily(f"{PREFIX}_dispatches", "Dispatch attempts by outcome.", labels=["outcome"])
        for outcome in OUTCOMES:
            dispatches.add_metric([outcome], stats["dispatches"].get(outcome, 0))
        yield dispatches

    return collect


def notification_metrics(svc: Services) -> Callable[[], Iterator[Metric]]:
    """Alert webhooks (deliveries, retries, pending, failing) and silenced or acknowledged alerts."""

    def collect() -> Iterator[Metric]:
        deliveries = CounterMetricFamily(f"{PREFIX}_webhook_deliveries",
                                         "Alert webhook deliveries by outcome: sent (2xx), failed (given up).",
                                         labels=["webhook", "outcome"])
        retries = CounterMetricFamily(f"{PREFIX}_webhook_retries", "Webhook attempts after a failed one.",
                                      labels=["webhook"])
        dropped = CounterMetricFamily(f"{PREFIX}_webhook_dropped",
                                      "Alert changes dropped because the webhook's queue was full.", labels=["webhook"])
        pending = GaugeMetricFamily(f"{PREFIX}_webhook_pending", "Alert changes waiting to be delivered.",
                                    labels=["webhook"])
        failing = GaugeMetricFamily(f"{PREFIX}_webhook_failing", "1 when the webhook's latest attempt failed.",
                                    labels=["webhook"])
        failing_now = {lane.spec.name for lane in svc.notifier.failing}
        for lane in svc.notifier.lanes:
            name = lane.spec.name
            deliveries.add_metric([name, "sent"], lane.sent)
            deliveries.add_metric([name, "failed"], lane.failed)
            retries.add_metric([name], lane.retries)
            dropped.add_metric([name], lane.dropped)
            pending.add_metric([name], lane.pending)
            failing.add_metric([name], 1 if name in failing_now else 0)
        yield from (deliveries, retries, dropped, pending, failing)
        yield CounterMetricFamily(f"{PREFIX}_alert_notifications_suppressed",
                                  "Alert changes not sent to webhooks because the alert was silenced.",
                                  value=svc.notifier.suppressed)
        marks = [svc.marks.mark(alert) for alert in svc.routing.alerts()]
        yield GaugeMetricFamily(f"{PREFIX}_alerts_silenced", "Active alerts that are silenced.",
                                value=sum(mark.silenced for mark in marks))
        yield GaugeMetricFamily(f"{PREFIX}_alerts_acknowledged", "Active alerts that are acknowledged.",
                                value=sum(mark.acknowledged for mark in marks))

    return collect


def registry_for(app: Flask) -> CollectorRegistry:
    """The app's own registry (built on first use)."""
    extensions = app.extensions
    registry: CollectorRegistry | None = extensions.get(_REGISTRY_KEY)
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        svc = services()
        registry.register(MonitorCollector(svc.monitor, [runtime_metrics(svc), notification_metrics(svc),
                                                         lambda: history_metrics(svc)]))
        extensions[_REGISTRY_KEY] = registry
    return registry


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text exposition (the content type prometheus_client negotiates by default)."""
    body = generate_latest(registry_for(current_app._get_current_object()))  # type: ignore[attr-defined]
    return Response(body, content_type=CONTENT_TYPE_LATEST)
