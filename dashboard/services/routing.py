"""The routing comparison, live: API routes (Celery's router on the send-only app) vs. what workers report.

Runs on the monitor's jobs thread as two jobs (`jobs()`, handed to the monitor by the composition root):
- "inspect": every `inspect_interval` (and right after a worker comes online or goes offline) asks the workers
  for active_queues / registered / conf / stats and stores the answers;
- "routing": every couple of seconds reads queue depths from the broker, recompares (pure model, no I/O) and
  evaluates the alert book, publishing "routing" and "alert" changes to the hub.
Readers (pages, API) take the last report and the active alerts, which are replaced atomically.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from celery import Celery

from ..exceptions import BrokerUnavailable, DashboardError
from ..model.alerts import Alert, AlertBook, AlertChange, conditions_from
from ..model.guard import Guard, dispatch_guard
from ..model.routing import ApiRoute, BrokerQueue, RoutingReport, WorkerSnapshot, compare
from ..model.secrets import mask_text
from ..model.state import State, WorkerView
from .broker import BrokerInspector
from .client import BROKER_ERRORS, SendOnlyClient
from .events.hub import Hub
from .events.jobs import Job
from .events.stream import StreamLog
from .inspection import InspectionResult, WorkerInspector, WorkerReport

log = logging.getLogger(__name__)

MAX_SENT_NAMES = 5_000  # distinct task names remembered from task-sent events (a typo storm stays bounded)
ROUTING_EVERY = 2.0
MAX_ALERT_HISTORY = 200
_UNAVAILABLE: tuple[type[BaseException], ...] = (BrokerUnavailable, *BROKER_ERRORS)


class WorkerRouteResolver:
    """Resolves names with a worker's own task_routes through Celery's router (one app per distinct config)."""

    def __init__(self, capacity: int = 64) -> None:
        self._apps: OrderedDict[str, Celery | None] = OrderedDict()
        self._capacity = capacity

    def resolve(self, report: WorkerReport, names: Iterable[str]) -> dict[str, str] | None:
        """name -> queue by the worker's routes, or None when it declares none (or only router objects)."""
        routes = report.task_routes
        if not routes:
            return None
        app = self._app_for(routes, report.default_queue)
        if app is None:
            return None
        resolved: dict[str, str] = {}
        router = app.amqp.router
        for name in names:
            try:
                route = router.route({}, name, (), {})
            except Exception:  # noqa: BLE001 - a worker's odd config must not stop the comparison
                continue
            queue = route.get("queue")
            resolved[name] = str(getattr(queue, "name", queue) or "")
        return resolved

    def _app_for(self, routes: Any, default_queue: str) -> Celery | None:
        try:
            key = json.dumps([routes, default_queue], sort_keys=True, default=str)
        except (TypeError, ValueError):
            return None
        if key in self._apps:
            self._apps.move_to_end(key)
            return self._apps[key]
        app: Celery | None = None
        tables = routes if isinstance(routes, list) else [routes]
        # Only plain mappings: a router given as a dotted path would make us import code the worker names.
        if all(isinstance(table, Mapping) for table in tables):
            app = Celery("worker-routes", set_as_current=False)
            app.conf.task_routes = tables if isinstance(routes, list) else routes
            app.conf.task_default_queue = default_queue
        self._apps[key] = app
        if len(self._apps) > self._capacity:
            self._apps.popitem(last=False)
        return app


class RoutingService:
    """Owns the latest inspection, routing report and alert book; runs as jobs on the monitor's jobs thread."""

    def __init__(
        self,
        client: SendOnlyClient,
        state: State,
        hub: Hub,
        stream: StreamLog,
        inspector: WorkerInspector,
        broker: BrokerInspector | None,
        catalog_names: Iterable[str],
        *,
        grace: float,
        inspect_interval: float,
        clock: Callable[[], float] = time.time,
        alert_hooks: Iterable[Callable[[AlertChange], None]] = (),
    ) -> None:
        self.client = client
        self.alert_hooks = tuple(alert_hooks)  # e.g. the webhook notifier's: they queue the change, never block
        self.state = state
        self.hub = hub
        self.stream = stream
        self.clock = clock
        self.inspector = inspector
        self.broker = broker
        self.catalog_names = tuple(catalog_names)
        self.book = AlertBook(grace)
        self.inspect_interval = inspect_interval
        self._resolver = WorkerRouteResolver()
        self._lock = threading.Lock()
        self._reports: dict[str, WorkerReport] = {}
        self._sent: OrderedDict[str, None] = OrderedDict()
        self._not_registered: OrderedDict[str, None] = OrderedDict()
        self._previously_consumed: set[str] = set()
        self._api_routes: dict[str, ApiRoute] = {}
        self.report: RoutingReport | None = None
        self.inspected_at: float | None = None
        self.compared_at: float | None = None
        self.broker_error: str | None = None
        self.inspect_error: str | None = None
        self.history: list[AlertChange] = []
        self.changes_total = 0  # alert changes ever made; history holds the last MAX_ALERT_HISTORY of them

    # -- wiring ----------------------------------------------------------------------------------------------

    def jobs(self) -> list[Job]:
        """The two jobs for the monitor; `note_event` is its event hook."""
        return [Job("inspect", self.inspect_interval, self.run_inspection),
                Job("routing", min(ROUTING_EVERY, self.inspect_interval), self.run_comparison)]

    def note_event(self, event: Mapping[str, Any]) -> None:
        """Remember names from task-sent events and names rejected as NotRegistered (event thread, O(1))."""
        kind = event.get("type")
        if kind == "task-sent":
            name = event.get("name")
            if isinstance(name, str) and name and name not in self._sent:
                with self._lock:
                    _remember(self._sent, name, MAX_SENT_NAMES)
        elif kind == "task-failed":
            exception = event.get("exception")
            if isinstance(exception, str) and exception.startswith("NotRegistered"):
                task = self.state.task(str(event.get("uuid", "")))
                if task is not None and task.name:
                    with self._lock:
                        _remember(self._not_registered, task.name, MAX_SENT_NAMES)

    # -- jobs (ticker thread) --------------------------------------------------------------------------------

    def run_inspection(self) -> None:
        """Ask the workers; store what they say on the state (for the workers panel) and here.

        A broker error is recorded in `inspect_error` and raised again, so the monitor retries soon.
        """
        online = self.state.online_workers()
        try:
            result = self.inspector.inspect(expected=len(online) or None)
        except BROKER_ERRORS as exc:
            self.inspect_error = mask_text(f"worker inspection failed: {exc}")
            raise  # the monitor retries a job the broker failed soon, not a whole interval later
        self.inspect_error = None
        self._store(result)
        self.inspected_at = self.clock()
        self.run_comparison()

    def _store(self, result: InspectionResult) -> None:
        with self._lock:
            changed = {
                hostname for hostname, report in result.workers.items()
                if _shown(self._reports.get(hostname)) != _shown(report)
            }
            for hostname, report in result.workers.items():
                previous = self._reports.get(hostname)
                if previous is not None:
                    # A question this worker left unanswered (a timeout) keeps what it said last time: a live
                    # worker must not look as if it consumed nothing.
                    kept = {name: getattr(previous, name) for name in ("queues", "registered", "conf", "stats")
                            if getattr(report, name) is None}
                    report = result.workers[hostname] = dataclasses.replace(report, **kept)
                self._reports[hostname] = report
        for hostname, report in result.workers.items():
            pool = report.stats.get("pool") if report.stats else None
            change = self.state.update_worker_inspection(
                hostname,
                queues=report.queues,
                registered=report.registered,
                pool=pool if isinstance(pool, Mapping) else None,
                stats=report.stats,
            )
            if hostname in changed:  # stats (uptime, counters) change every time: not worth a push
                self.hub.publish("worker", change.key)

    def run_comparison(self) -> None:
        """Depths from the broker, then the pure comparison and the alert book."""
        if self.inspected_at is None:
            return  # nothing to compare until the workers have been asked once
        depths = self._broker_queues()
        report = self.compare(depths)
        now = self.clock()
        with self._lock:
            not_registered = list(self._not_registered)
        conditions = conditions_from(report, not_registered_names=not_registered,
                                     previously_consumed=self._previously_consumed)
        self._previously_consumed |= report.consumed_queues()
        changes = self.book.evaluate(conditions, now)
        changed_report = self.report is None or report.to_dict() != self.report.to_dict()
        self.report = report
        self.compared_at = now
        if changed_report:
            self.hub.publish("routing", "")
        for change in changes:
            with self._lock:
                self.history.append(change)
                self.changes_total += 1
                del self.history[:-MAX_ALERT_HISTORY]
            log.warning("alert %s: %s", change.status, change.alert.message)
            self.hub.publish("alert", change.alert.key)
            for hook in self.alert_hooks:
                try:
                    hook(change)
                except Exception:  # noqa: BLE001 - a failing hook must not hold back the other changes
                    log.exception("alert hook failed for %s", change.alert.key[:100])

    def _broker_queues(self) -> list[BrokerQueue]:
        if self.broker is None:
            return []
        known = set(self._api_routes_queue_names())
        try:
            found = self.broker.queues(known)
        except _UNAVAILABLE as exc:
            self.broker_error = mask_text(str(exc))
            return [BrokerQueue(name, None) for name in sorted(known)]
        self.broker_error = None
        return found

    def _api_routes_queue_names(self) -> list[str]:
        return sorted({route.queue for route in self._api_routes.values()})

    def compare(self, broker_queues: Iterable[BrokerQueue], online_hosts: Iterable[str] | None = None) -> RoutingReport:
        """The comparison of now (pure apart from resolving API routes with Celery's router).

        Liveness comes from the event state's heartbeats; `online_hosts` replaces it (for a one-shot check
        without an event stream, every worker that answered the inspection is online).
        """
        workers: list[tuple[str, bool, WorkerView | None]]
        if online_hosts is None:
            workers = [(view.hostname, view.online, view) for view in self.state.workers()]
        else:
            workers = [(hostname, True, None) for hostname in online_hosts]
        with self._lock:
            reports = dict(self._reports)
            sent = list(self._sent)
            names = set(self.catalog_names) | set(sent) | set(self._not_registered) | self._exact_route_names()
        for report in reports.values():
            names.update(report.registered or ())
        api_routes = self._resolve_api(names)
        snapshots = [
            self._snapshot(hostname, online, view, reports.get(hostname), names) for hostname, online, view in workers
        ]
        return compare(api_routes, snapshots, broker_queues, self.client.settings.task_default_queue,
                       sent_names=sent)

    def _exact_route_names(self) -> set[str]:
        routes = self.client.settings.task_routes
        tables = routes if isinstance(routes, (list, tuple)) else [routes]
        names: set[str] = set()
        for table in tables:
            if isinstance(table, Mapping):
                names.update(key for key in table if isinstance(key, str) and not any(c in key for c in "*?["))
        return names

    def _resolve_api(self, names: Iterable[str]) -> dict[str, ApiRoute]:
        routes = {}
        for name in names:
            cached = self._api_routes.get(name)
            if cached is None:
                try:
                    resolution = self.client.resolve(name)
                except DashboardError:
                    continue
                kind = resolution.source.kind
                cached = ApiRoute(resolution.queue, resolution.source.pattern,
                                  "route" if kind == "route" else "default")
                self._api_routes[name] = cached
            routes[name] = cached
        return routes

    def _snapshot(
        self, hostname: str, online: bool, view: WorkerView | None, report: WorkerReport | None, names: set[str]
    ) -> WorkerSnapshot:
        if report is not None:
            queues, registered = frozenset(report.queues or ()), frozenset(report.registered or ())
        else:
            queues = frozenset(view.queues or ()) if view else frozenset()
            registered = frozenset(view.registered or ()) if view else frozenset()
        routes = self._resolver.resolve(report, names) if report is not None else None
        return WorkerSnapshot(hostname, online, queues, registered, routes)

    def store_reports(self, result: InspectionResult) -> None:
        """Keep inspection answers without touching the event state (the one-shot check uses this)."""
        with self._lock:
            self._reports.update(result.workers)

    # -- readers (any thread) --------------------------------------------------------------------------------

    def alerts(self) -> list[Alert]:
        """Active alerts, oldest first."""
        return self.book.active()

    def alert(self, key: str) -> Alert | None:
        """An active alert by key."""
        return next((alert for alert in self.book.active() if alert.key == key), None)

    def changes_since(self, seen: int) -> tuple[list[AlertChange], int]:
        """Every alert change after the first `seen` ones, oldest first (as far as history reaches), and the new
        count to pass next time: a raise and a clear within one frame are two messages, not one."""
        with self._lock:
            total = self.changes_total
            missed = min(total - seen, len(self.history))
            return (self.history[-missed:] if missed > 0 else []), total

    def guard(self, name: str, queue: str) -> Guard:
        """Would this dispatch land where nobody takes it? Judged from the latest comparison (model/guard.py)."""
        return dispatch_guard(self.report, name, queue, stream_live=self.stream.live)

    def online_workers(self) -> list[str]:
        """Hostnames of online workers, for the add-consumer form."""
        return [view.hostname for view in self.state.online_workers()]


def _shown(report: WorkerReport | None) -> Any:
    """What the pages show of a report, to tell a real change from a re-inspection."""
    if report is None:
        return None
    return report.queues, report.registered, json.dumps(report.task_routes, sort_keys=True, default=str)


def _remember(seen: OrderedDict[str, None], name: str, cap: int) -> None:
    if name in seen:
        return
    seen[name] = None
    if len(seen) > cap:
        seen.popitem(last=False)
