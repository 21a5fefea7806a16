"""gunicorn worker class running the dashboard's own serving loop (server.py) in each worker process.

gunicorn keeps doing what it does well: binding, forking workers, signals, restarting a dead worker, graceful
stops. Each worker serves its inherited listening sockets with one asyncio loop, a thread pool for the app and
one fan-out thread for every websocket, so no client can hold a thread.
"""

from __future__ import annotations

import os
import signal
import socket
from typing import Any

from gunicorn.workers.base import Worker

from .server import Limits, Server

LIMITS_KEY = "dashboard_limits"  # app.config key the CLI sets: this process's Limits
REQUESTS_KEY = "dashboard_requests"  # app.config key the CLI sets: the counter the event thread yields to


class DashboardWorker(Worker):  # type: ignore[misc]
    """One serving process: gunicorn's master forks it; it serves until told to stop."""

    server: Server | None = None

    def init_signals(self) -> None:
        """gunicorn's handlers, but Ctrl-C is the master's to handle: the terminal sends SIGINT to the whole
        group, and a worker that left at once raced the master, which spawned a replacement while stopping
        (tracebacks, "Worker was sent SIGKILL"). The master then tells the worker to quit (SIGQUIT)."""
        super().init_signals()
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def handle_quit(self, sig: int, frame: Any) -> None:
        """SIGINT / SIGQUIT (Ctrl-C): stop the loop cleanly. gunicorn's own handler raises SystemExit wherever the
        signal lands, which inside the loop is an unhandled-exception traceback in some connection's callback."""
        self.alive = False
        self.cfg.worker_int(self)
        if self.server is not None:
            self.server.stop()

    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGTERM: a graceful stop, at once rather than at the next tick."""
        self.alive = False
        if self.server is not None:
            self.server.stop()

    def run(self) -> None:
        limits: Limits = self.wsgi.config.get(LIMITS_KEY) or Limits()
        server = self.server = Server(self.wsgi, limits, multiprocess=self.cfg.workers > 1,
                                      requests=self.wsgi.config.get(REQUESTS_KEY))
        parent = self.ppid

        def tick() -> bool:
            self.notify()  # gunicorn's liveness file: the master restarts a worker that stops ticking
            return bool(self.alive) and os.getppid() == parent

        server.run([_raw_socket(listener) for listener in self.sockets], on_tick=tick)


def _raw_socket(listener: Any) -> socket.socket:
    raw = getattr(listener, "sock", listener)
    assert isinstance(raw, socket.socket)
    return raw
