"""`celery -A your.app dashboard`: the dashboard as a Celery CLI subcommand (entry point group celery.commands).

The app given to `celery -A` is the API side: its task_routes, task_default_queue, task_queues and broker settings
are what the dashboard resolves routes with and compares against the workers. `--config` (or $DASHBOARD_CONFIG)
adds the task catalog, [monitor], [auth] and [audit]; without it the dashboard runs with an empty catalog.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import click
from celery.bin.base import CeleryCommand

from .cli import check_exposure, fail, run_server
from .config import ENV_CONFIG, config_from_mapping, load_config
from .exceptions import DashboardError
from .serving import DEFAULT_THREADS, ServerOptions


@click.command(cls=CeleryCommand)
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="Dashboard TOML (catalog, monitor, auth); routes and broker come from the -A app.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--server", "server_kind", default="gunicorn", show_default=True,
              type=click.Choice(["gunicorn", "werkzeug"]))
@click.option("--threads", default=DEFAULT_THREADS, show_default=True, type=click.IntRange(4, 10_000))
@click.option("--insecure-no-auth", is_flag=True, help="Serve with no users on a non-loopback address.")
@click.pass_context
def dashboard(ctx: click.Context, config_file: str | None, host: str, port: int, server_kind: str, threads: int,
              insecure_no_auth: bool) -> None:
    """Serve dispatch-dashboard for this Celery app (its routes and broker are the API side)."""
    from .services.client import ClientSettings, SendOnlyClient

    app: Any = ctx.obj.app
    if app.main in (None, "default", "__main__"):
        click.echo("celery dashboard: WARNING: no app given (-A your.module): serving Celery's default app, which "
                   "has no task_routes and the default broker; pass -A with your send-only client app", err=True)
    try:
        path = config_file or os.environ.get(ENV_CONFIG)
        config = load_config(path) if path else config_from_mapping({}, os.environ, source=None)
        config = dataclasses.replace(config, broker_url=app.conf.broker_url or config.broker_url)
        settings = dataclasses.replace(ClientSettings.from_celery_app(app, config), origin=f"celery -A {app.main}")
        client = SendOnlyClient(settings)
    except DashboardError as exc:
        fail(str(exc))
    check_exposure(config, host, insecure_no_auth)
    run_server(config, ServerOptions(host, port, server_kind, 1, threads), client=client)
