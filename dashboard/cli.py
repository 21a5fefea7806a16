"""The `dispatch-dashboard` command: serve, demo."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from .services.client import SendOnlyClient

from .config import Config, load_config
from .exceptions import DashboardError
from .model.secrets import mask_text
from .serving import DEFAULT_THREADS, ServerOptions
from .serving import serve as serve_app

log = logging.getLogger("dashboard")

EXIT_USAGE = 2
EXIT_UNREACHABLE = 2


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


def _server_options(func: Any) -> Any:
    """The serving options shared by `serve` and `demo`."""
    func = click.option("--threads", default=DEFAULT_THREADS, show_default=True, type=click.IntRange(4, 10_000),
                        help="Threads per process handling requests (open pages and slow clients hold none; "
                             "werkzeug: one per connection).")(func)
    func = click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
                        help="gunicorn worker processes (each runs its own event listener).")(func)
    func = click.option("--insecure-no-auth", is_flag=True,
                        help="Serve with no users on a non-loopback address (anyone can dispatch).")(func)
    func = click.option("--server", "server_kind", default="gunicorn", show_default=True,
                        type=click.Choice(["gunicorn", "werkzeug"]),
                        help="gunicorn's gthread worker (production) or werkzeug's threaded dev server.")(func)
    return func


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML config (else $DASHBOARD_CONFIG).")
@click.option("--client-app",
              help="Your send-only Celery app as module:attribute; its routes and broker are the API side.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=5000, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
@_server_options
def serve(config_file: str | None, client_app: str | None, host: str, port: int, log_level: str,
          server_kind: str, insecure_no_auth: bool, workers: int, threads: int) -> None:
    """Serve the dashboard (gunicorn gthread by default)."""
    _configure_logging(log_level)
    config = _load(config_file, client_app)
    check_exposure(config, host, insecure_no_auth)
    run_server(config, ServerOptions(host, port, server_kind, workers, threads, log_level.lower()))


def check_exposure(config: Config, host: str, insecure_no_auth: bool) -> None:
    """Refuse to serve an open dashboard beyond this machine unless told so, loudly."""
    from .model.auth import is_loopback

    if config.auth.enabled:
        return
    if is_loopback(host):
        click.echo("dispatch-dashboard: no users configured: running OPEN on loopback (every page says so)", err=True)
        return
    if not insecure_no_auth:
        fail(f"refusing to serve on {host} with no users configured: anyone who can reach it could dispatch tasks. "
             "Add [[auth.users]] to the config (see `dispatch-dashboard hash-password`), serve on 127.0.0.1, "
             "or pass --insecure-no-auth")
    click.echo(f"dispatch-dashboard: WARNING: --insecure-no-auth: serving on {host} with NO authentication; "
               "anyone who can reach it can dispatch tasks and control workers", err=True)


def with_default_hosts(config: Config, host: str) -> Config:
    """Without [server] allowed_hosts: the loopback names, plus the address served on (and this machine's
    name when serving on every address), so a foreign name pointed here (DNS rebinding) gets a 400."""
    import dataclasses

    from .model.auth import LOOPBACK_NAMES, host_name

    if config.server.allowed_hosts is not None:
        return config
    hosts = list(LOOPBACK_NAMES)
    if host in ("0.0.0.0", "::", ""):
        hosts.append(socket.gethostname().lower())
    else:
        hosts.append(host_name(f"[{host}]" if ":" in host else host))
    server = dataclasses.replace(config.server, allowed_hosts=tuple(dict.fromkeys(hosts)))
    return dataclasses.replace(config, server=server)


def run_server(config: Config, options: ServerOptions, client: SendOnlyClient | None = None) -> None:
    """Build the app and serve it until interrupted."""
    from . import create_app

    config = with_default_hosts(config, options.host)
    try:
        app = create_app(config, client=client)
    except DashboardError as exc:
        fail(str(exc))
    _check_bind(options.host, options.port)

    def ready(url: str) -> None:
        click.echo(f"dispatch-dashboard serving on {url}  ({options.server}, {options.workers} process(es) x "
                   f"{options.threads} request threads; Ctrl-C to stop)")

    try:
        serve_app(app, options, ready)
    except OSError as exc:
        fail(f"cannot listen on {options.host}:{options.port}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        pass
    except SystemExit as exc:  # gunicorn's arbiter ends with sys.exit(0) after a clean Ctrl-C / SIGTERM
        if exc.code not in (0, None):
            raise


def _check_bind(host: str, port: int) -> None:
    """Fail with one clear line when the address is taken (gunicorn would retry, then exit with a log dump)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address for the dashboard.")
@click.option("--port", default=5000, show_default=True, type=click.IntRange(0, 65535), help="Port for the dashboard.")
@click.option("--redis-port", default=0, type=click.IntRange(0, 65535), help="Port for the demo Redis (0: a free one).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True),
              help="Routing config (default: the bundled sample mirroring worker_stub).")
@_server_options
def demo(host: str, port: int, redis_port: int, config_file: str | None, server_kind: str,
         insecure_no_auth: bool, workers: int, threads: int) -> None:
    """Start Redis, a worker_stub worker and the dashboard with the sample config; Ctrl-C stops all of it."""
    from .resources import sample_config, stub_worker_root
    from .services.processes import CeleryWorker, RedisServer

    _configure_logging("info")
    stub_root = stub_worker_root()
    if stub_root is None and importlib.util.find_spec("worker_stub") is None:
        fail("the demo runs the stub worker (worker_stub/) from a source checkout: git clone the project and run "
             "`make demo` there")
    config_path = Path(config_file) if config_file else sample_config()
    with ExitStack() as stack, _stop_on_sigterm():
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dispatch-dashboard-demo-")))
        try:
            redis = stack.enter_context(RedisServer(port=redis_port or None, directory=workdir))
        except DashboardError as exc:
            fail(str(exc))
        broker_url, backend_url = redis.url(0), redis.url(1)
        click.echo(f"demo: redis-server {redis.version or ''} on port {redis.port} (pid {redis.pid})")
        # Everything a demo keeps lives in its own temporary directory: another run's audit entries never show.
        env = {"CELERY_BROKER_URL": broker_url, "CELERY_RESULT_BACKEND": backend_url,
               "DASHBOARD_AUDIT_PATH": str(workdir / "audit.sqlite3"),
               "DASHBOARD_HISTORY_URL": str(workdir / "history.sqlite3")}
        try:
            worker = stack.enter_context(
                CeleryWorker(broker_url=broker_url, backend_url=backend_url, queues=("stt", "llm", "default"),
                             name="stub", log_path=workdir / "worker.log", pool="prefork", concurrency=2,
                             pythonpath=[str(stub_root)] if stub_root is not None else ())
            )
        except DashboardError as exc:
            fail(str(exc))
        click.echo(f"demo: worker_stub worker {worker.hostname} consuming stt,llm,default (log: {worker.log_path})")
        config = load_demo_config(config_path, env)
        check_exposure(config, host, insecure_no_auth)
        click.echo(f"demo: dashboard config {config_path}")
        run_server(config, ServerOptions(host, port, server_kind, workers, threads))
        click.echo("demo: stopping worker and redis")


@main.command("check-routes")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML config (else $DASHBOARD_CONFIG).")
@click.option("--client-app",
              help="Your send-only Celery app as module:attribute; its routes and broker are the API side.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--timeout", default=5.0, show_default=True, type=click.FloatRange(0.1, 300),
              help="Seconds to wait for the broker and the workers' replies.")
def check_routes(config_file: str | None, client_app: str | None, as_json: bool, timeout: float) -> None:
    """Compare the API routes with the live workers: exit 0 consistent, 1 mismatch, 2 unreachable.

    For CI: run it after deploying workers (or in an integration job with workers up) so that a route to a
    queue nobody consumes, or a name nobody registers, fails the build instead of silently queueing forever.
    """
    from .routing_check import run_check

    logging.basicConfig(level="ERROR")
    config = _load(config_file, client_app)
    result = run_check(config, timeout)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        for line in result.lines():
            click.echo(line, err=result.exit_code == EXIT_UNREACHABLE)
    sys.exit(result.exit_code)


@main.command("hash-password")
@click.option("--token", is_flag=True, help="Hash an API bearer token (sha256) for [[auth.tokens]] instead.")
def hash_password(token: bool) -> None:
    """Read a password (or token) from stdin and print the hash for the config."""
    import hashlib

    from werkzeug.security import generate_password_hash

    secret = sys.stdin.readline().rstrip("\r\n")
    if not secret:
        fail("nothing on stdin: echo 'the password' | dispatch-dashboard hash-password")
    if token:
        click.echo(hashlib.sha256(secret.encode("utf-8")).hexdigest())
    else:
        click.echo(generate_password_hash(secret))


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
