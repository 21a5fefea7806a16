"""Dispatch again: what is known of a task's call (exactly, or only as the events' repr) and the dispatch body."""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ..dispatch import MAX_JSON_DEPTH, json_depth
from .base import ActionError, no_unknown

CallSource = Literal["audit", "backend", "events", "none"]


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
    no_unknown(body, ("name", "args", "kwargs", "options", "force"))
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
