"""The `dispatch-dashboard` command: serve, demo."""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click

from .config import Config, load_config
from .exceptions import DashboardError
from .model.secrets import mask_text

log = logging.getLogger("dashboard")

EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print one clear line to stderr and exit; never a traceback for the user's mistakes."""
    click.echo(f"dispatch-dashboard: error: {mask_text(message)}", err=True)
    sys.exit(code)


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _load(config_file: str | None, client_app: str | None) -> Config:
    try:
        return load_config(config_file, client_app=client_app)
    except DashboardError as exc:
        fail(str(exc))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dispatch-dashboard")
def main() -> None:
    """Dispatch Celery tasks by name from a browser, and see where they go."""


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML config (else $DASHBOARD_CONFIG).")
@click.option("--client-app", help="Your send-only Celery app as module:attribute; its routes and broker are the API side.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=5000, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
def serve(config_file: str | None, client_app: str | None, host: str, port: int, log_level: str) -> None:
    """Serve the dashboard."""
    _configure_logging(log_level)
    config = _load(config_file, client_app)
    run_server(config, host, port)


def run_server(config: Config, host: str, port: int, ready: threading.Event | None = None) -> None:
    """Build the app and serve it on a threaded server until interrupted."""
    from werkzeug.serving import make_server

    from . import create_app

    try:
        app = create_app(config)
    except DashboardError as exc:
        fail(str(exc))
    try:
        server = make_server(host, port, app, threaded=True)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    shown_host = f"[{host}]" if ":" in host else host
    click.echo(f"dispatch-dashboard serving on http://{shown_host}:{server.server_port}/  (Ctrl-C to stop)")
    if ready is not None:
        ready.set()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address for the dashboard.")
@click.option("--port", default=5000, show_default=True, type=click.IntRange(0, 65535), help="Port for the dashboard.")
@click.option("--redis-port", default=0, type=click.IntRange(0, 65535), help="Port for the demo Redis (0: a free one).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True),
              help="Routing config (default: the bundled sample mirroring worker_stub).")
def demo(host: str, port: int, redis_port: int, config_file: str | None) -> None:
    """Start Redis, a worker_stub worker and the dashboard with the sample config; Ctrl-C stops all of it."""
    from .resources import sample_config
    from .services.processes import CeleryWorker, RedisServer

    _configure_logging("info")
    config_path = Path(config_file) if config_file else sample_config()
    with ExitStack() as stack, _stop_on_sigterm():
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dispatch-dashboard-demo-")))
        try:
            redis = stack.enter_context(RedisServer(port=redis_port or None, directory=workdir))
        except DashboardError as exc:
            fail(str(exc))
        broker_url, backend_url = redis.url(0), redis.url(1)
        click.echo(f"demo: redis-server {redis.version or ''} on port {redis.port} (pid {redis.pid})")
        env = {"CELERY_BROKER_URL": broker_url, "CELERY_RESULT_BACKEND": backend_url}
        try:
            worker = stack.enter_context(
                CeleryWorker(broker_url=broker_url, backend_url=backend_url, queues=("stt", "llm", "default"),
                             name="stub", log_path=workdir / "worker.log")
            )
        except DashboardError as exc:
            fail(str(exc))
        click.echo(f"demo: worker_stub worker {worker.hostname} consuming stt,llm,default (log: {worker.log_path})")
        config = load_demo_config(config_path, env)
        click.echo(f"demo: dashboard config {config_path}")
        run_server(config, host, port)
        click.echo("demo: stopping worker and redis")


def load_demo_config(path: Path, env: dict[str, str]) -> Config:
    """The sample config, pointed at the demo's own Redis."""
    try:
        return load_config(path, {**os.environ, **env})
    except DashboardError as exc:
        fail(str(exc))


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so the demo's children are stopped either way."""

    def handler(signum: int, frame: FrameType | None) -> Any:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    main()
