"""Foreground child processes the caller owns (started, made ready, stopped and reaped): the shared parts."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

import redis
from kombu.exceptions import KombuError

from ...exceptions import DashboardError

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 40
POLL_INTERVAL = 0.05  # between readiness probes; short, because a fresh redis-server is up in a few ms

# A probe that meets a broker or a backend which is not there yet (or no longer) fails with one of these.
PROBE_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    KombuError,
    OSError,
)


class ProcessError(DashboardError):
    """A child server could not be found, started or made ready; the message carries its log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on `host` that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port

def log_tail(path: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    """Return the last `lines` lines of a log file, or a note saying why there are none."""
    if path is None:
        return "(no log file)"
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(log {path} unreadable: {exc})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else f"(log {path} is empty)"


def signal_and_wait(proc: subprocess.Popen[bytes], sig: int, timeout: float, group: bool) -> bool:
    """Send `sig` to the child (or its process group) and wait up to `timeout`; True once it has exited."""
    if proc.poll() is not None:
        return True
    try:
        if group:
            os.killpg(proc.pid, sig)  # the child leads its own session, so its pgid is its pid
        else:
            proc.send_signal(sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def terminate(proc: subprocess.Popen[bytes], what: str, timeout: float, group: bool) -> None:
    """SIGTERM, wait up to `timeout`, then SIGKILL and reap, so no zombie is left behind."""
    if signal_and_wait(proc, signal.SIGTERM, timeout, group):
        return
    log.warning("%s (pid %d) ignored SIGTERM for %.1f s; sending SIGKILL", what, proc.pid, timeout)
    if not signal_and_wait(proc, signal.SIGKILL, timeout, group):
        raise ProcessError(f"{what} (pid {proc.pid}) survived SIGKILL for {timeout:.1f} s")


def kill_group(pgid: int) -> None:
    """SIGKILL whatever is left in a process group (a child that leads its own session); none left is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class ManagedProcess:
    """A child process the caller owns: `with X(...) as x:` starts it and stops it, whatever happens."""

    _proc: subprocess.Popen[bytes] | None = None  # the main child, set by start() and cleared by stop()/kill()

    @property
    def pid(self) -> int | None:
        """The main child's pid while it runs, else None."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        """Whether the main child is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:  # pragma: no cover - overridden
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _wait_ready(self, started: float) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _stop_process(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _spawn(self, argv: list[str], log_path: Path, *, cwd: Path | None = None,
               env: Mapping[str, str] | None = None, header: bool = False) -> subprocess.Popen[bytes]:
        """Start the main child in a session of its own (a Ctrl-C meant for the parent does not reach it, and
        kill_group reaches its children), stdout and stderr to `log_path`; ProcessError when it cannot run."""
        with log_path.open("ab") as log_file:
            if header:
                log_file.write(f"--- {' '.join(argv)}\n".encode())
                log_file.flush()
            try:
                self._proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                                              stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as exc:
                raise ProcessError(f"cannot run {argv[0]}: {exc}") from exc
        return self._proc

    def _ready_or_stopped(self, started: float) -> None:
        """Wait until the child is ready; stop and reap it when it never gets there (or the wait is interrupted)."""
        try:
            self._wait_ready(started)
        except BaseException:
            self._stop_process()
            raise

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
