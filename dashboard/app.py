"""The composition root: `build_services` wires every service once; `create_app` builds the Flask app on them.

Nothing starts here: the monitor's threads start on the first request in each serving process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from celery import Celery
from flask import Flask

from .config import MAX_BODY_BYTES, Config, load_config
from .exceptions import ConfigError
from .model.series import QueueSample
from .model.state import State
from .resources import resource_dir
from .services.actions import Actions, BulkActions, Control, TaskActions, WorkerControl, state_selector
from .services.alert_marks import AlertMarks
from .services.audit import DAY, PRUNE_EVERY, AuditStore, open_audit
from .services.broker import BrokerInspector, QueueBrowser, broker_inspector, queue_browser
from .services.client import ClientSettings, SendOnlyClient
from .services.container import Services
from .services.dispatch import Dispatcher
from .services.events.hub import Hub
from .services.events.jobs import Bell, Job, Jobs
from .services.events.monitor import Monitor
from .services.events.resync import Resync
from .services.events.sink import EventSink
from .services.events.stats import TaskStats
from .services.events.stream import StreamLog
from .services.history import History, HistoryWriter, open_store
from .services.inspection import WorkerInspector
from .services.notify import AlertNotifier
from .services.priority import RequestPriority
from .services.queues import QueueService
from .services.render_cache import RenderCache
from .services.routing import RoutingService
from .services.sessions import SessionRevocations
from .web import SERVICES_KEY, register

log = logging.getLogger(__name__)


class _FromConfig:
    """The default of an injectable service: built from the config."""


FROM_CONFIG: Final = _FromConfig()


def create_app(config: Config | None = None, *, client: SendOnlyClient | None = None,
               audit: AuditStore | None | _FromConfig = FROM_CONFIG, live: bool = True) -> Flask:
    """The Flask app for `config` (else $DASHBOARD_CONFIG); connects to nothing until used. `client` and `audit`
    replace the ones the config describes (tests, `celery dashboard` with the user's own app).

    With `live` (the default) the event monitor starts on the first request in each process, so a server that
    forks workers (gunicorn) runs one listener per worker and none in the master.
    """
    config = config if config is not None else load_config()
    services = build_services(config, client=client, audit=audit, live=live)
    app = Flask(
        "dashboard",
        template_folder=str(resource_dir("templates")),
        static_folder=str(resource_dir("static")),
        static_url_path="/static",
    )
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    if config.trusted_proxies:
        # Behind N reverse proxies: the client's address (audit log), scheme (Secure cookies, same-origin
        # checks), host and path prefix come from the X-Forwarded-* headers the last N proxies set; with no
        # proxy configured those headers are ignored, since any client could send them.
        from werkzeug.middleware.proxy_fix import ProxyFix

        hops = config.trusted_proxies
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops, x_prefix=hops
        )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[SERVICES_KEY] = services
    register(app, services)
    return app


def build_services(
    config: Config,
    *,
    client: SendOnlyClient | None = None,
    audit: AuditStore | None | _FromConfig = FROM_CONFIG,
    live: bool = True,
    listener_app: Celery | None = None,
    control_app: Celery | None = None,
    clock: Callable[[], float] = time.time,
) -> Services:
    """Every service of one app, each built once with what it needs; the monitor last, with its hooks and jobs."""
    client = client if client is not None else SendOnlyClient(ClientSettings.from_config(config))
    settings = client.settings
    control = control_app if control_app is not None else client_control_app(settings)
    state = State(config.monitor.max_tasks, clock=clock)
    hub = Hub()
    stream = StreamLog(clock)
    bell = Bell()  # rung when a worker comes or goes: its inspection is due at once
    stats = TaskStats(state)
    inspector = WorkerInspector(control, timeout=min(settings.timeout, 2.0))
    # Acknowledgements and silences are shared by the replicas through the Redis they share (as logouts are).
    marks = AlertMarks(hub, settings.broker_url, settings.result_backend, clock=clock)
    notifier = AlertNotifier(config.alerts.webhooks, marks, hub, dashboard_url=config.alerts.dashboard_url,
                             clock=clock)
    routing = RoutingService(client, state, hub, stream, inspector, _broker(config, settings),
                             [spec.name for spec in config.catalog], grace=config.monitor.alert_grace,
                             inspect_interval=config.monitor.inspect_interval, clock=clock,
                             alert_hooks=(marks.note_change, notifier.notify))
    priority = RequestPriority()
    history = _history(config, state, hub, stream, clock, priority)
    hooks = (routing.note_event, stats.note_event, *((history.writer.note_event,) if history else ()))
    sink = EventSink(state, hub, hooks=hooks, on_worker_change=bell.ring)
    results = client.result_state if settings.result_backend else None
    resync = Resync(sink, stream, inspector, results)
    if isinstance(audit, _FromConfig):
        # A SQLite file, or PostgreSQL (shared by replicas); opened on the first use.
        audit = open_audit(config.audit_path) if config.audit_path else None
        log.info("audit log: %s", audit.shown if audit is not None else "off")
    job_list = [*routing.jobs(), resync.job(), marks.job()]
    if history is not None:
        job_list.append(history.writer.sampling_job(lambda: _queue_samples(routing, clock()),
                                                    config.monitor.inspect_interval))
    if audit is not None and config.audit_retention_days:
        job_list.append(_audit_retention(audit, config.audit_retention_days))
    jobs = Jobs(job_list, bell)
    monitor = Monitor(settings, sink, stream, jobs, listener_app=listener_app, control_app=control, clock=clock,
                      companions=(notifier, *((history.writer,) if history is not None else ())), priority=priority)
    dispatcher = Dispatcher(client, routing, audit, stats, sink)
    return Services(
        config=config, client=client, state=state, hub=hub, stream=stream, monitor=monitor, routing=routing,
        resync=resync, stats=stats, audit=audit, dispatcher=dispatcher,
        actions=_actions(config, state, routing, inspector, control, client, dispatcher, audit, history),
        revocations=(SessionRevocations(settings.broker_url, settings.result_backend) if config.auth.enabled
                     else SessionRevocations()),
        rendered=RenderCache(), queues=_queues(settings, routing, state, client), marks=marks, notifier=notifier,
        history=history, live=live, priority=priority,
    )


def _actions(config: Config, state: State, routing: RoutingService, inspector: WorkerInspector, control_app: Celery,
             client: SendOnlyClient, dispatcher: Dispatcher, audit: AuditStore | None,
             history: History | None) -> Actions:
    """Task, bulk and worker actions, sharing one bounded control channel."""
    control = Control(control_app, inspector.timeout)
    tasks = TaskActions(state, routing, control, client, dispatcher, audit, config.catalog)
    return Actions(tasks, BulkActions(state_selector(state, history), tasks, control, audit,
                                      config.actions.bulk_limit), WorkerControl(inspector, control))


def client_control_app(settings: ClientSettings) -> Celery:
    """The bounded app for broadcasts and inspection (its own, so its pools are separate from publishing's)."""
    from .services.client import build_send_only_app

    return build_send_only_app(settings)


def _history(config: Config, state: State, hub: Hub, stream: StreamLog, clock: Callable[[], float],
             priority: RequestPriority) -> History | None:
    """Task history, when [history] url names a store (the writer's thread starts with the monitor's)."""
    settings = config.history
    if not settings.enabled:
        log.info("history: off")
        return None
    store = open_store(settings.url)
    log.info("history: %s", store.shown)
    writer = HistoryWriter(
        store, state, flush_interval=settings.flush_interval, retention_days=settings.retention_days,
        max_tasks=settings.max_tasks, on_restored=hub.resync_all, on_downtime=stream.downtime,
        on_status=lambda: hub.publish("status", "history"), clock=clock, pause=priority.yield_to_requests,
    )
    return History(store, writer, state, clock)


def _queue_samples(routing: RoutingService, now: float) -> list[QueueSample]:
    """Each queue's depth and consumers at the latest comparison (none before the first)."""
    report = routing.report
    if report is None:
        return []
    return [QueueSample(now, queue.name, queue.depth, len(queue.consumers)) for queue in report.queues]


def _broker(config: Config, settings: ClientSettings) -> BrokerInspector | None:
    try:
        return broker_inspector(settings.broker_url, settings.broker_transport_options, settings.timeout)
    except ConfigError as exc:
        log.warning("queue depths unavailable: %s", exc)
        return None


def _queues(settings: ClientSettings, routing: RoutingService, state: State, client: SendOnlyClient) -> QueueService:
    browser: QueueBrowser | None = None
    unavailable = None
    try:
        browser = queue_browser(settings.broker_url, settings.broker_transport_options, settings.timeout)
    except ConfigError as exc:
        unavailable = f"the queue browser is unavailable: {exc}"
    return QueueService(browser, routing, state, client, unavailable=unavailable)


def _audit_retention(audit: AuditStore, days: float) -> Job:
    """Delete audit entries older than `days`, soon after start and hourly."""

    def prune() -> None:
        audit.prune(time.time() - days * DAY)

    return Job("audit-retention", PRUNE_EVERY, prune)
