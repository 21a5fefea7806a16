"""gunicorn worker class running the dashboard's own serving loop (server.py) in each worker process.

gunicorn keeps doing what it does well: binding, forking workers, signals, restarting a dead worker, graceful
stops. Each worker serves its inherited listening sockets with one asyncio loop, a thread pool for the app and
one fan-out thread for every websocket, so no client can hold a thread.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from gunicorn.workers.base import Worker

from .server import Limits, Server

LIMITS_KEY = "dashboard_limits"  # app.config key the CLI sets: this process's Limits


class DashboardWorker(Worker):  # type: ignore[misc]
    """One serving process: gunicorn's master forks it; it serves until told to stop."""

    def run(self) -> None:
        limits: Limits = self.wsgi.config.get(LIMITS_KEY) or Limits()
        server = Server(self.wsgi, limits, multiprocess=self.cfg.workers > 1)
        parent = self.ppid

        def tick() -> bool:
            self.notify()  # gunicorn's liveness file: the master restarts a worker that stops ticking
            return bool(self.alive) and os.getppid() == parent

        server.run([_raw_socket(listener) for listener in self.sockets], on_tick=tick)


def _raw_socket(listener: Any) -> socket.socket:
    raw = getattr(listener, "sock", listener)
    assert isinstance(raw, socket.socket)
    return raw
