"""One worker: what its pool supports (and why not), its size, the command bodies, its settings for display."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ..catalog import task_name_problem
from ..dispatch import MAX_JSON_DEPTH
from ..secrets import MASK, mask_text
from .base import ActionError, no_unknown

MAX_POOL_STEP: Final = 64  # processes one grow or shrink may add or remove
MAX_TIME_LIMIT: Final = 7 * 86_400.0


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
    no_unknown(body, (*keys, "csrf_token"))
    given = [key for key in keys if key in body]
    if len(given) != 1:
        raise ActionError(f"give exactly one of {', '.join(keys)}")
    key = given[0]
    return key, _whole(body[key], key, 1, MAX_POOL_STEP)


def parse_autoscale(body: object) -> tuple[int, int]:
    """{"max": n, "min": m}: the autoscale range (0 <= min <= max <= 1000)."""
    if not isinstance(body, Mapping):
        raise ActionError('send a JSON object like {"max": 8, "min": 2}')
    no_unknown(body, ("max", "min", "csrf_token"))
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
    no_unknown(body, ("task", "rate", "csrf_token"))
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
    no_unknown(body, ("task", "soft", "hard", "csrf_token"))
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
