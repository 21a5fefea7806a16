"""What the audit log holds: one entry per dispatch attempt, its text fields capped. Pure data and formatting."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, get_args

from ...exceptions import DashboardError
from ...model.dispatch import AuditOutcome, DispatchInvalid, DispatchRequest
from ...model.secrets import mask_text

Outcome = AuditOutcome  # the model's one vocabulary (an older log may hold "error" for a routing error)
Source = Literal["api", "form"]
SOURCES: Final[tuple[Source, ...]] = get_args(Source)
ANONYMOUS: Final = "anonymous"  # who, until a request carries an authenticated identity
MAX_TEXT_CHARS: Final = 16 * 1024  # per stored text field; longer values are cut and marked


@dataclass(frozen=True, slots=True)
class Origin:
    """Who asked for a dispatch and through what; the web layer fills it from the request."""

    who: str = ANONYMOUS
    source: Source = "api"
    remote_addr: str | None = None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One dispatch attempt. args, kwargs and options are JSON text (a cut value is no longer valid JSON)."""

    at: float  # epoch seconds
    who: str
    source: Source
    remote_addr: str | None
    name: str
    args: str
    kwargs: str
    options: str
    queue: str | None  # where Celery's router sent it (or would have), when known
    forced: bool
    outcome: Outcome
    task_id: str | None = None  # when sent, or while the outcome is unknown: the id it was published with
    error: str | None = None  # why it was not sent, credentials masked
    id: int | None = None  # set on entries read back from the log

    @property
    def time_iso(self) -> str:
        """`at` as ISO 8601 UTC with milliseconds, like 2030-01-31T12:00:00.000Z."""
        return iso_time(self.at)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "id": self.id,
            "at": self.at,
            "time": self.time_iso,
            "who": self.who,
            "source": self.source,
            "remote_addr": self.remote_addr,
            "name": self.name,
            "args": self.args,
            "kwargs": self.kwargs,
            "options": self.options,
            "queue": self.queue,
            "forced": self.forced,
            "outcome": self.outcome,
            "task_id": self.task_id,
            "error": self.error,
        }


#: What an operator action ended in: done, refused by a check before anything happened, or failed on the way.
ActionOutcome = Literal["done", "refused", "failed"]
ACTION_OUTCOMES: Final[tuple[ActionOutcome, ...]] = get_args(ActionOutcome)


@dataclass(frozen=True, slots=True)
class ActionEntry:
    """One operator action (revoke, move, purge, pool, consumer, alert...): who did what to which target, how it
    ended. `detail` is JSON text of the action's parameters and results (counts, filters, a bulk's outcomes)."""

    at: float  # epoch seconds
    who: str
    source: Source
    remote_addr: str | None
    action: str  # a dotted verb: "task.revoke", "queue.move", "queue.purge", "worker.pool", ...
    target: str  # the task id, queue name, worker hostname or alert key acted on
    detail: str
    outcome: ActionOutcome
    error: str | None = None
    id: int | None = None

    @property
    def time_iso(self) -> str:
        """`at` as ISO 8601 UTC with milliseconds, like 2030-01-31T12:00:00.000Z."""
        return iso_time(self.at)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "id": self.id, "at": self.at, "time": self.time_iso, "who": self.who, "source": self.source,
            "remote_addr": self.remote_addr, "action": self.action, "target": self.target, "detail": self.detail,
            "outcome": self.outcome, "error": self.error,
        }


def iso_time(at: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds ("?" for a time no date can hold)."""
    try:
        when = datetime.fromtimestamp(at, UTC)
    except (OverflowError, OSError, ValueError):
        return "?"
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def action_entry(origin: Origin, at: float, action: str, target: str, detail: Any, outcome: ActionOutcome,
                 error: str | None = None) -> ActionEntry:
    """The entry for one action; `detail` is any JSON-able value (stored as JSON text)."""
    return ActionEntry(at=at, who=origin.who, source=origin.source, remote_addr=origin.remote_addr, action=action,
                       target=target, detail=json_text(detail), outcome=outcome, error=error)


def capped(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """`text` storable as UTF-8 (lone surrogates escaped) and at most `limit` characters plus a truncation mark."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > limit:
        return f"{text[:limit]}… [truncated: {len(text)} characters in all]"
    return text


def json_text(value: Any) -> str:
    """`value` as JSON text for the log; never raises (a value JSON cannot hold is named by its type)."""
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (ValueError, TypeError, RecursionError):
        return f"<not JSON: {type(value).__name__}>"


def error_text(exc: BaseException) -> str:
    """What went wrong, for the log: our own errors by their message, others with their type; credentials masked."""
    message = str(exc)
    if not isinstance(exc, DashboardError | DispatchInvalid):
        message = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return mask_text(message)


def request_entry(
    request: DispatchRequest,
    origin: Origin,
    at: float,
    outcome: Outcome,
    *,
    queue: str | None = None,
    task_id: str | None = None,
    error: str | None = None,
) -> AuditEntry:
    """The entry for a checked request."""
    return AuditEntry(
        at=at,
        who=origin.who,
        source=origin.source,
        remote_addr=origin.remote_addr,
        name=request.name,
        args=json_text(list(request.args)),
        kwargs=json_text(request.kwargs),
        options=json_text(request.options.to_dict()),
        queue=queue,
        forced=request.force,
        outcome=outcome,
        task_id=task_id,
        error=error,
    )
