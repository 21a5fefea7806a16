"""Operator actions on tasks and workers, the decisions without I/O: input checks, what a pool supports, whether a
task's arguments are known exactly, whether a revoke can be heard, what a bulk action may touch (pure)."""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from .catalog import task_name_problem
from .dispatch import MAX_JSON_DEPTH, json_depth, shown_key
from .secrets import MASK, mask_text

#: Signals an operator may choose for "revoke and terminate" (Celery takes the name; the worker maps it).
SIGNALS: Final = ("SIGTERM", "SIGKILL", "SIGINT", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGHUP")
DEFAULT_SIGNAL: Final = "SIGTERM"
#: States in which a task has not finished: a revoke can still change its fate.
UNFINISHED: Final = frozenset({"PENDING", "RECEIVED", "STARTED", "RETRY"})
#: States in which a task waits in a queue for a worker to take it.
WAITING: Final = frozenset({"PENDING"})
DEFAULT_BULK_LIMIT: Final = 10_000
MAX_BULK_LIMIT: Final = 1_000_000
BULK_SAMPLE: Final = 20  # tasks a preview names
MAX_POOL_STEP: Final = 64  # processes one grow or shrink may add or remove
MAX_TIME_LIMIT: Final = 7 * 86_400.0
BulkKind = Literal["revoke", "redispatch"]
BULK_KINDS: Final[tuple[BulkKind, ...]] = ("revoke", "redispatch")
CallSource = Literal["audit", "backend", "events", "none"]


class ActionError(Exception):
    """An action that cannot be done (or not now): `status` is the HTTP answer, the message says what to do."""

    def __init__(self, message: str, status: int = 400, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.extra = extra


# -- revoke -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RevokeRequest:
    """Revoke one task (or many): optionally terminate it where it runs, with a signal."""

    terminate: bool = False
    signal: str = DEFAULT_SIGNAL
    force: bool = False  # revoke even where no worker can hear it (a consumer added later still knows the id)


def parse_signal(value: object) -> str:
    """A signal name from SIGNALS ("KILL", "sigkill" and "SIGKILL" alike); ActionError otherwise."""
    if value is None or value == "":
        return DEFAULT_SIGNAL
    if isinstance(value, str):
        name = value.strip().upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        if name in SIGNALS:
            return name
    raise ActionError(f"signal: must be one of {', '.join(SIGNALS)}")


def _flag(body: Mapping[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if isinstance(value, str):
        value = value.strip().lower() in ("1", "true", "on", "yes")
    if not isinstance(value, bool):
        raise ActionError(f"{key}: must be true or false")
    return value


def parse_revoke(body: object) -> RevokeRequest:
    """A revoke body (JSON object or form fields): {"terminate": bool, "signal": str, "force": bool}."""
    if body is None:
        body = {}
    if not isinstance(body, Mapping):
        raise ActionError('send a JSON object like {"terminate": true, "signal": "SIGTERM"}')
    _no_unknown(body, ("terminate", "signal", "force", "csrf_token"))
    return RevokeRequest(_flag(body, "terminate"), parse_signal(body.get("signal")), _flag(body, "force"))


def revoke_unheard(state: str | None, queue: str | None, consumers: Sequence[str] | None) -> str | None:
    """Why a revoke of a task in `state` waiting in `queue` would be heard by nobody, or None when it can work.

    A revoke is a broadcast that workers keep in memory; a task waiting in a queue that no online worker consumes
    is never looked at, and a worker started later does not know the id. `consumers` None: not compared yet."""
    if state not in WAITING or not queue or consumers is None or consumers:
        return None
    return (f"the task waits in queue {queue!r}, which no online worker consumes: no worker would hear the revoke. "
            f"Move or purge its messages from the queue instead")


def _no_unknown(body: Mapping[str, Any], known: Sequence[str]) -> None:
    unknown = sorted(str(key) for key in body if key not in known)
    if unknown:
        shown = ", ".join(repr(shown_key(key)) for key in unknown[:5])
        raise ActionError(f"unknown field(s) {shown}; expected {', '.join(k for k in known if k != 'csrf_token')}")


# -- dispatch again -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KnownCall:
    """What is known of how a task was called: exactly (from the audit log or the result backend), or only as the
    events' repr, possibly cut short (then `exact` is False and `reason` says why an edit is needed)."""

    name: str | None
    args: list[Any] | None
    kwargs: dict[str, Any] | None
    options: dict[str, Any] = field(default_factory=dict)
    source: CallSource = "none"
    args_repr: str | None = None
    kwargs_repr: str | None = None
    reason: str | None = None

    @property
    def exact(self) -> bool:
        """True when args and kwargs are the very values the task was sent with."""
        return self.source in ("audit", "backend") and self.args is not None and self.kwargs is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"name": self.name, "exact": self.exact, "source": self.source, "args": self.args,
                "kwargs": self.kwargs, "options": dict(self.options), "args_repr": self.args_repr,
                "kwargs_repr": self.kwargs_repr, "reason": self.reason}


#: Options carried over to a dispatch again: relative ones; an absolute ETA is in the past by now.
CARRIED_OPTIONS: Final = ("queue", "countdown", "expires", "priority")


def call_from_audit(name: str, args_json: str, kwargs_json: str, options_json: str) -> KnownCall | None:
    """The exact call from an audit entry of this dashboard's own dispatch (its JSON text), or None when the entry
    was cut short (too large to store whole) or is not what a dispatch writes."""
    try:
        args, kwargs, options = json.loads(args_json), json.loads(kwargs_json), json.loads(options_json)
    except (ValueError, RecursionError):
        return None
    if not isinstance(args, list) or not isinstance(kwargs, dict) or not isinstance(options, dict):
        return None
    kept = {key: value for key, value in options.items()
            if key in CARRIED_OPTIONS and not (key == "expires" and isinstance(value, str))}
    return KnownCall(name, args, kwargs, kept, "audit")


def call_from_backend(name: str | None, args: Any, kwargs: Any) -> KnownCall | None:
    """The exact call as the result backend stored it (Celery's result_extended), when it is JSON data."""
    if isinstance(args, tuple):
        args = list(args)
    if not isinstance(args, list) or not isinstance(kwargs, dict) or not _json_data([args, kwargs]):
        return None
    return KnownCall(name, args, dict(kwargs), {}, "backend")


def call_from_events(name: str | None, args_repr: str | None, kwargs_repr: str | None) -> KnownCall:
    """What the events tell: a repr made by Celery's saferepr, cut at 1024 characters and at a nesting depth, or
    replaced by the producer (argsrepr hides secrets). Never taken as exact: an edit is required; the values it
    parses to are offered as the starting point."""
    args = _literal(args_repr, list)
    kwargs = _literal(kwargs_repr, dict)
    if args_repr is None and kwargs_repr is None:
        reason = "no event carried this task's arguments: enter them"
    else:
        reason = ("the events carry the arguments only as a repr, possibly cut short or masked by the sender "
                  "(argsrepr): check them and edit before sending")
    return KnownCall(name, args, kwargs, {}, "events", args_repr, kwargs_repr, reason)


def _literal(text: str | None, kind: type[list[Any]] | type[dict[str, Any]]) -> Any:
    """The JSON value a repr stands for, when it parses as a Python literal of plain data; else None."""
    if not text or len(text) > 16 * 1024:
        return None
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if kind is list and isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, kind) or not _json_data(value):
        return None
    return value


def _json_data(value: Any) -> bool:
    """True when `value` is plain JSON data (no Ellipsis from a cut repr, no sets, no NaN), not nested too deep."""
    if json_depth(value) > MAX_JSON_DEPTH:
        return False
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if not all(isinstance(key, str) for key in item):
                return False
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, float):
            if not math.isfinite(item):
                return False
        elif not (item is None or isinstance(item, str | int | bool)):
            return False
    return True


def redispatch_body(call: KnownCall, body: object) -> dict[str, Any]:
    """The /api/dispatch body for dispatching `call` again, with what the request body overrides (the name too:
    "edit and send" fixes a typo'd name).

    Raises ActionError 409 when the exact arguments are not known and the body does not give both."""
    if body is None:
        body = {}
    if not isinstance(body, Mapping):
        raise ActionError('send a JSON object like {"args": [...], "kwargs": {...}, "options": {...}} (or {})')
    _no_unknown(body, ("name", "args", "kwargs", "options", "force"))
    name = body.get("name", call.name)
    if not name:
        raise ActionError("the task's name is not known (no task-sent or task-received event was seen): "
                          "dispatch it by name from the dispatch form", 409)
    given_args, given_kwargs = "args" in body, "kwargs" in body
    if not call.exact and not (given_args and given_kwargs):
        raise ActionError(f"the exact arguments of this task are not known: {call.reason}. Send them in the body "
                          '("args" and "kwargs"), or use "edit and send"', 409, call=call.to_dict())
    options = body.get("options")
    merged: Any = dict(call.options)
    if isinstance(options, Mapping):
        merged.update(options)
    elif options is not None:
        merged = options  # the dispatch check says what is wrong with it
    out: dict[str, Any] = {
        "name": name,
        "args": body["args"] if given_args else call.args,
        "kwargs": body["kwargs"] if given_kwargs else call.kwargs,
        "options": merged,
    }
    if "force" in body:
        out["force"] = body["force"]
    return out


def form_text(value: Any) -> str:
    """A value as the dispatch form's JSON fields show it."""
    return json.dumps(value, ensure_ascii=False)


# -- bulk -----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selection:
    """Which tasks a bulk action takes: the tasks list's filters (a search over the history can join as `q`)."""

    state: str | None = None
    name: str | None = None
    queue: str | None = None
    worker: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, unset filters left out."""
        return {key: value for key in ("state", "name", "queue", "worker") if (value := getattr(self, key))}


def bulk_state(kind: BulkKind, selection: Selection) -> tuple[Selection, str | None]:
    """The selection a bulk action really takes, or why it takes nothing: dispatch again is for failures only, a
    revoke only for unfinished tasks."""
    if kind == "redispatch":
        if selection.state not in (None, "FAILURE"):
            return selection, "dispatch again takes failures only: set the state filter to FAILURE (or leave it)"
        return Selection("FAILURE", selection.name, selection.queue, selection.worker), None
    if selection.state is not None and selection.state not in UNFINISHED:
        return selection, (f"a {selection.state} task has finished: revoke takes unfinished tasks "
                           f"({', '.join(sorted(UNFINISHED))})")
    return selection, None


def eligible(kind: BulkKind, state: str) -> bool:
    """Whether a task in `state` is acted on by a bulk action of `kind`."""
    return state == "FAILURE" if kind == "redispatch" else state in UNFINISHED


# -- workers -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PoolSupport:
    """What a worker's pool lets an operator change; each `*_why` is the reason when it does not."""

    kind: str
    resize_why: str | None
    autoscale_why: str | None
    terminate_why: str | None
    time_limit_why: str | None

    @property
    def can_resize(self) -> bool:
        """pool_grow / pool_shrink."""
        return self.resize_why is None

    @property
    def can_autoscale(self) -> bool:
        """autoscale."""
        return self.autoscale_why is None

    @property
    def can_terminate(self) -> bool:
        """revoke with terminate."""
        return self.terminate_why is None

    @property
    def can_time_limit(self) -> bool:
        """time_limit."""
        return self.time_limit_why is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"kind": self.kind, "resize": self.can_resize, "resize_why": self.resize_why,
                "autoscale": self.can_autoscale, "autoscale_why": self.autoscale_why,
                "terminate": self.can_terminate, "terminate_why": self.terminate_why,
                "time_limit": self.can_time_limit, "time_limit_why": self.time_limit_why}


def pool_kind(implementation: object) -> str:
    """"prefork", "threads", "solo", "gevent", "eventlet" (or the class path) from stats' pool implementation."""
    if not isinstance(implementation, str) or not implementation:
        return "unknown"
    module = implementation.split(":", 1)[0].rsplit(".", 1)[-1]
    return {"prefork": "prefork", "thread": "threads", "solo": "solo", "gevent": "gevent",
            "eventlet": "eventlet"}.get(module, implementation)


def pool_support(stats: Mapping[str, Any] | None) -> PoolSupport:
    """What the pool described by a worker's stats supports (Celery 5: BasePool has no grow/shrink, the threads and
    solo pools cannot kill one job, and only prefork, gevent and eventlet enforce time limits)."""
    pool = stats.get("pool") if stats else None
    kind = pool_kind(pool.get("implementation") if isinstance(pool, Mapping) else None)
    if kind == "unknown":
        why = "the worker's pool is not known yet (it has not answered stats)"
        return PoolSupport(kind, why, why, why, why)
    autoscaler = bool(stats and isinstance(stats.get("autoscaler"), Mapping) and stats["autoscaler"])
    resizable = kind in ("prefork", "gevent", "eventlet")
    resize_why = None if resizable else f"the {kind} pool has a fixed size, set when the worker starts (-c)"
    if resizable and autoscaler:
        resize_why = "the worker autoscales: change the autoscale range instead"
    autoscale_why = None if autoscaler else "the worker was not started with --autoscale"
    terminate_why = None if resizable else f"the {kind} pool cannot stop one running task (only prefork, gevent " \
                                           "and eventlet can)"
    time_limit_why = None if resizable else f"the {kind} pool does not enforce time limits"
    return PoolSupport(kind, resize_why, autoscale_why, terminate_why, time_limit_why)


def pool_size(stats: Mapping[str, Any] | None) -> int | None:
    """The number of pool processes (prefork) or the pool's concurrency, from stats."""
    pool = stats.get("pool") if stats else None
    if not isinstance(pool, Mapping):
        return None
    processes = pool.get("processes")
    if isinstance(processes, list):
        return len(processes)
    size = pool.get("max-concurrency")
    return size if isinstance(size, int) and not isinstance(size, bool) else None


def parse_count(body: object, keys: Sequence[str]) -> tuple[str, int]:
    """{"grow": n} or {"shrink": n}: which one and how many (1..MAX_POOL_STEP)."""
    if not isinstance(body, Mapping):
        raise ActionError(f'send a JSON object like {{"{keys[0]}": 1}}')
    _no_unknown(body, (*keys, "csrf_token"))
    given = [key for key in keys if key in body]
    if len(given) != 1:
        raise ActionError(f"give exactly one of {', '.join(keys)}")
    key = given[0]
    return key, _whole(body[key], key, 1, MAX_POOL_STEP)


def parse_autoscale(body: object) -> tuple[int, int]:
    """{"max": n, "min": m}: the autoscale range (0 <= min <= max <= 1000)."""
    if not isinstance(body, Mapping):
        raise ActionError('send a JSON object like {"max": 8, "min": 2}')
    _no_unknown(body, ("max", "min", "csrf_token"))
    high = _whole(body.get("max"), "max", 1, 1000)
    low = _whole(body.get("min", 0), "min", 0, 1000)
    if low > high:
        raise ActionError("min: must not be more than max")
    return high, low


def _whole(value: object, key: str, low: int, high: int) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ActionError(f"{key}: must be a whole number from {low} to {high}")
    return value


def parse_queue(body: object) -> str:
    """{"queue": name}: a queue name."""
    if not isinstance(body, Mapping) or not isinstance(body.get("queue"), str):
        raise ActionError('send a JSON object like {"queue": "default"}')
    queue = str(body["queue"]).strip()
    if not queue or task_name_problem(queue) or len(queue) > 255:
        raise ActionError("queue: give the name of a queue (at most 255 characters, no spaces)")
    return queue


def parse_rate_limit(body: object) -> tuple[str, str]:
    """{"task": name, "rate": "10/m"}: a task name and Celery's rate ("" or "0" turns the limit off)."""
    if not isinstance(body, Mapping):
        raise ActionError('send a JSON object like {"task": "worker.tasks.x", "rate": "10/m"}')
    _no_unknown(body, ("task", "rate", "csrf_token"))
    task = _task(body.get("task"))
    rate = body.get("rate")
    if isinstance(rate, int | float) and not isinstance(rate, bool):
        rate = str(rate)
    if not isinstance(rate, str):
        raise ActionError('rate: a rate like "10/s", "100/m" or "1000/h" ("" or "0": no limit)')
    rate = rate.strip()
    number, _, unit = rate.partition("/")
    try:
        amount = float(number) if number else 0.0
    except ValueError:
        amount = -1.0
    if not math.isfinite(amount) or amount < 0 or unit not in ("", "s", "m", "h") or len(rate) > 32:
        raise ActionError('rate: a rate like "10/s", "100/m" or "1000/h" ("" or "0": no limit)')
    return task, rate


def parse_time_limit(body: object) -> tuple[str, float | None, float | None]:
    """{"task": name, "soft": s, "hard": s}: seconds (null: no limit); soft must come before hard."""
    if not isinstance(body, Mapping):
        raise ActionError('send a JSON object like {"task": "worker.tasks.x", "soft": 50, "hard": 60}')
    _no_unknown(body, ("task", "soft", "hard", "csrf_token"))
    task = _task(body.get("task"))
    soft, hard = _seconds(body.get("soft"), "soft"), _seconds(body.get("hard"), "hard")
    if soft is not None and hard is not None and soft >= hard:
        raise ActionError("soft: must be less than hard (the soft limit warns the task before the hard one kills it)")
    return task, soft, hard


def _seconds(value: object, key: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ActionError(f"{key}: a number of seconds (empty: no limit)") from None
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) \
            or not 0 < value <= MAX_TIME_LIMIT:
        raise ActionError(f"{key}: a number of seconds above 0 and at most {MAX_TIME_LIMIT:.0f} (empty: no limit)")
    return float(value)


def _task(value: object) -> str:
    if problem := task_name_problem(value):
        raise ActionError(f"task: {problem}")
    assert isinstance(value, str)
    return value


#: Celery's own rule for settings it hides (celery.app.utils.HIDDEN_SETTINGS), plus credentials.
_SECRET_WORDS: Final = ("api", "token", "key", "secret", "pass", "profanities_list", "signature", "database",
                        "credential")


def mask_settings(value: Any, depth: int = 0) -> Any:
    """A worker's configuration for display: values of secret-looking keys replaced by the mask, passwords in URLs
    masked everywhere (Celery masks some keys itself; this does not rely on it)."""
    if depth > MAX_JSON_DEPTH:
        return "…"
    if isinstance(value, Mapping):
        return {str(key): MASK if _secret_key(str(key)) and value[key] not in (None, "", [], {})
                else mask_settings(value[key], depth + 1) for key in value}
    if isinstance(value, list | tuple):
        return [mask_settings(item, depth + 1) for item in value]
    if isinstance(value, str):
        return mask_text(value)
    return value


def _secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS)
