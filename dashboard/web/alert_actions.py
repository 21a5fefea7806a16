"""Acknowledging and silencing alerts: the JSON API and the banner's and alerts panel's forms.

Every action needs the operator role and, from a browser, the CSRF token (auth.py guards every unsafe method);
each is written to the audit log once: alert.ack, alert.silence, alert.unsilence.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, redirect, render_template, request, url_for
from werkzeug.wrappers.response import Response as BaseResponse

from ..model.alerts import ALERT_KINDS
from ..model.notify import MarkInvalid
from ..services.container import Services
from .audit import record_action, request_origin
from .context import services

bp = Blueprint("alert_actions", __name__)

MAX_KEY_CHARS = 300

Outcome = tuple[bool, str, int, dict[str, Any]]  # ok, message, HTTP status, the key's marks after the action


def _marks_of(svc: Services, key: str) -> dict[str, Any]:
    alert = svc.routing.alert(key)
    silence = svc.marks.silenced(key)
    mark = svc.marks.mark(alert).to_dict() if alert is not None else {
        "acknowledged_by": None, "acknowledged_at": None,
        "silenced_by": silence.by if silence else None, "silenced_until": silence.until if silence else None}
    return {"key": key, **mark}


def _key_problem(key: str) -> str | None:
    kind, _, name = key.partition(":")
    if len(key) > MAX_KEY_CHARS or kind not in ALERT_KINDS or not name.strip():
        return (f"not an alert key: expected <kind>:<queue or task> (kind one of {', '.join(ALERT_KINDS)}), "
                f"like orphaned_queue:llm")
    return None


def acknowledge(svc: Services, key: str) -> Outcome:
    """Acknowledge the active alert `key` (this occurrence)."""
    alert = svc.routing.alert(key)
    if alert is None:
        result: Outcome = (False, f"no active alert {key[:MAX_KEY_CHARS]!r} (cleared, or never raised)", 404, {})
    else:
        ack = svc.marks.acknowledge(alert, request_origin().who)
        result = (True, f"acknowledged by {ack.by}{_local_note(svc)}", 200, _marks_of(svc, key))
    _record("alert.ack", key, {"kind": alert.kind, "raised_at": alert.raised_at} if alert else {}, result)
    return result


def silence(svc: Services, key: str, minutes: object) -> Outcome:
    """Silence `key` (an active alert's, or any well-formed key, to silence ahead) for `minutes`."""
    detail: dict[str, Any] = {"minutes": minutes if isinstance(minutes, int | str) else repr(minutes)[:40]}
    problem = _key_problem(key) if svc.routing.alert(key) is None else None
    if problem is not None:
        result: Outcome = (False, problem, 400, {})
    else:
        try:
            held = svc.marks.silence(key, request_origin().who, minutes)
            detail["until"] = held.until
            result = (True, f"silenced by {held.by} for {round((held.until - held.at) / 60)} min{_local_note(svc)}",
                      200, _marks_of(svc, key))
        except MarkInvalid as exc:
            result = (False, str(exc), 400, {})
    _record("alert.silence", key, detail, result)
    return result


def unsilence(svc: Services, key: str) -> Outcome:
    """End the silence of `key`."""
    if svc.marks.silenced(key) is None:
        result: Outcome = (False, f"{key[:MAX_KEY_CHARS]!r} is not silenced", 404, {})
    else:
        svc.marks.unsilence(key)
        result = (True, f"silence ended: webhooks are sent again{_local_note(svc)}", 200, _marks_of(svc, key))
    _record("alert.unsilence", key, {}, result)
    return result


def _local_note(svc: Services) -> str:
    return " (Redis did not answer: this replica only until it does)" if svc.marks.unsynced else ""


def _record(action: str, key: str, detail: dict[str, Any], result: Outcome) -> None:
    ok, message, status, _ = result
    record_action(action, key[:MAX_KEY_CHARS], detail, "done" if ok else "failed" if status >= 500 else "refused",
                  None if ok else message)


# -- JSON API ----------------------------------------------------------------------------------------------------


def _answer(result: Outcome) -> tuple[Response, int]:
    ok, message, status, marks = result
    return (jsonify(ok=message, **marks), status) if ok else (jsonify(error=message), status)


@bp.post("/api/alerts/<path:key>/ack", merge_slashes=False)
def ack_api(key: str) -> tuple[Response, int]:
    """Acknowledge an active alert: who and when show beside it until it clears."""
    return _answer(acknowledge(services(), key))


@bp.post("/api/alerts/<path:key>/silence", merge_slashes=False)
def silence_api(key: str) -> tuple[Response, int]:
    """Silence an alert key for {"minutes": n}: no webhooks for it meanwhile."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or "minutes" not in body:
        return jsonify(error='send a JSON object like {"minutes": 60}'), 400
    return _answer(silence(services(), key, body["minutes"]))


@bp.delete("/api/alerts/<path:key>/silence", merge_slashes=False)
def unsilence_api(key: str) -> tuple[Response, int]:
    """End an alert key's silence."""
    return _answer(unsilence(services(), key))


# -- forms (the banner and the alerts panel) ---------------------------------------------------------------------


def _form_answer(result: Outcome, key: str) -> tuple[str, int] | BaseResponse:
    ok, message, status, _ = result
    if request.headers.get("HX-Request") != "true":
        return redirect(url_for("pages.alerts"), 303)  # a plain form post: back to the alerts, which show it
    return render_template("partials/fix_result.html", ok=ok, message=message, queue=key,
                           at=services().monitor.clock()), status


def _form_key() -> str:
    return request.form.get("key", "").strip()[:MAX_KEY_CHARS + 1]


@bp.post("/alerts/ack")
def ack_form() -> tuple[str, int] | BaseResponse:
    """The Acknowledge button."""
    key = _form_key()
    return _form_answer(acknowledge(services(), key), key)


@bp.post("/alerts/silence")
def silence_form() -> tuple[str, int] | BaseResponse:
    """The Silence button with its duration."""
    key = _form_key()
    raw = request.form.get("minutes", "").strip()
    minutes: object = int(raw) if raw.isdigit() and len(raw) < 7 else raw[:20]
    return _form_answer(silence(services(), key, minutes), key)


@bp.post("/alerts/unsilence")
def unsilence_form() -> tuple[str, int] | BaseResponse:
    """The Unsilence button."""
    key = _form_key()
    return _form_answer(unsilence(services(), key), key)
