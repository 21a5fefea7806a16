"""Serving the app: gunicorn with the dashboard's own worker (production), werkzeug's threaded server (development).

The worker (worker.py) runs one asyncio loop per process (server.py): requests are read there under deadlines and
handled on a pool of `threads`; every websocket is driven by one fan-out thread (fanout.py), so neither slow
clients nor open pages hold threads. Every worker process runs its own event listener (started in the worker
after the fork, never in the master), so `workers > 1` multiplies broker subscriptions: prefer one worker per
replica. werkzeug's dev server keeps a thread per connection and per websocket (through flask-sock).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask

from .server import Limits
from .worker import LIMITS_KEY, REQUESTS_KEY

log = logging.getLogger(__name__)

DEFAULT_THREADS = 64


@dataclass(frozen=True)
class ServerOptions:
    """How to serve: which server, where, how many worker processes and threads."""

    host: str = "127.0.0.1"
    port: int = 5000
    server: str = "gunicorn"  # or "werkzeug"
    workers: int = 1
    threads: int = DEFAULT_THREADS
    log_level: str = "info"

    @property
    def display_url(self) -> str:
        """The URL to print."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"


GIL_SWITCH_INTERVAL = 0.001  # seconds


def tune_interpreter() -> None:
    """Settings for a process where one thread ingests events flat out while others answer requests.

    - A request needs the GIL several times; with CPython's default 5 ms switch interval a saturated event thread
      added 40 ms to a 0.6 ms request (bench/README.md). 1 ms keeps requests near their own cost.
    - Everything imported so far is moved out of the garbage collector's way (gc.freeze), so a full collection
      walks the retained tasks only, not the ~60 000 objects of the libraries.
    """
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    gc.collect()
    gc.freeze()


def serve(app: Flask, options: ServerOptions, on_ready: Callable[[str], None]) -> None:
    """Serve until interrupted; `on_ready(url)` is called once the socket listens. OSError if it cannot bind."""
    if options.server == "werkzeug":
        _serve_werkzeug(app, options, on_ready)
    else:
        _serve_gunicorn(app, options, on_ready)


def _serve_werkzeug(app: Flask, options: ServerOptions, on_ready: Callable[[str], None]) -> None:
    from werkzeug.serving import make_server

    from ..web.context import services

    server = make_server(options.host, options.port, app, threaded=True)
    tune_interpreter()
    services(app).ensure_started()
    on_ready(ServerOptions(options.host, server.server_port).display_url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def gunicorn_settings(options: ServerOptions) -> dict[str, Any]:
    """gunicorn's settings for `options` (the hooks aside)."""
    return {
        "bind": [f"[{options.host}]:{options.port}" if ":" in options.host else f"{options.host}:{options.port}"],
        "workers": options.workers,
        "worker_class": "dashboard.serving.worker.DashboardWorker",
        "graceful_timeout": 3,
        "timeout": 60,
        # Our worker reads X-Forwarded-* never; the app believes them only from `trusted_proxies` (ProxyFix).
        "forwarded_allow_ips": "",
        "secure_scheme_headers": {},
        "loglevel": options.log_level,
        "accesslog": None,
        "errorlog": "-",
        "control_socket_disable": True,  # gunicorn 27 would share one control socket path between instances
        "proc_name": "dispatch-dashboard",
    }


def _serve_gunicorn(app: Flask, options: ServerOptions, on_ready: Callable[[str], None]) -> None:
    from gunicorn.app.base import BaseApplication

    from ..web.context import services

    server_settings = services(app).config.server
    app.config[LIMITS_KEY] = Limits(
        threads=options.threads,
        request_timeout=server_settings.request_timeout,
        max_websockets=server_settings.max_websockets,
        max_websockets_per_client=server_settings.max_websockets_per_client,
    )
    app.config[REQUESTS_KEY] = services(app).priority

    def when_ready(server: Any) -> None:
        port = options.port
        listeners = getattr(server, "LISTENERS", None) or []
        with contextlib.suppress(OSError, IndexError, ValueError, AttributeError):
            port = int(listeners[0].sock.getsockname()[1])
        on_ready(ServerOptions(options.host, port).display_url)

    def post_worker_init(worker: Any) -> None:
        # In the worker process, after the fork: this process's one event listener.
        tune_interpreter()
        services(app).ensure_started()

    def worker_exit(server: Any, worker: Any) -> None:
        # gunicorn ends a worker by raising SystemExit up through the caller's stack. Our caller (the CLI, the
        # demo) owns child processes and temporary directories whose cleanup must run only in the parent: end
        # the worker here, with the same status.
        exc = sys.exc_info()[1]
        code = exc.code if isinstance(exc, SystemExit) else 0
        logging.shutdown()
        os._exit(code if isinstance(code, int) else 1)

    settings = {**gunicorn_settings(options), "when_ready": when_ready, "post_worker_init": post_worker_init,
                "worker_exit": worker_exit}

    class _Application(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in settings.items():
                if key in self.cfg.settings:
                    self.cfg.set(key, value)

        def load(self) -> Flask:
            return app

    _Application().run()
