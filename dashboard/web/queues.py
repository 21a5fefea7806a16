"""The queue browser and rescue: the queue page, its htmx forms (move, purge, delete by name) and their JSON twins.

A view parses, calls one QueueService method, records the action in the audit log once, and renders. Everything
shown from a message came from whoever published it: the templates autoescape it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, jsonify, render_template, request, url_for
from markupsafe import Markup

from ..exceptions import ActionInterrupted, BrokerUnavailable, QueueNotFound
from ..model.messages import MAX_PAGE, RequestInvalid, parse_delete, parse_move, parse_purge, queue_name_problem
from ..model.secrets import mask_text
from ..services.client import BROKER_ERRORS
from ..services.container import Services
from ..services.queues import QueuePage, QueuesUnavailable
from .audit import record_action
from .context import services
from .query import MAX_OFFSET, QueryError, int_arg

bp = Blueprint("queues", __name__)

PAGE_SIZE = 50
_UNAVAILABLE: tuple[type[BaseException], ...] = (BrokerUnavailable, *BROKER_ERRORS)


@dataclass(frozen=True)
class ActionOutcome:
    """What a queue action did: the count under `key` ("moved", "purged", "deleted"), or why not."""

    ok: bool
    status: int
    message: str
    key: str
    count: int | None = None

    def to_json(self) -> tuple[Response, int]:
        """The API answer: {key: n} on success, {"error": ..., key: n-done-before-failing} otherwise."""
        if self.ok:
            return jsonify({self.key: self.count, "message": self.message}), self.status
        extra = {self.key: self.count} if self.count is not None else {}
        return jsonify(error=self.message, **extra), self.status


def _checked_queue(queue: str) -> None:
    problem = queue_name_problem(queue)
    if problem:
        raise RequestInvalid(f"queue: {problem}")


def queue_action(svc: Services, action: str, queue: str, body: Any) -> ActionOutcome:
    """Run one of move / purge / delete on `queue` with a JSON or form body, and audit it exactly once (with the
    filter, the count and the outcome)."""
    key = {"move": "moved", "purge": "purged", "delete": "deleted"}[action]
    detail: dict[str, Any] = {}
    try:
        _checked_queue(queue)
        if action == "move":
            move = parse_move(queue, body)
            detail = {"to": move.to, **move.selection.describe()}
            count = svc.queues.move(queue, move)
            of = f" of {move.selection.name}" if move.selection.name else ""
            said = f"moved {count} message(s){of} from {queue} to {move.to}"
        elif action == "delete":
            selection = parse_delete(body)
            detail = selection.describe()
            count = svc.queues.delete(queue, selection)
            said = f"deleted {count} message(s) of {selection.name} from {queue}"
        else:
            parse_purge(queue, body)
            count = svc.queues.purge(queue)
            said = f"purged {count} message(s) from {queue}"
    except RequestInvalid as exc:
        outcome = ActionOutcome(False, 400, str(exc), key)
    except QueueNotFound as exc:
        outcome = ActionOutcome(False, 404, str(exc), key)
    except QueuesUnavailable as exc:
        outcome = ActionOutcome(False, 409, str(exc), key)
    except ActionInterrupted as exc:
        outcome = ActionOutcome(False, 503, mask_text(str(exc)), key, exc.done)
    except _UNAVAILABLE as exc:
        outcome = ActionOutcome(False, 503, mask_text(f"the broker did not answer: {exc}"), key, 0)
    else:
        svc.monitor.kick()  # depths and alerts follow at once
        note = "" if count else " (nothing matched: the queue is empty, or holds none of those)"
        outcome = ActionOutcome(True, 200, said + note, key, count)
    record_action(f"queue.{action}", queue[:255], {**detail, key: outcome.count},
                  "done" if outcome.ok else "refused" if outcome.status in (400, 404, 409) else "failed",
                  None if outcome.ok else outcome.message)
    return outcome


def _page_args(args: Mapping[str, str]) -> tuple[int, int]:
    return (int_arg(args, "limit", PAGE_SIZE, 1, MAX_PAGE), int_arg(args, "offset", 0, 0, MAX_OFFSET))


# -- JSON API --------------------------------------------------------------------------------------------------


@bp.get("/api/queues/<path:queue>/messages", merge_slashes=False)
def api_messages(queue: str) -> tuple[Response, int]:
    """A page of the queue's messages in serving order, none consumed: ?limit=(1-500, 50)&offset=."""
    try:
        _checked_queue(queue)
        limit, offset = _page_args(request.args)
        page = services().queues.page(queue, limit, offset)
    except (RequestInvalid, QueryError) as exc:
        return jsonify(error=str(exc)), 400
    except QueueNotFound as exc:
        return jsonify(error=str(exc)), 404
    except QueuesUnavailable as exc:
        return jsonify(error=str(exc)), 409
    if page.peek_error is not None:
        return jsonify(error=page.peek_error, queue=queue, depth=page.depth), 409
    return jsonify(page.to_dict()), 200


def _json_body() -> Any:
    return request.get_json(silent=True)


@bp.post("/api/queues/<path:queue>/move", merge_slashes=False)
def api_move(queue: str) -> tuple[Response, int]:
    """Move messages to another queue: {"to", "name"?, "ids"?, "limit"?} -> {"moved": n}."""
    return queue_action(services(), "move", queue, _json_body()).to_json()


@bp.post("/api/queues/<path:queue>/purge", merge_slashes=False)
def api_purge(queue: str) -> tuple[Response, int]:
    """Delete every message of the queue: {"confirm": "<queue>"} -> {"purged": n}."""
    return queue_action(services(), "purge", queue, _json_body()).to_json()


@bp.post("/api/queues/<path:queue>/delete", merge_slashes=False)
def api_delete(queue: str) -> tuple[Response, int]:
    """Delete only the messages of one task name: {"name", "ids"?, "limit"?} -> {"deleted": n}."""
    return queue_action(services(), "delete", queue, _json_body()).to_json()


# -- pages -----------------------------------------------------------------------------------------------------


def messages_fragment(svc: Services, queue: str, limit: int = PAGE_SIZE, offset: int = 0, *,
                      oob: bool = False) -> tuple[str, QueuePage | None, int]:
    """The queue's depth and page of messages (#queue-messages); the page, and the HTTP status to answer."""
    page: QueuePage | None = None
    error = None
    status = 200
    try:
        page = svc.queues.page(queue, limit, offset)
    except QueueNotFound as exc:
        error, status = str(exc), 404
    except QueuesUnavailable as exc:
        error, status = str(exc), 409
    except _UNAVAILABLE as exc:
        error, status = mask_text(str(exc)), 503
    report = svc.routing.report
    html = render_template("partials/queue_messages.html", queue=queue, page=page, error=error, oob=oob,
                           row=report.queue(queue) if report is not None else None, peek_method=svc.queues.peek_method,
                           page_size=PAGE_SIZE)
    return html, page, status


@bp.get("/queues/<path:queue>", merge_slashes=False)
def page(queue: str) -> tuple[str, int]:
    """One queue: depth, consumers, a page of its messages (not consumed), and the rescue forms."""
    svc = services()
    problem = queue_name_problem(queue)
    if problem:
        return render_template("pages/error.html", status=400, message=f"queue: {problem}"), 400
    try:
        limit, offset = _page_args(request.args)
    except QueryError as exc:
        return render_template("pages/error.html", status=400, message=str(exc)), 400
    html, found, status = messages_fragment(svc, queue, limit, offset)
    report = svc.routing.report
    queues = sorted({row.name for row in report.queues} - {queue}) if report is not None else []
    return render_template(
        "pages/queue.html", queue=queue, messages_html=Markup(html), page=found, known_queues=queues,
        suggested=(found.suggested_target if found is not None else svc.queues.suggested_target(queue, ())) or "",
        names=[name for name, _ in found.names if name] if found is not None else [],
        online_workers=svc.routing.online_workers(),
    ), status


def _form_action(action: str, queue: str) -> tuple[str, int]:
    svc = services()
    form = {key: value for key, value in request.form.items() if key != "csrf_token"}
    at = svc.monitor.clock()
    if action != "purge" and form.pop("confirm", None) not in ("1", "on", "true"):
        return render_template("partials/fix_result.html", ok=False, message='Tick "I confirm" first.', queue=queue,
                               at=at), 422
    outcome = queue_action(svc, action, queue, form)
    result = render_template("partials/fix_result.html", ok=outcome.ok, message=outcome.message, queue=queue, at=at)
    if outcome.ok and not queue_name_problem(queue):
        html, _, _ = messages_fragment(svc, queue, oob=True)  # the table as it is now, swapped in by id
        result += html
    return result, outcome.status


@bp.post("/queues/<path:queue>/move", merge_slashes=False)
def move(queue: str) -> tuple[str, int]:
    """The move form (confirmed): the outcome, and the queue's messages as they are now."""
    return _form_action("move", queue)


@bp.post("/queues/<path:queue>/purge", merge_slashes=False)
def purge(queue: str) -> tuple[str, int]:
    """The purge form: the operator typed the queue's name."""
    return _form_action("purge", queue)


@bp.post("/queues/<path:queue>/delete", merge_slashes=False)
def delete(queue: str) -> tuple[str, int]:
    """The delete-by-name form (confirmed)."""
    return _form_action("delete", queue)


def queue_url(queue: str, anchor: str | None = None) -> str:
    """The queue page's URL (for links from the routing, workers and alerts views)."""
    return url_for("queues.page", queue=queue, _anchor=anchor)


@bp.app_context_processor
def _links() -> dict[str, Any]:
    return {"queue_url": queue_url}
