"""Configuration: a TOML file plus environment overrides. The only module that reads the environment."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .exceptions import ConfigError
from .model.alerts import ALERT_KINDS
from .model.auth import AuthSettings, parse_auth
from .model.catalog import (
    MISSING,
    PARAM_NAME_RE,
    PARAM_TYPES,
    Catalog,
    InvalidValue,
    ParamSpec,
    TaskSpec,
    task_name_problem,
)
from .model.notify import DEFAULT_EVENTS, EVENTS, WebhookSpec
from .model.secrets import mask_endpoint
from .model.values import number_in

ENV_CONFIG = "DASHBOARD_CONFIG"
ENV_CLIENT_APP = "DASHBOARD_CLIENT_APP"
ENV_BROKER = "CELERY_BROKER_URL"
ENV_BACKEND = "CELERY_RESULT_BACKEND"
ENV_SECRET = "DASHBOARD_SECRET_KEY"
ENV_AUDIT_PATH = "DASHBOARD_AUDIT_PATH"
ENV_ALLOWED_HOSTS = "DASHBOARD_ALLOWED_HOSTS"
ENV_HISTORY_URL = "DASHBOARD_HISTORY_URL"

_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$")
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
MAX_BODY_BYTES = 1024 * 1024  # a request body is small; anything larger is refused with 413
APP_DIR = "dispatch-dashboard"  # under the XDG state directory: where the dashboard keeps its files
AUDIT_FILE_NAME = "audit.sqlite3"
HISTORY_FILE_NAME = "history.sqlite3"
POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")
HISTORY_KEYS = frozenset({"url", "retention_days", "max_tasks", "flush_interval"})
MAX_TRUSTED_PROXIES = 5
MAX_RETENTION_DAYS = 36_500
AUDIT_KEYS = frozenset({"path", "retention_days"})
ACTIONS_KEYS = frozenset({"bulk_limit"})
SERVER_KEYS = frozenset({"allowed_hosts", "max_websockets", "max_websockets_per_client", "request_timeout"})
ALERTS_KEYS = frozenset({"dashboard_url", "webhooks"})
WEBHOOK_KEYS = frozenset({"name", "url", "url_env", "events", "kinds", "headers", "secret", "secret_env", "timeout",
                          "max_attempts"})
ROUTE_KEYS = frozenset({"queue", "exchange", "exchange_type", "routing_key", "priority"})
TOP_LEVEL_KEYS = frozenset(
    {"broker_url", "result_backend", "task_default_queue", "routes", "tasks", "monitor", "client_app",
     "broker_timeout", "broker_transport_options", "auth", "secret_key", "audit", "trusted_proxies", "server",
     "history", "alerts", "actions"}
)


@dataclass(frozen=True, slots=True)
class MonitorSettings:
    """How often workers are inspected, how long a mismatch may last before it alerts, how much is kept."""

    inspect_interval: float = 10.0
    alert_grace: float = 30.0
    max_tasks: int = 100_000


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The [server] table: which Host names are this dashboard, and the per-process limits on connections."""

    allowed_hosts: tuple[str, ...] | None = None  # None: loopback names, plus the address `serve` binds to
    max_websockets: int = 1000  # open websockets per serving process; past it a new one is refused at once
    max_websockets_per_client: int = 50  # per user (or per client address when anonymous)
    request_timeout: float = 10.0  # seconds a client has to send a whole request (head and body)


@dataclass(frozen=True, slots=True)
class HistorySettings:
    """The [history] table: where task history is kept and for how long."""

    url: str = ""  # a SQLite file (path or sqlite:///path) or postgresql://...; "": history off
    retention_days: float | None = 30.0  # tasks first seen longer ago are deleted; None: kept for ever
    max_tasks: int | None = 1_000_000  # at most this many tasks are kept (the oldest go first); None: no cap
    flush_interval: float = 1.0  # seconds between group commits

    @property
    def enabled(self) -> bool:
        """True when history is kept."""
        return bool(self.url)


@dataclass(frozen=True, slots=True)
class AlertSettings:
    """The [alerts] table: the dashboard's public URL (for links in notifications) and the webhooks."""

    dashboard_url: str | None = None
    webhooks: tuple[WebhookSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class ActionsSettings:
    """The [actions] table: how many tasks one bulk action may take at most."""

    bulk_limit: int = 10_000


@dataclass(frozen=True)
class Config:
    """Everything the dashboard needs to know, checked once at start-up."""

    broker_url: str = DEFAULT_BROKER_URL
    result_backend: str | None = None
    task_default_queue: str = "celery"
    routes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    catalog: Catalog = field(default_factory=Catalog)
    monitor: MonitorSettings = field(default_factory=MonitorSettings)
    client_app: str | None = None
    broker_timeout: float = 2.0
    broker_transport_options: Mapping[str, Any] = field(default_factory=dict)
    source: str | None = None
    auth: AuthSettings = field(default_factory=AuthSettings)
    secret_key: str | None = None  # signs session cookies; env DASHBOARD_SECRET_KEY; random per start if unset
    audit_path: str | None = None  # a SQLite file (":memory:" allowed) or postgresql://...; "" or None: off
    audit_retention_days: float | None = None  # audit entries older than this are deleted; None: kept for ever
    trusted_proxies: int = 0  # reverse proxies in front whose X-Forwarded-For/-Proto/-Host/-Prefix are believed
    server: ServerSettings = field(default_factory=ServerSettings)
    history: HistorySettings = field(default_factory=HistorySettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    actions: ActionsSettings = field(default_factory=ActionsSettings)


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    client_app: str | None = None,
) -> Config:
    """Read the TOML file (`path`, else $DASHBOARD_CONFIG) and apply environment overrides."""
    env = os.environ if environ is None else environ
    file_name = os.fspath(path) if path is not None else env.get(ENV_CONFIG) or None
    client_app = client_app or env.get(ENV_CLIENT_APP) or None
    if file_name is None and client_app is None:
        raise ConfigError(
            "no configuration: pass --config FILE (or set DASHBOARD_CONFIG), or --client-app module:attribute"
        )
    data: dict[str, Any] = {}
    if file_name is not None:
        try:
            with Path(file_name).open("rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"{file_name}: file not found") from None
        except IsADirectoryError:
            raise ConfigError(f"{file_name}: is a directory, not a TOML file") from None
        except PermissionError:
            raise ConfigError(f"{file_name}: permission denied") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file_name}: invalid TOML: {exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{file_name}: not UTF-8 text") from None
    return config_from_mapping(data, env, source=file_name, client_app=client_app)


def config_from_mapping(
    data: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    *,
    source: str | None = None,
    client_app: str | None = None,
) -> Config:
    """Build a Config from decoded TOML (tests pass a dict) and an environment mapping."""
    env = {} if environ is None else environ
    where = source or "config"

    def fail(problem: str) -> ConfigError:
        return ConfigError(f"{where}: {problem}")

    unknown = sorted(set(data) - TOP_LEVEL_KEYS)
    if unknown:
        raise fail(f"unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(TOP_LEVEL_KEYS))}")
    broker_url = env.get(ENV_BROKER) or _string(data, "broker_url", fail, DEFAULT_BROKER_URL)
    result_backend = env.get(ENV_BACKEND) or _string(data, "result_backend", fail, "") or None
    default_queue = _string(data, "task_default_queue", fail, "celery")
    if not default_queue:
        raise fail("task_default_queue must not be empty")
    timeout = data.get("broker_timeout", 2.0)
    if not number_in(timeout, 0.1, 60):
        raise fail("broker_timeout must be a number of seconds between 0.1 and 60")
    proxies = data.get("trusted_proxies", 0)
    if not number_in(proxies, 0, MAX_TRUSTED_PROXIES, whole=True):
        raise fail(f"trusted_proxies must be a whole number of proxies between 0 and {MAX_TRUSTED_PROXIES}")
    transport_options = data.get("broker_transport_options", {})
    if not isinstance(transport_options, dict):
        raise fail("[broker_transport_options] must be a table")
    history = _history(data.get("history", {}), env, fail)
    audit_path, audit_retention_days = _audit(data.get("audit", {}), env, fail, history.url)
    return Config(
        broker_url=broker_url,
        result_backend=result_backend,
        task_default_queue=default_queue,
        routes=_routes(data.get("routes", {}), fail),
        catalog=_catalog(data.get("tasks", {}), fail),
        monitor=_monitor(data.get("monitor", {}), fail),
        client_app=client_app or _string(data, "client_app", fail, "") or None,
        broker_timeout=float(timeout),
        broker_transport_options=dict(transport_options),
        source=source,
        auth=parse_auth(data.get("auth", {}), fail),
        secret_key=_secret_key(data, env, fail),
        audit_path=audit_path,
        audit_retention_days=audit_retention_days,
        trusted_proxies=proxies,
        server=_server(data.get("server", {}), env, fail),
        history=history,
        alerts=_alerts(data.get("alerts", {}), env, fail),
        actions=_actions(data.get("actions", {}), fail),
    )


def _actions(raw: Any, fail: Any) -> ActionsSettings:
    """The [actions] table."""
    if not isinstance(raw, dict):
        raise fail("[actions] must be a table")
    extra = sorted(set(raw) - ACTIONS_KEYS)
    if extra:
        raise fail(f"[actions]: unknown key(s) {', '.join(extra)}; use {', '.join(sorted(ACTIONS_KEYS))}")
    limit = raw.get("bulk_limit", ActionsSettings().bulk_limit)
    if not number_in(limit, 1, 1_000_000, whole=True):
        raise fail("[actions] bulk_limit must be a whole number of tasks from 1 to 1000000")
    return ActionsSettings(int(limit))


def _server(raw: Any, env: Mapping[str, str], fail: Any) -> ServerSettings:
    """The [server] table; $DASHBOARD_ALLOWED_HOSTS (comma-separated) overrides allowed_hosts."""
    if not isinstance(raw, dict):
        raise fail("[server] must be a table")
    extra = sorted(set(raw) - SERVER_KEYS)
    if extra:
        raise fail(f"[server]: unknown key(s) {', '.join(extra)}; use {', '.join(sorted(SERVER_KEYS))}")
    hosts: Any = raw.get("allowed_hosts")
    if ENV_ALLOWED_HOSTS in env:
        hosts = [part.strip() for part in env[ENV_ALLOWED_HOSTS].split(",") if part.strip()]
    if hosts is not None and (not isinstance(hosts, list) or not all(isinstance(h, str) and h for h in hosts)):
        raise fail('[server] allowed_hosts must be a list of host names, like ["dash.example.com"] ("*": any)')
    defaults = ServerSettings()
    limits: dict[str, int] = {}
    for key in ("max_websockets", "max_websockets_per_client"):
        value = raw.get(key, getattr(defaults, key))
        if not number_in(value, 1, 100_000, whole=True):
            raise fail(f"[server] {key} must be a whole number from 1 to 100000")
        limits[key] = value
    timeout = raw.get("request_timeout", defaults.request_timeout)
    if not number_in(timeout, 0.5, 300):
        raise fail("[server] request_timeout must be a number of seconds from 0.5 to 300")
    return ServerSettings(
        tuple(h.strip().lower() for h in hosts) if hosts is not None else None,
        limits["max_websockets"],
        limits["max_websockets_per_client"],
        float(timeout),
    )


def _http_url(value: Any) -> bool:
    if not isinstance(value, str) or any(c.isspace() for c in value):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _alerts(raw: Any, env: Mapping[str, str], fail: Any) -> AlertSettings:
    """The [alerts] table: dashboard_url, and [[alerts.webhooks]] (see _webhook)."""
    if not isinstance(raw, dict):
        raise fail("[alerts] must be a table")
    extra = sorted(set(raw) - ALERTS_KEYS)
    if extra:
        raise fail(f"[alerts]: unknown key(s) {', '.join(extra)}; use {', '.join(sorted(ALERTS_KEYS))}")
    url = raw.get("dashboard_url")
    if url is not None and not _http_url(url):
        raise fail('[alerts] dashboard_url must be an http(s) URL, like "https://dash.example.com"')
    hooks = raw.get("webhooks", [])
    if not isinstance(hooks, list):
        raise fail("[alerts] webhooks must be an array of tables: [[alerts.webhooks]]")
    specs: list[WebhookSpec] = []
    for index, hook in enumerate(hooks):
        spec = _webhook(index, hook, env, fail)
        if any(other.name == spec.name for other in specs):
            spec = WebhookSpec(f"{spec.name}-{index + 1}", spec.url, spec.events, spec.kinds, spec.headers,
                               spec.secret, spec.timeout, spec.max_attempts)
        specs.append(spec)
    return AlertSettings(url.rstrip("/") if url else None, tuple(specs))


def _webhook(index: int, raw: Any, env: Mapping[str, str], fail: Any) -> WebhookSpec:
    """One [[alerts.webhooks]]: url (or url_env: the name of an environment variable holding it), events, kinds,
    headers, secret (or secret_env), timeout, max_attempts, name."""
    where = f"[[alerts.webhooks]] #{index + 1}"
    if not isinstance(raw, dict):
        raise fail(f"{where}: must be a table")
    extra = sorted(set(raw) - WEBHOOK_KEYS)
    if extra:
        raise fail(f"{where}: unknown key(s) {', '.join(extra)}; use {', '.join(sorted(WEBHOOK_KEYS))}")
    values: dict[str, Any] = {}
    for key in ("url", "secret"):
        if key in raw and f"{key}_env" in raw:
            raise fail(f"{where}: give {key} or {key}_env, not both")
        if f"{key}_env" in raw:
            name = raw[f"{key}_env"]
            if not isinstance(name, str) or not name:
                raise fail(f"{where}: {key}_env must name an environment variable")
            if not env.get(name):
                raise fail(f"{where}: {key}_env names ${name}, which is not set")
            values[key] = env[name]
        elif key in raw:
            if not isinstance(raw[key], str):
                raise fail(f"{where}: {key} must be a string")
            values[key] = raw[key]
    url = values.get("url")
    if url is None:
        raise fail(f"{where}: needs url (or url_env)")
    if not _http_url(url):
        raise fail(f"{where}: url must be an http(s) URL, not {mask_endpoint(url)!r}")
    events = raw.get("events", list(DEFAULT_EVENTS))
    if not isinstance(events, list) or not events or not set(events) <= set(EVENTS) or not all(
            isinstance(e, str) for e in events):
        raise fail(f"{where}: events must be a non-empty list of {', '.join(EVENTS)}")
    kinds = raw.get("kinds")
    if kinds is not None and (not isinstance(kinds, list) or not kinds or not all(
            isinstance(k, str) and k in ALERT_KINDS for k in kinds)):
        raise fail(f"{where}: kinds must be a non-empty list of {', '.join(ALERT_KINDS)} (absent: every kind)")
    headers = raw.get("headers", {})
    if not isinstance(headers, dict) or not all(
            isinstance(k, str) and _HEADER_NAME.fullmatch(k) and isinstance(v, str) and "\r" not in v
            and "\n" not in v for k, v in headers.items()):
        raise fail(f"{where}: headers must be a table of header names to one-line strings")
    timeout = raw.get("timeout", 5.0)
    if not number_in(timeout, 0.1, 60):
        raise fail(f"{where}: timeout must be a number of seconds from 0.1 to 60")
    attempts = raw.get("max_attempts", 5)
    if not number_in(attempts, 1, 10, whole=True):
        raise fail(f"{where}: max_attempts must be a whole number from 1 to 10")
    name = raw.get("name", urlsplit(url).hostname or f"webhook-{index + 1}")
    if not isinstance(name, str) or not name or len(name) > 60:
        raise fail(f"{where}: name must be a string of 1 to 60 characters")
    return WebhookSpec(name, url, frozenset(events), frozenset(kinds) if kinds is not None else None,
                       tuple(headers.items()), values.get("secret") or None, float(timeout), attempts)


def _secret_key(data: Mapping[str, Any], env: Mapping[str, str], fail: Any) -> str | None:
    key = env.get(ENV_SECRET) or _string(data, "secret_key", fail, "") or None
    if key is not None and len(key) < 16:
        raise fail("secret_key must be at least 16 characters (e.g. from: python -c 'import secrets; "
                   "print(secrets.token_hex(32))')")
    return key


def _audit(raw: Any, env: Mapping[str, str], fail: Any, history_url: str = "") -> tuple[str, float | None]:
    """The [audit] table: (path, retention_days).

    path: $DASHBOARD_AUDIT_PATH, else [audit] path, else the history's PostgreSQL database when history is kept
    in one (so replicas share one audit log), else the XDG state directory; "" (off) when none is known. A
    postgresql:// URL puts the audit log in that database.
    retention_days: entries older than this many days are deleted (absent or 0: kept for ever, None).
    """
    if not isinstance(raw, dict):
        raise fail("[audit] must be a table")
    extra = sorted(set(raw) - AUDIT_KEYS)
    if extra:
        raise fail(f"[audit]: unknown key(s) {', '.join(extra)}; use path (\"\" turns auditing off) "
                   "and retention_days")
    path = raw.get("path")
    if path is not None and not isinstance(path, str):
        raise fail("[audit] path must be a string")
    path = env.get(ENV_AUDIT_PATH, path)
    if path is None and history_url.startswith(POSTGRES_SCHEMES):
        path = history_url
    if path is None:
        default = default_audit_path(env)
        path = str(default) if default is not None else ""
    days = raw.get("retention_days", 0)
    if not number_in(days, 0, MAX_RETENTION_DAYS):
        raise fail(f"[audit] retention_days must be a number of days between 0 (keep for ever) and "
                   f"{MAX_RETENTION_DAYS}")
    return path, (float(days) if days else None)


def _history(raw: Any, env: Mapping[str, str], fail: Any) -> HistorySettings:
    """The [history] table. url: $DASHBOARD_HISTORY_URL, else [history] url, else a SQLite file in the state
    directory ("" turns history off; off too when no state directory is known)."""
    if not isinstance(raw, dict):
        raise fail("[history] must be a table")
    extra = sorted(set(raw) - HISTORY_KEYS)
    if extra:
        raise fail(f"[history]: unknown key(s) {', '.join(extra)}; use {', '.join(sorted(HISTORY_KEYS))}")
    url = raw.get("url")
    if url is not None and not isinstance(url, str):
        raise fail("[history] url must be a string")
    url = env.get(ENV_HISTORY_URL, url)
    if url is None:
        directory = state_dir(env)
        url = str(directory / HISTORY_FILE_NAME) if directory is not None else ""
    url = url.strip()
    if url and not (url.startswith(("sqlite:///", *POSTGRES_SCHEMES)) or os.path.isabs(url)):
        raise fail("[history] url must be an absolute file path, sqlite:///absolute/path or "
                   "postgresql://user@host/database (\"\" turns history off)")
    defaults = HistorySettings()
    days = raw.get("retention_days", defaults.retention_days)
    if not number_in(days, 0, MAX_RETENTION_DAYS):
        raise fail(f"[history] retention_days must be a number of days from 0 (keep for ever) to "
                   f"{MAX_RETENTION_DAYS}")
    max_tasks = raw.get("max_tasks", defaults.max_tasks)
    if not number_in(max_tasks, 0, 1_000_000_000, whole=True):
        raise fail("[history] max_tasks must be a whole number from 0 (no cap) to 1000000000")
    flush = raw.get("flush_interval", defaults.flush_interval)
    if not number_in(flush, 0.01, 10):
        raise fail("[history] flush_interval must be a number of seconds from 0.01 to 10")
    return HistorySettings(url, float(days) if days else None, max_tasks or None, float(flush))


def state_dir(environ: Mapping[str, str]) -> Path | None:
    """$XDG_STATE_HOME/dispatch-dashboard, else ~/.local/state/dispatch-dashboard; None when neither is known."""
    state_home = environ.get("XDG_STATE_HOME", "")
    if os.path.isabs(state_home):  # the XDG spec: a relative value is invalid and must be ignored
        return Path(state_home) / APP_DIR
    home = environ.get("HOME", "")
    if os.path.isabs(home):
        return Path(home) / ".local" / "state" / APP_DIR
    return None


def default_audit_path(environ: Mapping[str, str]) -> Path | None:
    """The audit log's default file, in the state directory."""
    directory = state_dir(environ)
    return directory / AUDIT_FILE_NAME if directory is not None else None


def _string(data: Mapping[str, Any], key: str, fail: Any, default: str) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise fail(f"{key} must be a string")
    return value


def _routes(raw: Any, fail: Any) -> dict[str, dict[str, Any]]:
    """[routes]: name or glob -> "queue" or {queue = ..., routing_key = ...}, in file order as Celery reads it."""
    if not isinstance(raw, dict):
        raise fail("[routes] must be a table of task name or glob -> queue")
    routes: dict[str, dict[str, Any]] = {}
    for pattern, target in raw.items():
        if isinstance(target, str):
            if not target:
                raise fail(f"route {pattern!r}: the queue name is empty")
            routes[pattern] = {"queue": target}
        elif isinstance(target, dict):
            extra = sorted(set(target) - ROUTE_KEYS)
            if extra:
                raise fail(f"route {pattern!r}: unknown key(s) {', '.join(extra)}; use {', '.join(sorted(ROUTE_KEYS))}")
            if not isinstance(target.get("queue", ""), str) or not target.get("queue"):
                raise fail(f"route {pattern!r}: a table route needs queue = \"name\"")
            routes[pattern] = dict(target)
        else:
            raise fail(f"route {pattern!r}: must be a queue name or a table like {{ queue = \"name\" }}")
    return routes


def _catalog(raw: Any, fail: Any) -> Catalog:
    """[tasks."name"] tables: description and params = [{name, type, required, default, description}]."""
    if not isinstance(raw, dict):
        raise fail("[tasks] must hold one table per task name, like [tasks.\"worker.tasks.x\"]")
    specs: list[TaskSpec] = []
    for name, body in raw.items():
        if problem := task_name_problem(name):
            raise fail(f"task {name!r}: {problem}")
        if not isinstance(body, dict):
            raise fail(f"task {name!r}: must be a table")
        extra = sorted(set(body) - {"description", "params"})
        if extra:
            raise fail(f"task {name!r}: unknown key(s) {', '.join(extra)}; use description, params")
        description = body.get("description", "")
        if not isinstance(description, str):
            raise fail(f"task {name!r}: description must be a string")
        params_raw = body.get("params", [])
        if not isinstance(params_raw, list):
            raise fail(f"task {name!r}: params must be an array of tables")
        params: list[ParamSpec] = []
        for index, param in enumerate(params_raw):
            params.append(_param(name, index, param, fail))
        names = [p.name for p in params]
        if len(set(names)) != len(names):
            raise fail(f"task {name!r}: a parameter name appears twice")
        specs.append(TaskSpec(name, description, tuple(params)))
    return Catalog.of(specs)


def _param(task: str, index: int, raw: Any, fail: Any) -> ParamSpec:
    where = f"task {task!r} param #{index + 1}"
    if not isinstance(raw, dict):
        raise fail(f"{where}: must be a table like {{ name = \"x\", type = \"str\" }}")
    extra = sorted(set(raw) - {"name", "type", "required", "default", "description"})
    if extra:
        raise fail(f"{where}: unknown key(s) {', '.join(extra)}")
    name = raw.get("name")
    if not isinstance(name, str) or not PARAM_NAME_RE.fullmatch(name):
        raise fail(f"{where}: name must be a Python identifier")
    kind = raw.get("type", "str")
    if kind not in PARAM_TYPES:
        raise fail(f"{where} ({name}): type must be one of {', '.join(PARAM_TYPES)}, not {kind!r}")
    required = raw.get("required", False)
    if not isinstance(required, bool):
        raise fail(f"{where} ({name}): required must be true or false")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise fail(f"{where} ({name}): description must be a string")
    spec = ParamSpec(name, kind, required, raw.get("default", MISSING), description)
    if spec.has_default:
        if required:
            raise fail(f"{where} ({name}): a required parameter cannot have a default")
        try:
            spec.check(spec.default)
        except InvalidValue as exc:
            raise fail(f"{where} ({name}): default {exc}") from None
    return spec


def _monitor(raw: Any, fail: Any) -> MonitorSettings:
    if not isinstance(raw, dict):
        raise fail("[monitor] must be a table")
    extra = sorted(set(raw) - {"inspect_interval", "alert_grace", "max_tasks"})
    if extra:
        raise fail(f"[monitor]: unknown key(s) {', '.join(extra)}; use inspect_interval, alert_grace, max_tasks")
    defaults = MonitorSettings()
    values: dict[str, Any] = {}
    for key, low, high in (("inspect_interval", 0.1, 3600), ("alert_grace", 0, 86400)):
        value = raw.get(key, getattr(defaults, key))
        if not number_in(value, low, high):
            raise fail(f"[monitor] {key} must be a number of seconds from {low} to {high}")
        values[key] = float(value)
    max_tasks = raw.get("max_tasks", defaults.max_tasks)
    if not number_in(max_tasks, 1, 10_000_000, whole=True):
        raise fail("[monitor] max_tasks must be a whole number from 1 to 10000000")
    return MonitorSettings(values["inspect_interval"], values["alert_grace"], max_tasks)
