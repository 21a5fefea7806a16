"""A foreground `celery -A worker_stub worker` child: the demo's and the tests' worker."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from celery import Celery

from .base import POLL_INTERVAL, PROBE_ERRORS, ManagedProcess, ProcessError, kill_group, log_tail, signal_and_wait

log = logging.getLogger(__name__)

STUB_WORKER_APP = "worker_stub"
DEFAULT_WORKER_QUEUES: tuple[str, ...] = ("stt", "llm", "default")
READY_LINE_GRACE = 3.0  # after the log says "ready.", how long ping may stay silent (remote control disabled)


def _probe_app(broker_url: str) -> Any:
    """A throwaway send-only Celery app whose broker calls fail fast instead of retrying for minutes."""
    app = Celery("dispatch-probe", broker=broker_url, set_as_current=False)
    app.conf.update(
        broker_connection_timeout=2,
        broker_connection_retry=False,
        broker_connection_retry_on_startup=False,
        broker_transport_options={"max_retries": 0, "socket_connect_timeout": 2, "socket_timeout": 2},
    )
    return app


class CeleryWorker(ManagedProcess):
    """A `celery -A worker_stub worker` child with its own hostname, queues and routes, logging to a file."""

    def __init__(
        self,
        broker_url: str,
        *,
        backend_url: str | None = None,
        name: str = "stub",
        queues: Sequence[str] = DEFAULT_WORKER_QUEUES,
        routes: Mapping[str, str] | str | None = None,
        app: str = STUB_WORKER_APP,
        pool: str = "threads",
        concurrency: int = 2,
        mingle: bool = False,
        gossip: bool = False,
        events: bool = True,
        loglevel: str = "INFO",
        log_path: str | os.PathLike[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        pythonpath: Sequence[str | os.PathLike[str]] = (),
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        if not queues:
            raise ValueError("a worker needs at least one queue")
        self.broker_url = broker_url
        self.backend_url = backend_url
        self.name = name
        self.queues = tuple(queues)
        self.routes = routes
        self.app = app
        self.pool = pool
        self.concurrency = concurrency
        self.mingle = mingle
        self.gossip = gossip
        self.events = events
        self.loglevel = loglevel
        self.cwd = Path(cwd) if cwd is not None else None
        self.pythonpath = tuple(str(p) for p in pythonpath)
        self.base_env = dict(env) if env is not None else None
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._log_path = Path(log_path) if log_path is not None else None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def hostname(self) -> str:
        """The node name the worker answers to: `name@<host>`, as Celery expands `%h`."""
        return f"{self.name}@{socket.gethostname()}"

    @property
    def log_path(self) -> Path:
        """The file the worker's stdout and stderr go to."""
        if self._log_path is None:
            self._log_path = Path(tempfile.mkdtemp(prefix="dispatch-worker-")) / f"{self.name}.log"
        return self._log_path

    def command(self) -> list[str]:
        """The argv this worker is started with."""
        argv = [
            sys.executable, "-m", "celery", "-A", self.app, "worker",
            "-Q", ",".join(self.queues),
            "--hostname", f"{self.name}@%h",
            "--loglevel", self.loglevel,
            "--pool", self.pool,
            "-c", str(self.concurrency),
        ]  # fmt: skip
        if self.events:
            argv.append("-E")
        if not self.mingle:
            argv.append("--without-mingle")
        if not self.gossip:
            argv.append("--without-gossip")
        argv.extend(self.extra_args)
        return argv

    def environment(self) -> dict[str, str]:
        """The child's environment: broker, backend and routes set here, never inherited by accident."""
        environ = dict(os.environ if self.base_env is None else self.base_env)
        environ["CELERY_BROKER_URL"] = self.broker_url
        if self.backend_url:
            environ["CELERY_RESULT_BACKEND"] = self.backend_url
        else:
            environ.pop("CELERY_RESULT_BACKEND", None)
        if self.routes is None:
            environ.pop("WORKER_STUB_ROUTES", None)
        elif isinstance(self.routes, str):
            environ["WORKER_STUB_ROUTES"] = self.routes
        else:
            environ["WORKER_STUB_ROUTES"] = json.dumps(dict(self.routes))
        if self.pythonpath:
            existing = environ.get("PYTHONPATH", "")
            environ["PYTHONPATH"] = os.pathsep.join([*self.pythonpath, *([existing] if existing else [])])
        environ["PYTHONUNBUFFERED"] = "1"  # the log tail in an error must be current
        return environ

    def start(self) -> Self:
        """Start the worker and block until it answers ping, or raise ProcessError with its log tail."""
        if self.running:
            return self
        log_path = self.log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = self.command()
        started = time.monotonic()
        proc = self._spawn(argv, log_path, cwd=self.cwd, env=self.environment(), header=True)
        self._ready_or_stopped(started)
        log.info(
            "celery worker %s pid %d ready in %.2f s", self.hostname, proc.pid, time.monotonic() - started
        )
        return self

    def _wait_ready(self, started: float) -> None:
        """Ping the worker by name until it answers; accept the log's "ready." only if ping stays silent."""
        proc = self._proc
        assert proc is not None
        deadline = started + self.startup_timeout
        ready_line_seen_at: float | None = None
        app = _probe_app(self.broker_url)
        try:
            while True:
                code = proc.poll()
                if code is not None:
                    raise ProcessError(
                        f"celery worker {self.hostname} exited with code {code} before it was ready\n"
                        f"--- {self.log_path} ---\n{log_tail(self.log_path)}"
                    )
                remaining = deadline - time.monotonic()
                if self._answers_ping(app, timeout=min(1.0, max(0.1, remaining))):
                    return
                now = time.monotonic()
                if ready_line_seen_at is None and self._log_says_ready():
                    ready_line_seen_at = now
                if ready_line_seen_at is not None and now - ready_line_seen_at >= READY_LINE_GRACE:
                    log.warning("worker %s logged ready. but never answered ping; accepted", self.hostname)
                    return
                if now >= deadline:
                    raise ProcessError(
                        f"celery worker {self.hostname} (pid {proc.pid}) did not answer ping within "
                        f"{self.startup_timeout:.1f} s\n--- {self.log_path} ---\n{log_tail(self.log_path)}"
                    )
                time.sleep(POLL_INTERVAL)
        finally:
            app.close()

    def _answers_ping(self, app: Any, timeout: float) -> bool:
        """One bounded control ping to this worker alone."""
        try:
            replies: list[dict[str, Any]] | None = app.control.ping(
                destination=[self.hostname], timeout=timeout, limit=1
            )
        except PROBE_ERRORS as exc:
            log.debug("ping %s failed: %s", self.hostname, exc)
            return False
        return any(self.hostname in reply for reply in replies or [])

    def _log_says_ready(self) -> bool:
        """Whether the worker has logged `<hostname> ready.`."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
        return f"{self.hostname} ready." in text

    def stop(self) -> None:
        """Warm shutdown by SIGTERM, wait, then SIGKILL the whole group."""
        self._stop_process()

    def _stop_process(self) -> None:
        """Stop and reap the worker."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if signal_and_wait(proc, signal.SIGTERM, self.stop_timeout, group=False):
            kill_group(proc.pid)  # prefork children outliving their parent, if any
            return
        log.warning(
            "worker %s (pid %d) ignored SIGTERM for %.1fs", self.hostname, proc.pid, self.stop_timeout
        )
        if not signal_and_wait(proc, signal.SIGKILL, self.stop_timeout, group=True):
            raise ProcessError(f"worker {self.hostname} (pid {proc.pid}) survived SIGKILL")

    def kill(self) -> None:
        """SIGKILL the worker and its children at once (a crash) and reap it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if not signal_and_wait(proc, signal.SIGKILL, self.stop_timeout, group=True):
            raise ProcessError(f"worker {self.hostname} (pid {proc.pid}) survived SIGKILL")
        log.info("celery worker %s pid %d killed", self.hostname, proc.pid)

    def __repr__(self) -> str:
        return f"CeleryWorker(hostname={self.hostname!r}, queues={self.queues!r}, pid={self.pid})"
