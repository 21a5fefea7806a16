"""A PostgreSQL server of the tests' own: `initdb` in a temporary directory, `postgres` in the foreground on a free
loopback port, its Unix socket in that directory, never the machine's own cluster (5432).

pytest-postgresql's `postgresql_proc` was the first choice; it runs `pg_ctl` as the current user, and initdb
refuses to run as root ("cannot be run as root"), which is how the tests and CI run here. So, like RedisServer and
RabbitMQServer: as root, initdb and postgres run as the `postgres` user (subprocess's `user=`: no wrapper process
between us and the postmaster, so signals reach it directly) in a directory that user owns.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final, Self

from dashboard.services.processes import (
    POLL_INTERVAL,
    ManagedProcess,
    ProcessError,
    free_port,
    log_tail,
    signal_and_wait,
    terminate,
)

log = logging.getLogger(__name__)

HOST: Final = "127.0.0.1"
SERVER_USER: Final = "postgres"  # the OS user the server runs as when we are root
SUPERUSER: Final = "postgres"  # the database superuser initdb creates
DATABASE: Final = "dashboard"
#: Faster, not safer: a test server's data is thrown away (the benchmark passes durable=True).
FAST_SETTINGS: Final = ("fsync=off", "full_page_writes=off", "synchronous_commit=off")


def find_bindir() -> Path:
    """Where initdb and postgres are: `pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            candidates.append(Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                                  timeout=10, check=True).stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name, reverse=True)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    raise ProcessError("no PostgreSQL server binaries (initdb, postgres) found: install Debian's package with "
                       "`apt-get install postgresql` (scripts/system-deps.sh does it for `make test`)")


class PostgresServer(ManagedProcess):
    """A postgres in the foreground on 127.0.0.1:<port>, its cluster in a directory of its own; trust auth on
    loopback for the superuser `postgres`, and a database `dashboard`. As root, a `directory` given must be
    reachable by the postgres user (pytest's tmp_path is not: leave it out, a fresh one under /tmp is made)."""

    def __init__(
        self,
        port: int | None = None,
        *,
        directory: str | os.PathLike[str] | None = None,
        durable: bool = False,
        settings: Sequence[str] = (),
        startup_timeout: float = 60.0,
        stop_timeout: float = 15.0,
    ) -> None:
        self.host = HOST
        self.port = port if port is not None else free_port(HOST)
        self.durable = durable
        self.settings = tuple(settings)
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._directory = Path(directory) if directory is not None else None
        self._owns_directory = directory is None
        self._proc: subprocess.Popen[bytes] | None = None
        self.started_in: float | None = None

    @property
    def data_dir(self) -> Path:
        if self._directory is None:
            raise ProcessError("PostgresServer has no directory yet; call start()")
        return self._directory / "data"

    @property
    def log_path(self) -> Path | None:
        return self._directory / "postgres.log" if self._directory is not None else None

    def url(self, database: str = DATABASE) -> str:
        """A postgresql:// URL of `database` as the superuser."""
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def _run_as(self) -> dict[str, object]:
        """Popen's arguments that drop root for the server's user (nothing when we are not root)."""
        if os.geteuid() != 0:
            return {}
        entry = pwd.getpwnam(SERVER_USER)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SERVER_USER)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _environment(self) -> dict[str, str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        environ.update(LC_ALL="C.UTF-8", LANG="C.UTF-8", HOME=str(self._directory), TZ="UTC")
        return environ

    def _initdb(self, bindir: Path) -> None:
        assert self._directory is not None and self.log_path is not None
        argv = [str(bindir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust",
                "--encoding=UTF8", "--locale=C.UTF-8", "--no-instructions"]
        if not self.durable:
            argv.append("--no-sync")
        with self.log_path.open("ab") as log_file:
            try:
                done = subprocess.run(argv, cwd=self._directory, env=self._environment(), stdin=subprocess.DEVNULL,
                                      stdout=log_file, stderr=subprocess.STDOUT, timeout=self.startup_timeout,
                                      check=False, **self._run_as())  # type: ignore[call-overload]
            except (OSError, subprocess.SubprocessError) as exc:
                raise ProcessError(f"cannot run {argv[0]}: {exc}") from exc
        if done.returncode != 0:
            raise ProcessError(f"initdb exited with code {done.returncode}\n--- {self.log_path} ---\n"
                               f"{log_tail(self.log_path)}")

    def command(self, bindir: Path) -> list[str]:
        assert self._directory is not None
        settings = [*(() if self.durable else FAST_SETTINGS), "max_connections=200", "log_min_messages=warning",
                    *self.settings]
        argv = [str(bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
                "-c", f"listen_addresses={self.host}", "-c", f"unix_socket_directories={self._directory}"]
        for setting in settings:
            argv += ["-c", setting]
        return argv

    def start(self) -> Self:
        """initdb (first time), start the server, and wait until it answers as itself with the database made."""
        if self.running:
            return self
        bindir = find_bindir()
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="dispatch-postgres-"))
        self._directory.mkdir(parents=True, exist_ok=True)
        self._chown(self._directory)
        started = time.monotonic()
        fresh = not (self.data_dir / "PG_VERSION").exists()
        if fresh:
            self._initdb(bindir)
        assert self.log_path is not None
        with self.log_path.open("ab") as log_file:
            try:
                self._proc = subprocess.Popen(self.command(bindir), cwd=self._directory, env=self._environment(),
                                              stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                              start_new_session=True, **self._run_as())  # type: ignore[call-overload]
            except OSError as exc:
                raise ProcessError(f"cannot run postgres: {exc}") from exc
        self._ready_or_stopped(started)
        if fresh:
            self._execute("postgres", f"CREATE DATABASE {DATABASE}")
        self.started_in = time.monotonic() - started
        log.info("postgres pid %d ready on %s in %.2f s", self._proc.pid, self.port, self.started_in)
        return self

    def _wait_ready(self, started: float) -> None:
        proc = self._proc
        assert proc is not None
        deadline = started + self.startup_timeout
        while True:
            code = proc.poll()
            if code is not None:
                raise ProcessError(f"postgres exited with code {code} before answering on port {self.port}\n"
                                   f"--- {self.log_path} ---\n{log_tail(self.log_path)}")
            if self._answers_as_self():
                return
            if time.monotonic() >= deadline:
                raise ProcessError(f"postgres pid {proc.pid} did not answer on port {self.port} within "
                                   f"{self.startup_timeout:.1f} s\n--- {self.log_path} ---\n{log_tail(self.log_path)}")
            time.sleep(POLL_INTERVAL * 2)

    def _answers_as_self(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=1, autocommit=True) as conn:
                row = conn.execute("SHOW data_directory").fetchone()
        except psycopg.Error:
            return False
        return row is not None and os.path.realpath(str(row[0])) == os.path.realpath(self.data_dir)

    def _execute(self, database: str, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url(database), connect_timeout=5, autocommit=True) as conn:
            conn.execute(sql)

    def stop(self) -> None:
        """Stop the server (fast shutdown: sessions are ended) and remove the directory if this object made it."""
        self._stop_process()
        if self._owns_directory and self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    def _stop_process(self) -> None:
        """Fast shutdown (SIGINT), then SIGTERM/SIGKILL; the cluster stays for a restart."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if not signal_and_wait(proc, signal.SIGINT, self.stop_timeout, group=False):
            terminate(proc, f"postgres on port {self.port}", self.stop_timeout, group=True)

    def restart(self) -> Self:
        """Stop (if running) and start again on the same port with the same data."""
        self._stop_process()
        return self.start()

    def __repr__(self) -> str:
        return f"PostgresServer(port={self.port}, pid={self.pid})"


@contextlib.contextmanager
def durable_server(extra_databases: Sequence[str] = ()) -> Iterator[PostgresServer]:
    """A server for the benchmarks: durable (fsync and synchronous_commit on, as in production), 512 MB of
    shared buffers; its databases `dashboard` and `extra_databases`."""
    with PostgresServer(durable=True, settings=("shared_buffers=512MB", "max_wal_size=4GB")) as server:
        for name in extra_databases:
            server._execute("postgres", f"CREATE DATABASE {name}")
        print(f"PostgreSQL of its own on port {server.port} (started in {server.started_in or 0:.1f} s)", flush=True)
        yield server
