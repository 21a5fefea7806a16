"""A real `dispatch-dashboard serve` subprocess on a free port, for browser tests; and its TOML config."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest

from dashboard.services.processes import free_port, kill_group, log_tail

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = REPO_ROOT / "examples" / "dispatch.toml"
HOST = "127.0.0.1"
STARTUP_TIMEOUT = 15.0  # seconds until GET /healthz must answer
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL (the CLI gives gunicorn a 3 s graceful timeout)
PROBE_TIMEOUT = 1.0
POLL_INTERVAL = 0.05
PORT_ATTEMPTS = 3  # free_port() can race with another process taking the port before the server binds it
# Environment the dashboard reads that would override the config file written for the test.
SCRUBBED_ENV = (
    "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "DASHBOARD_CONFIG", "DASHBOARD_CLIENT_APP", "DASHBOARD_AUDIT_PATH",
    "DASHBOARD_SECRET_KEY", "DASHBOARD_HISTORY_URL",
)
# Short inspection and alert intervals, so monitoring changes show within a test's expect() timeout.
TEST_MONITOR = {"inspect_interval": 0.5, "alert_grace": 1.0}

# Proxy settings in the environment must not capture the readiness probe to 127.0.0.1.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class LiveServerError(Exception):
    """The dashboard did not start or answer /healthz in time; the message carries its log tail."""


def dashboard_config(
    broker_url: str,
    backend_url: str | None,
    *,
    base: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """examples/dispatch.toml (or `base`) pointed at the test Redis, with low [monitor] intervals.

    Top-level keys in `overrides` replace the base's (e.g. `routes={...}`, `tasks={...}`).
    """
    config = dict(base) if base is not None else tomllib.loads(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    config["broker_url"] = broker_url
    if backend_url is None:
        config.pop("result_backend", None)
    else:
        config["result_backend"] = backend_url
    config["monitor"] = {**config.get("monitor", {}), **TEST_MONITOR}
    config.update(overrides)
    return config


def toml_text(config: Mapping[str, Any]) -> str:
    """TOML for a decoded config: scalars first, then one table per mapping (nested mappings as sub-tables)."""
    lines: list[str] = []
    _emit_table(config, (), lines)
    text = "\n".join(lines) + "\n"
    if tomllib.loads(text) != config:  # a cheap guard against a writer bug silently changing the config
        raise ValueError(f"toml_text() does not round-trip this config:\n{text}")
    return text


def _emit_table(table: Mapping[str, Any], path: tuple[str, ...], lines: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not _is_subtable(v)}
    subtables = {k: v for k, v in table.items() if _is_subtable(v)}
    if path and (scalars or not subtables):
        lines.append("[" + ".".join(_toml_key(part) for part in path) + "]")
    lines.extend(f"{_toml_key(key)} = {_toml_value(value)}" for key, value in scalars.items())
    for key, value in subtables.items():
        _emit_table(value, (*path, key), lines)


def _is_subtable(value: Any) -> bool:
    """Every mapping becomes its own [table]; TOML reads that back as the same nested mapping."""
    return isinstance(value, Mapping)


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() and key.isascii() else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML numbers here must be finite, not {value!r}")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML: {value!r}")


def dashboard_command() -> list[str]:
    """The `dispatch-dashboard` console script of this interpreter's environment, else `python -m dashboard.cli`."""
    script = Path(sys.executable).parent / "dispatch-dashboard"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("dispatch-dashboard")
    if found:
        return [found]
    return [sys.executable, "-m", "dashboard.cli"]


@dataclass
class LiveServer:
    """A running `dispatch-dashboard serve` child: where it listens, its config and its log."""

    url: str  # http://127.0.0.1:<port>, no trailing slash
    port: int
    config_path: Path
    log_path: Path
    config: Mapping[str, Any]
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs, else None."""
        return self.process.pid if self.process.poll() is None else None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's stdout/stderr."""
        return log_tail(self.log_path, lines)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM (gunicorn's master stops its workers), wait up to `timeout`, then SIGKILL the whole group."""
        proc = self.process
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                kill_group(proc.pid)
                proc.wait(timeout=timeout)
        kill_group(proc.pid)  # a worker process the master left behind would become an unreaped zombie


def start_live_server(
    config: Mapping[str, Any] | str,
    directory: Path,
    *,
    name: str = "dashboard",
    env: Mapping[str, str] | None = None,
    startup_timeout: float = STARTUP_TIMEOUT,
) -> LiveServer:
    """Write `config` (a mapping or TOML text) to `directory`, serve it, and wait for /healthz."""
    directory.mkdir(parents=True, exist_ok=True)
    text = config if isinstance(config, str) else toml_text(config)
    decoded = tomllib.loads(text)
    config_path = directory / f"{name}.toml"
    config_path.write_text(text, encoding="utf-8")
    log_path = directory / f"{name}.log"
    child_env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    child_env["PYTHONUNBUFFERED"] = "1"  # the log shows the "serving on" line and errors as they happen
    child_env["DASHBOARD_AUDIT_PATH"] = str(directory / f"{name}-audit.sqlite3")  # never the user's own state
    child_env["DASHBOARD_HISTORY_URL"] = str(directory / f"{name}-history.sqlite3")
    child_env.update(env or {})
    if child_env["DASHBOARD_HISTORY_URL"].startswith("postgres") and "DASHBOARD_AUDIT_PATH" not in (env or {}):
        del child_env["DASHBOARD_AUDIT_PATH"]  # history in PostgreSQL: the audit log goes there too (the rule)
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = free_port(HOST)
        argv = [*dashboard_command(), "serve", "--config", str(config_path), "--host", HOST, "--port", str(port)]
        with log_path.open("ab") as log_file:
            log_file.write(f"--- attempt {attempt}: {' '.join(argv)}\n".encode())
            log_file.flush()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env=child_env,
                start_new_session=True,  # a Ctrl-C aimed at pytest does not kill it mid-test
            )
        server = LiveServer(f"http://{HOST}:{port}", port, config_path, log_path, decoded, proc)
        try:
            _wait_healthy(server, startup_timeout)
        except _PortTaken:
            continue
        except BaseException:
            server.stop()
            raise
        return server
    raise LiveServerError(
        f"dispatch-dashboard could not bind a free port in {PORT_ATTEMPTS} attempts\n"
        f"--- {log_path} ---\n{log_tail(log_path)}"
    )


class _PortTaken(Exception):
    """The port free_port() chose was taken before the server could bind it."""


def _wait_healthy(server: LiveServer, timeout: float) -> None:
    """Poll GET /healthz until it answers {"status": "ok"}; fail early if the child exits."""
    deadline = time.monotonic() + timeout
    health_url = f"{server.url}/healthz"
    while True:
        code = server.process.poll()
        if code is not None:
            tail = server.log_tail()
            if "cannot listen" in tail:
                raise _PortTaken()
            raise LiveServerError(
                f"dispatch-dashboard exited with code {code} before answering {health_url}\n"
                f"--- {server.log_path} ---\n{tail}"
            )
        if _answers_health(health_url, min(PROBE_TIMEOUT, max(0.05, deadline - time.monotonic()))):
            return
        if time.monotonic() >= deadline:
            raise LiveServerError(
                f"dispatch-dashboard (pid {server.process.pid}) did not answer {health_url} within "
                f"{timeout:.1f} s\n--- {server.log_path} ---\n{server.log_tail()}"
            )
        time.sleep(POLL_INTERVAL)


def _answers_health(url: str, timeout: float) -> bool:
    try:
        with _NO_PROXY_OPENER.open(url, timeout=timeout) as response:
            body = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return isinstance(body, dict) and body.get("status") == "ok"


ConfigFactory = Callable[..., dict[str, Any]]  # the `dashboard_config_for` fixture


class StartDashboard(Protocol):
    """The `start_dashboard` fixture: `start_dashboard(config, name=None, env=None) -> LiveServer`."""

    def __call__(
        self, config: Mapping[str, Any] | str, *, name: str | None = ..., env: Mapping[str, str] | None = ...
    ) -> LiveServer: ...


class DashboardStarter:
    """Starts dashboard servers for one test module and stops them all at its end."""

    _numbers = itertools.count(1)

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.servers: list[LiveServer] = []

    def __call__(
        self, config: Mapping[str, Any] | str, *, name: str | None = None, env: Mapping[str, str] | None = None
    ) -> LiveServer:
        """Start one more server (its config and log in this starter's directory); fail the test if it can't."""
        try:
            server = start_live_server(
                config, self.directory, name=name or f"dashboard-{next(self._numbers)}", env=env
            )
        except LiveServerError as exc:
            pytest.fail(str(exc), pytrace=False)
        self.servers.append(server)
        return server

    def stop_all(self) -> None:
        """Stop every server this starter started, newest first."""
        for server in reversed(self.servers):
            server.stop()
