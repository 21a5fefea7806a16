"""The audit log over HTTP: the /audit page and GET /api/audit, plus what the dispatch seam needs from a request.

This module must not import `.runtime` at module level: the runtime imports `request_origin` from here.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, g, has_request_context, jsonify, render_template, request

from ..model.dispatch import AUDIT_OUTCOMES, FORM_OPTION_PREFIX, FORM_PARAM_PREFIX, DispatchInvalid
from ..model.secrets import mask_text
from ..services.audit import (
    ANONYMOUS,
    MAX_QUERY_LIMIT,
    ActionEntry,
    ActionOutcome,
    AuditEntry,
    AuditStore,
    AuditUnavailable,
    Origin,
    Source,
    action_entry,
    json_text,
)
from .context import services
from .query import MAX_FILTER_CHARS, MAX_OFFSET, QueryError, int_arg, page_query, text_args

log = logging.getLogger(__name__)

bp = Blueprint("audit", __name__)

PAGE_SIZE = 50
PAGE_MAX_LIMIT = 500
FILTER_KEYS = ("name", "outcome", "who", "queue", "task_id")
TIME_KEYS = ("since", "until")
_TRUE = frozenset({"1", "true", "on", "yes"})


class AuditFilterError(QueryError):
    """A filter or paging parameter that cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class AuditFilters:
    """The audit page's and API's filters (exact values; since <= at < until) and page."""

    name: str | None = None
    outcome: str | None = None
    who: str | None = None
    queue: str | None = None
    task_id: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = PAGE_SIZE
    offset: int = 0

    @classmethod
    def from_args(cls, args: Mapping[str, str], *, max_limit: int = MAX_QUERY_LIMIT) -> AuditFilters:
        """Parse and check query parameters (raises AuditFilterError with a message for the user)."""
        values = text_args(args, FILTER_KEYS, AuditFilterError, MAX_FILTER_CHARS)
        outcome = values["outcome"]
        if outcome is not None:
            outcome = outcome.lower()
            if outcome not in AUDIT_OUTCOMES:
                raise AuditFilterError(f"outcome: must be one of {', '.join(AUDIT_OUTCOMES)}")
        since = _time_arg(args, "since")
        until = _time_arg(args, "until")
        limit = int_arg(args, "limit", PAGE_SIZE, 1, max_limit, AuditFilterError)
        offset = int_arg(args, "offset", 0, 0, MAX_OFFSET, AuditFilterError)
        return cls(values["name"], outcome, values["who"], values["queue"], values["task_id"], since, until,
                   limit, offset)

    @property
    def active(self) -> bool:
        """True when any filter (not paging) is set."""
        return any(getattr(self, key) is not None for key in (*FILTER_KEYS, *TIME_KEYS))

    def query(self, **changes: object) -> str:
        """The query string for these filters with some values changed (for the pager's links)."""
        filters = {key: getattr(self, key) for key in (*FILTER_KEYS, *TIME_KEYS)}
        return page_query(filters, self.limit, self.offset, PAGE_SIZE, changes)


def _time_arg(args: Mapping[str, str], key: str) -> float | None:
    """Epoch seconds, or an ISO 8601 date-time (UTC when it has no zone)."""
    raw = (args.get(key) or "").strip()
    if not raw:
        return None
    problem = f"{key}: expected epoch seconds or an ISO 8601 date-time like 2030-01-31T12:00:00Z"
    try:
        value = float(raw)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(raw[:64].replace("z", "Z"))
        except ValueError:
            raise AuditFilterError(problem) from None
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    if not math.isfinite(value):
        raise AuditFilterError(problem)
    return value


def audit_log() -> AuditStore | None:
    """The current app's audit log, or None when auditing is off."""
    return services().audit


def request_origin() -> Origin:
    """Who is dispatching, through what, from where: from the current request (anonymous outside one)."""
    if not has_request_context():
        return Origin()
    identity = g.get("identity")
    name = getattr(identity, "name", None)
    who = name if isinstance(name, str) and name else ANONYMOUS
    source: Source = "api" if request.path.startswith("/api/") else "form"
    return Origin(who, source, request.remote_addr)


def record_invalid(raw: object, exc: DispatchInvalid) -> None:
    """Audit an attempt refused as invalid before it reached the dispatch seam: the API body or the form, as sent."""
    audit = audit_log()
    if audit is None:
        return
    try:
        origin = request_origin()
        if origin.source == "form" and isinstance(raw, Mapping):
            name, args, kwargs, options, forced = _form_fields(raw)
        else:
            name, args, kwargs, options, forced = _body_fields(raw)
        entry = AuditEntry(at=time.time(), who=origin.who, source=origin.source, remote_addr=origin.remote_addr,
                           name=name, args=args, kwargs=kwargs, options=options, queue=None, forced=forced,
                           outcome="invalid", error=mask_text(exc.message))
    except Exception:  # recording must never break the response; the traceback goes to the log
        log.exception("audit: could not describe an invalid dispatch")
        audit.count_failure()
        return
    audit.record(entry)


def record_action(action: str, target: str, detail: Any, outcome: ActionOutcome, error: str | None = None) -> None:
    """Audit one operator action of the current request (who, from where) — done, refused or failed. Never raises."""
    audit = audit_log()
    if audit is None:
        return
    try:
        entry = action_entry(request_origin(), time.time(), action, target, detail, outcome,
                             None if error is None else mask_text(error))
    except Exception:  # recording must never break the response; the traceback goes to the log
        log.exception("audit: could not describe the action %s", action[:100])
        audit.count_failure()
        return
    audit.record_action(entry)


def _body_fields(body: object) -> tuple[str, str, str, str, bool]:
    """name, args, kwargs, options (JSON text) and force from a decoded API body of any shape."""
    if not isinstance(body, Mapping):
        return "", "null", "null", "null", False
    name = body.get("name")
    options = body.get("options")
    return (
        name if isinstance(name, str) else "" if name is None else json_text(name),
        json_text(body.get("args", [])),
        json_text(body.get("kwargs", {})),
        json_text({} if options is None else options),
        body.get("force") is True,
    )


def _form_fields(form: Mapping[str, Any]) -> tuple[str, str, str, str, bool]:
    """The same from a dispatch form: a catalog form's typed fields as kwargs, a raw form's JSON as typed."""
    params = {key.removeprefix(FORM_PARAM_PREFIX): str(value) for key, value in form.items()
              if key.startswith(FORM_PARAM_PREFIX)}
    options = {key.removeprefix(FORM_OPTION_PREFIX): str(value).strip() for key, value in form.items()
               if key.startswith(FORM_OPTION_PREFIX) and str(value).strip()}
    if params:
        args, kwargs = "[]", json_text(params)
    else:
        args = str(form.get("args", "")).strip() or "[]"
        kwargs = str(form.get("kwargs", "")).strip() or "{}"
    forced = str(form.get("force", "")).lower() in _TRUE
    return str(form.get("name", "")).strip(), args, kwargs, json_text(options), forced


def _query(audit: AuditStore, filters: AuditFilters) -> tuple[list[AuditEntry], int]:
    return audit.query(name=filters.name, outcome=filters.outcome, who=filters.who, queue=filters.queue,
                       task_id=filters.task_id, since=filters.since, until=filters.until, limit=filters.limit,
                       offset=filters.offset)


@bp.get("/audit")
def page() -> tuple[str, int]:
    """Every dispatch attempt, newest first, filtered by name, outcome, who and queue, paginated."""
    audit = audit_log()
    entries: list[AuditEntry] = []
    total = 0
    problem = None
    status = 200
    try:
        filters = AuditFilters.from_args(request.args, max_limit=PAGE_MAX_LIMIT)
    except AuditFilterError as exc:
        filters, problem, status = AuditFilters(), str(exc), 400
    if audit is not None and problem is None:
        try:
            entries, total = _query(audit, filters)
        except AuditUnavailable as exc:
            problem, status = str(exc), 503
    return render_template(
        "pages/audit.html", enabled=audit is not None, entries=entries, total=total, filters=filters,
        outcomes=AUDIT_OUTCOMES, problem=problem, write_errors=audit.write_errors if audit is not None else 0,
        actions=recent_actions() if problem is None else [],
    ), status


@bp.get("/api/audit")
def api() -> tuple[Response, int]:
    """Audit entries, newest first: ?name=&outcome=&who=&queue=&task_id=&since=&until=&limit=(1-1000, 50)&offset=."""
    audit = audit_log()
    if audit is None:
        return jsonify(error="auditing is off: set [audit] path in the config to keep a log of dispatches"), 404
    try:
        filters = AuditFilters.from_args(request.args)
    except AuditFilterError as exc:
        return jsonify(error=str(exc)), 400
    try:
        entries, total = _query(audit, filters)
    except AuditUnavailable as exc:
        return jsonify(error=str(exc)), 503
    return jsonify(entries=[entry.to_dict() for entry in entries], total=total, limit=filters.limit,
                   offset=filters.offset, write_errors=audit.write_errors), 200


@bp.get("/api/audit/actions")
def actions_api() -> tuple[Response, int]:
    """Operator actions, newest first: ?action=(exact, or a family like queue.*)&target=&who=&since=&until=
    &limit=(1-1000, 50)&offset=."""
    audit = audit_log()
    if audit is None:
        return jsonify(error="auditing is off: set [audit] path in the config to keep a log of actions"), 404
    args = request.args
    try:
        texts = text_args(args, ("action", "target", "who"))
        since, until = _time_arg(args, "since"), _time_arg(args, "until")
        limit = int_arg(args, "limit", PAGE_SIZE, 1, MAX_QUERY_LIMIT)
        offset = int_arg(args, "offset", 0, 0, MAX_OFFSET)
    except QueryError as exc:
        return jsonify(error=str(exc)), 400
    try:
        entries, total = audit.actions(action=texts.get("action"), target=texts.get("target"),
                                       who=texts.get("who"), since=since, until=until, limit=limit, offset=offset)
    except AuditUnavailable as exc:
        return jsonify(error=str(exc)), 503
    return jsonify(entries=[entry.to_dict() for entry in entries], total=total, limit=limit, offset=offset,
                   write_errors=audit.write_errors), 200


def recent_actions(limit: int = 20) -> list[ActionEntry]:
    """The newest operator actions, for the /audit page (empty when auditing is off or the log can't be read)."""
    audit = audit_log()
    if audit is None:
        return []
    try:
        return audit.actions(limit=limit)[0]
    except AuditUnavailable:
        return []
