"""A RabbitMQ server as a foreground child process, for the tests and the demo, like RedisServer.

Everything the node reads or writes is under its own directory and on its own loopback ports, so it never meets
a system RabbitMQ on the same machine: its node name, AMQP port, distribution port, config file (Debian's
/etc/rabbitmq files are not read), plugins file, Mnesia and log directories, Erlang cookie (HOME) and its own
epmd. That epmd is started here in the foreground on a free port, and the node is told not to start one itself
(`-start_epmd false`): a daemonized epmd would outlive us, and `rabbitmqctl stop` leaves epmd running.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Final, Self

from kombu.connection import Connection
from kombu.exceptions import KombuError

from dashboard.services.processes import (
    POLL_INTERVAL,
    ManagedProcess,
    ProcessError,
    free_port,
    kill_group,
    log_tail,
    signal_and_wait,
    terminate,
)

log = logging.getLogger(__name__)

HOST: Final = "127.0.0.1"
# Debian's /usr/sbin/rabbitmq-server is a wrapper that re-runs the server as the rabbitmq user with `su` (and a
# reset environment); the script it wraps runs the node in the foreground as whoever starts it.
SERVER_SCRIPTS: Final[tuple[str, ...]] = (
    "/usr/lib/rabbitmq/bin/rabbitmq-server",
    "/usr/lib/rabbitmq/sbin/rabbitmq-server",
)
DEBIAN_WRAPPER: Final = "/usr/sbin/rabbitmq-server"
EPMD_GLOB: Final = "/usr/lib/erlang/erts-*/bin/epmd"
INHERITED_PREFIXES: Final[tuple[str, ...]] = ("RABBITMQ_", "ERL_")  # never leak the caller's node settings
PROBE_TIMEOUT: Final = 1.0
_KombuConnection: Any = Connection  # kombu has no type hints


def find_rabbitmq_server() -> str:
    """The script that runs a RabbitMQ node in the foreground as the current user, else raise ProcessError."""
    for candidate in SERVER_SCRIPTS:
        if os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which("rabbitmq-server") or shutil.which("rabbitmq-server", path="/usr/sbin:/usr/local/sbin")
    if on_path and os.path.realpath(on_path) != DEBIAN_WRAPPER:  # a tarball's or Homebrew's sbin/rabbitmq-server
        return on_path
    raise ProcessError(
        "no rabbitmq-server found: install Debian's package with `apt-get install rabbitmq-server` "
        f"(it provides {SERVER_SCRIPTS[0]})"
    )


def find_epmd() -> str:
    """The Erlang port mapper daemon binary, else raise ProcessError."""
    found = shutil.which("epmd") or next(iter(sorted(glob.glob(EPMD_GLOB), reverse=True)), None)
    if not found:
        raise ProcessError("no epmd found (it comes with erlang-base, a dependency of rabbitmq-server)")
    return found


def _epmd_answers(port: int, timeout: float) -> bool:
    """One NAMES_REQ (length 1, b"n"): epmd answers with its port as 4 bytes (a bare connect makes it log)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"\x00\x01n")
            return len(sock.recv(4)) == 4
    except OSError:
        return False


class RabbitMQServer(ManagedProcess):
    """A RabbitMQ node in the foreground on 127.0.0.1, with its own epmd, directory and ports; guest/guest."""

    def __init__(
        self,
        port: int | None = None,
        *,
        dist_port: int | None = None,
        epmd_port: int | None = None,
        management: bool = False,
        management_port: int | None = None,
        binary: str | None = None,
        directory: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout: float = 60.0,
        stop_timeout: float = 15.0,
    ) -> None:
        self.host = HOST
        self.port = port if port is not None else free_port(HOST)
        self.dist_port = dist_port if dist_port is not None else free_port(HOST)
        self.epmd_port = epmd_port if epmd_port is not None else free_port(HOST)
        self.management = management or management_port is not None
        self.management_port = (management_port or free_port(HOST)) if self.management else None
        self.nodename = f"rabbit-test-{self.port}@localhost"
        self.binary = binary
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._directory = Path(directory) if directory is not None else None
        self._owns_directory = directory is None
        self._log_path = Path(log_path) if log_path is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None
        self.version: str | None = None  # the server's "version" property, once it has answered
        self.started_in: float | None = None  # seconds the last start() took

    @property
    def epmd_pid(self) -> int | None:
        """Our own epmd's pid while it runs, else None."""
        epmd = self._epmd
        return epmd.pid if epmd is not None and epmd.poll() is None else None

    @property
    def directory(self) -> Path | None:
        """Where config, Mnesia, logs and the cookie live, once started."""
        return self._directory

    @property
    def log_path(self) -> Path | None:
        """The node's stdout/stderr (its log goes to the console), inside its directory unless given."""
        if self._log_path is not None:
            return self._log_path
        return self._directory / "rabbitmq.log" if self._directory is not None else None

    def url(self, vhost: str = "/") -> str:
        """The amqp:// URL of `vhost` as guest (allowed on loopback by default)."""
        return f"amqp://guest:guest@{self.host}:{self.port}/{vhost}"

    @property
    def management_url(self) -> str | None:
        """The management HTTP API's base URL when the plugin is enabled."""
        return f"http://{self.host}:{self.management_port}" if self.management_port is not None else None

    def _config_text(self) -> str:
        lines = [
            f"listeners.tcp.local = {self.host}:{self.port}",
            "log.console = true",
            "log.console.level = info",
            "log.file = false",
        ]
        if self.management_port is not None:
            lines += [
                f"management.tcp.ip = {self.host}",
                f"management.tcp.port = {self.management_port}",
            ]
        return "\n".join(lines) + "\n"

    def environment(self) -> dict[str, str]:
        """The node's environment: every path under its directory, every port its own."""
        directory = self._directory
        if directory is None:
            raise ProcessError("RabbitMQServer has no directory yet; call start()")
        environ = {k: v for k, v in os.environ.items() if not k.startswith(INHERITED_PREFIXES)}
        environ.update(
            HOME=str(directory),  # the Erlang cookie is created here, not in the system node's home
            RABBITMQ_CONF_ENV_FILE=str(directory / "rabbitmq-env.conf"),  # empty: not /etc/rabbitmq's
            RABBITMQ_CONFIG_FILE=str(directory / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(directory / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(directory / "enabled_plugins"),
            RABBITMQ_PLUGINS_EXPAND_DIR=str(directory / "plugins-expand"),
            RABBITMQ_MNESIA_BASE=str(directory / "mnesia"),
            RABBITMQ_LOG_BASE=str(directory / "log"),
            RABBITMQ_LOGS="-",  # the console, i.e. our log file
            RABBITMQ_PID_FILE=str(directory / "rabbitmq.pid"),
            RABBITMQ_FEATURE_FLAGS_FILE=str(directory / "feature_flags"),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS=self.host,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS=self.host,
            ERL_CRASH_DUMP=str(directory / "erl_crash.dump"),
            # Distribution on loopback only, and no epmd of the node's own: ours is already listening.
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false",
        )
        return environ

    def start(self) -> Self:
        """Start epmd and the node, and block until AMQP answers as this node, else raise ProcessError."""
        if self.running:
            return self
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="dispatch-rabbitmq-"))
        directory = self._directory
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "rabbitmq-env.conf").write_text("", encoding="utf-8")
        (directory / "rabbitmq.conf").write_text(self._config_text(), encoding="utf-8")
        plugins = "[rabbitmq_management]." if self.management_port is not None else "[]."
        (directory / "enabled_plugins").write_text(plugins + "\n", encoding="utf-8")
        log_path = self.log_path
        assert log_path is not None
        log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = [self.binary or find_rabbitmq_server()]
        started = time.monotonic()
        deadline = started + self.startup_timeout
        try:
            self._start_epmd(log_path, deadline)
            with log_path.open("ab") as log_file:
                log_file.write(f"--- {argv[0]} as {self.nodename} on {self.host}:{self.port}\n".encode())
                log_file.flush()
                try:
                    self._proc = subprocess.Popen(
                        argv,
                        cwd=directory,
                        env=self.environment(),
                        stdin=subprocess.DEVNULL,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own group: stop() reaches beam's helper processes too
                    )
                except OSError as exc:
                    raise ProcessError(f"cannot run {argv[0]}: {exc}") from exc
            self._wait_ready(deadline)
        except BaseException:
            self._stop_processes()
            raise
        self.started_in = time.monotonic() - started
        assert self._proc is not None
        log.info("rabbitmq %s pid %d ready on %s in %.2f s", self.nodename, self._proc.pid, self.port, self.started_in)
        return self

    def _start_epmd(self, log_path: Path, deadline: float) -> None:
        """Our own epmd in the foreground on loopback, ready when its port accepts connections."""
        if self.epmd_pid is not None:
            return
        argv = [find_epmd(), "-port", str(self.epmd_port), "-address", self.host]
        with log_path.open("ab") as log_file:
            try:
                self._epmd = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise ProcessError(f"cannot run {argv[0]}: {exc}") from exc
        while not _epmd_answers(self.epmd_port, timeout=0.5):
            code = self._epmd.poll()
            if code is not None:
                raise ProcessError(f"epmd exited with code {code} (port {self.epmd_port} taken?)\n"
                                   f"--- {log_path} ---\n{log_tail(log_path)}")
            if time.monotonic() >= deadline:
                raise ProcessError(f"epmd did not listen on port {self.epmd_port} in time")
            time.sleep(POLL_INTERVAL)

    def _wait_ready(self, deadline: float) -> None:
        """Connect over AMQP until the server names this node as its cluster (not another on the port)."""
        proc = self._proc
        assert proc is not None
        while True:
            code = proc.poll()
            if code is not None:
                raise ProcessError(
                    f"rabbitmq-server exited with code {code} before answering on port {self.port}\n"
                    f"--- {self.log_path} ---\n{log_tail(self.log_path)}"
                )
            if self._answers_as_self() and self._management_answers():
                return
            if time.monotonic() >= deadline:
                raise ProcessError(
                    f"rabbitmq-server pid {proc.pid} did not answer on port {self.port} within "
                    f"{self.startup_timeout:.1f} s\n--- {self.log_path} ---\n{log_tail(self.log_path)}"
                )
            time.sleep(POLL_INTERVAL * 4)  # the node takes seconds to boot: no need to probe faster

    def _answers_as_self(self) -> bool:
        """One bounded AMQP handshake; True when the server's cluster_name is our node name."""
        connection = _KombuConnection(
            self.url(), transport="pyamqp", connect_timeout=PROBE_TIMEOUT,
            transport_options={"read_timeout": PROBE_TIMEOUT, "write_timeout": PROBE_TIMEOUT},
        )
        errors = (KombuError, OSError, *connection.connection_errors, *connection.channel_errors)
        try:
            connection.ensure_connection(max_retries=0)
            properties: dict[str, Any] = connection.connection.server_properties or {}
            connection.release()
        except errors:
            with contextlib.suppress(*errors):
                connection.collect()
            return False
        # The default cluster name is the node name with the machine's hostname: rabbit-test-<port>@<host>.
        name = str(properties.get("cluster_name", ""))
        self.version = str(properties.get("version", "")) or None
        return name.partition("@")[0] == self.nodename.partition("@")[0]

    def _management_answers(self) -> bool:
        if self.management_port is None:
            return True
        try:
            with socket.create_connection((self.host, self.management_port), timeout=PROBE_TIMEOUT) as sock:
                sock.settimeout(PROBE_TIMEOUT)
                sock.sendall(b"GET /api/overview HTTP/1.0\r\nHost: localhost\r\n\r\n")
                return sock.recv(16).startswith(b"HTTP/1.")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the node (SIGTERM, wait, SIGKILL), then our epmd; remove the directory if this object made it."""
        self._stop_processes()
        if self._owns_directory and self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    def _stop_processes(self) -> None:
        """Stop the node and its process group, then epmd, by pid; keep the directory for a restart."""
        proc, self._proc = self._proc, None
        try:
            if proc is not None:
                # The foreground script traps SIGTERM and stops the node properly, waiting for it to exit.
                terminate(proc, f"rabbitmq-server {self.nodename}", self.stop_timeout, group=False)
                kill_group(proc.pid)  # erl_child_setup, inet_gethost: whatever outlived the node
        finally:
            epmd, self._epmd = self._epmd, None
            if epmd is not None:
                terminate(epmd, f"epmd on port {self.epmd_port}", self.stop_timeout, group=False)

    def kill(self) -> None:
        """SIGKILL the node's whole group at once (a crash) and reap it; epmd keeps running for restart()."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if not signal_and_wait(proc, signal.SIGKILL, self.stop_timeout, group=True):
            raise ProcessError(f"rabbitmq-server pid {proc.pid} survived SIGKILL for {self.stop_timeout:.1f} s")
        kill_group(proc.pid)

    def restart(self) -> Self:
        """Stop (if running) and start again on the same ports, with the same data (durable queues survive)."""
        self._stop_processes()
        return self.start()

    def __repr__(self) -> str:
        return f"RabbitMQServer(node={self.nodename!r}, port={self.port}, pid={self.pid})"

