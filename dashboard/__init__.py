"""dispatch-dashboard: dispatch Celery tasks by name and watch where they go. Nothing starts at import."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the package root stays light: `dashboard.model` must import without Flask or Celery
    from flask import Flask

    from .config import Config
    from .services.audit import AuditLog
    from .services.client import SendOnlyClient
    from .services.monitor import Monitor
    from .services.routing import RoutingService

__all__ = ["create_app"]

MAX_BODY_BYTES = 1024 * 1024  # a dispatch body is small; anything larger is refused with 413

log = logging.getLogger(__name__)


def create_app(
    config: Config | None = None,
    *,
    client: SendOnlyClient | None = None,
    monitor: Monitor | None = None,
    live: bool = True,
) -> Flask:
    """Build the Flask app from `config` (else from $DASHBOARD_CONFIG); connects to nothing until used.

    With `live` (the default) the event monitor starts on the first request in each process, so a server
    that forks workers (gunicorn) runs one listener per worker and none in the master.
    """
    from flask import Flask

    from .config import load_config
    from .resources import resource_dir
    from .services.client import ClientSettings, SendOnlyClient
    from .services.monitor import Monitor
    from .web import register
    from .web.runtime import Runtime

    config = config if config is not None else load_config()
    app = Flask(
        __name__,
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
    client = client if client is not None else SendOnlyClient(ClientSettings.from_config(config))
    monitor = monitor if monitor is not None else Monitor(client.settings, config.monitor)
    app.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": 20, "max_message_size": 64 * 1024}
    rt = Runtime(config=config, client=client, monitor=monitor, live=live)
    rt.routing = _routing_service(config, client, monitor)
    from .services.resync import Resync

    results = client.result_state if client.settings.result_backend else None
    rt.resync = Resync(monitor, rt.routing.inspector, results)
    rt.resync.install()
    rt.stats.install(monitor)
    from .services.audit import AuditLog

    rt.audit = AuditLog(config.audit_path) if config.audit_path else None  # opened on the first dispatch
    log.info("audit log: %s", config.audit_path or "off")
    if rt.audit is not None and config.audit_retention_days:
        _schedule_audit_retention(rt.audit, config.audit_retention_days, monitor)
    app.extensions["dispatch_dashboard"] = rt
    register(app)
    return app


def _schedule_audit_retention(audit: AuditLog, days: float, monitor: Monitor) -> None:
    """Delete audit entries older than `days`, soon after start and hourly (a job on the monitor's thread)."""
    from .services.audit import DAY, PRUNE_EVERY

    def prune() -> None:
        audit.prune(time.time() - days * DAY)

    monitor.add_job("audit-retention", PRUNE_EVERY, prune)


def _routing_service(config: Config, client: SendOnlyClient, monitor: Monitor) -> RoutingService:
    """The routing comparison and alerts, as jobs on the monitor's ticker (nothing runs until it starts)."""
    from .exceptions import ConfigError
    from .services.broker import broker_inspector
    from .services.inspection import WorkerInspector
    from .services.routing import RoutingService

    settings = client.settings
    try:
        broker = broker_inspector(settings.broker_url, settings.broker_transport_options, settings.timeout)
    except ConfigError as exc:
        log.warning("queue depths unavailable: %s", exc)
        broker = None
    service = RoutingService(
        client,
        monitor,
        WorkerInspector(monitor.control_app, timeout=min(settings.timeout, 2.0)),
        broker,
        [spec.name for spec in config.catalog],
        grace=config.monitor.alert_grace,
        inspect_interval=config.monitor.inspect_interval,
    )
    service.install()
    return service
