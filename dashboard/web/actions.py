"""Task, bulk and worker actions over JSON: revoke, dispatch again, bulk preview and run, one worker's page data and
commands. Every action is checked, done by one service call, and written to the audit log once."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

from flask import Blueprint, Response, jsonify, request, url_for

from ..exceptions import BrokerUnavailable, DispatchRefused, RoutingError
from ..model.actions import (
    BULK_KINDS,
    ActionError,
    BulkKind,
    RevokeRequest,
    Selection,
    parse_autoscale,
    parse_count,
    parse_queue,
    parse_rate_limit,
    parse_revoke,
    parse_time_limit,
)
from ..model.secrets import mask_text
from ..services.client import BROKER_ERRORS
from ..services.inspection import NoReply, WorkerRefused
from .audit import record_action, request_origin
from .context import services
from .views import FilterError, TaskFilters

bp = Blueprint("actions", __name__)

T = TypeVar("T")
SELECTION_KEYS = ("state", "name", "queue", "worker", "q")
_UNAVAILABLE: tuple[type[BaseException], ...] = (BrokerUnavailable, *BROKER_ERRORS)


@dataclass
class Failure:
    """Why an action was not done: the HTTP status, the message, and more fields for the JSON answer."""

    status: int
    message: str
    extra: dict[str, Any] = field(default_factory=dict)

    def response(self) -> tuple[Response, int]:
        """The JSON error answer."""
        return jsonify(error=self.message, **self.extra), self.status


def perform(action: str, target: str, detail: dict[str, Any], do: Callable[[], T],
            done_detail: Callable[[Any], dict[str, Any]] | None = None) -> tuple[T | None, Failure | None]:
    """Run one action, translate what it raises, and audit it once: done, refused (4xx) or failed (5xx)."""
    result: T | None = None
    failure: Failure | None = None
    try:
        result = do()
    except ActionError as exc:
        failure = Failure(exc.status, exc.message, dict(exc.extra))
    except DispatchRefused as exc:
        failure = Failure(409, f'not sent: {exc}. Send again with "force": true to dispatch anyway.',
                          {"warnings": exc.warnings, "queue": exc.queue})
    except RoutingError as exc:
        failure = Failure(400, mask_text(str(exc)))
    except NoReply as exc:
        failure = Failure(504, str(exc))
    except WorkerRefused as exc:
        failure = Failure(409, mask_text(f"refused: {exc}"))
    except _UNAVAILABLE as exc:
        failure = Failure(503, _unavailable_text(exc))
    if failure is None:
        extra = done_detail(result) if done_detail is not None and result is not None else {}
        record_action(action, target[:255], {**detail, **extra}, "done")
    else:
        record_action(action, target[:255], detail, "refused" if failure.status < 500 else "failed",
                      failure.message)
    return result, failure


def body_object(*, form: bool = False) -> Any:
    """The JSON body (or, for a browser form, its fields); None when empty; ActionError when not JSON."""
    if form or request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return {key: value for key, value in request.form.items() if key != "csrf_token"}
    raw = request.get_data(cache=True)
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise ActionError("the body is not valid JSON") from None


def selection_of(body: Mapping[str, Any]) -> Selection:
    """The tasks list's filters from a body or form (the same checks as the list's query string)."""
    values = {key: body.get(key) for key in SELECTION_KEYS}
    if any(value is not None and not isinstance(value, str) for value in values.values()):
        raise ActionError(f"{', '.join(SELECTION_KEYS)}: must be strings (the tasks list's filters)")
    try:
        filters = TaskFilters.from_args({key: value for key, value in values.items() if value})
    except FilterError as exc:
        raise ActionError(str(exc)) from None
    return Selection(filters.state, filters.name, filters.queue, filters.worker, filters.q)


def bulk_request(body: object) -> tuple[BulkKind, Selection, RevokeRequest, bool, int | None]:
    """{"action", filters..., "terminate"?, "signal"?, "force"?, "expected"?} checked."""
    if not isinstance(body, Mapping):
        raise ActionError('send a JSON object like {"action": "revoke", "state": "PENDING", "name": "x"}')
    known = ("action", *SELECTION_KEYS, "terminate", "signal", "force", "expected", "csrf_token")
    unknown = sorted(str(key)[:60] for key in body if key not in known)
    if unknown:
        raise ActionError(f"unknown field(s) {', '.join(map(repr, unknown[:5]))}; expected "
                          f"{', '.join(known[:-1])}")
    kind = body.get("action")
    if kind not in BULK_KINDS:
        raise ActionError(f"action: must be one of {', '.join(BULK_KINDS)}")
    revoke = parse_revoke({key: body[key] for key in ("terminate", "signal", "force") if key in body})
    expected = body.get("expected")
    if isinstance(expected, str) and expected.strip().isdigit():
        expected = int(expected)
    if expected is not None and (not isinstance(expected, int) or isinstance(expected, bool) or expected < 0):
        raise ActionError("expected: the number of tasks the preview showed (a whole number)")
    return kind, selection_of(body), revoke, revoke.force, expected


def _unavailable_text(exc: BaseException) -> str:
    """A broker error for a reader: ours carry their sentence, the broker's own get one."""
    if isinstance(exc, BrokerUnavailable):
        return mask_text(str(exc))
    return mask_text(f"the broker did not answer: {exc}")


def queue_url(queue: str) -> str:
    """The queue's page (its messages, move and purge): /queues/<queue>."""
    return f"{request.script_root}/queues/{quote(queue, safe='')}"


def _checked(parse: Callable[[], T]) -> T | Failure:
    try:
        return parse()
    except ActionError as exc:
        return Failure(exc.status, exc.message, dict(exc.extra))


# -- tasks ------------------------------------------------------------------------------------------------------


@bp.post("/api/tasks/<path:task_id>/revoke", merge_slashes=False)
def revoke(task_id: str) -> tuple[Response, int]:
    """Revoke a task, optionally terminating it: {"terminate": bool, "signal": "SIGTERM", "force": bool}."""
    parsed = _checked(lambda: parse_revoke(body_object()))
    if isinstance(parsed, Failure):
        return parsed.response()
    tasks = services().actions.tasks
    detail = {"terminate": parsed.terminate, "signal": parsed.signal, "force": parsed.force}
    outcome, failure = perform("task.revoke", task_id, detail, lambda: tasks.revoke(task_id, parsed),
                               lambda done: {"replies": done.replies})
    if failure is not None:
        if failure.extra.get("queue"):
            failure.extra["queue_url"] = queue_url(str(failure.extra["queue"]))
        return failure.response()
    assert outcome is not None
    return jsonify(ok=outcome.message, task_id=task_id, terminate=parsed.terminate, signal=parsed.signal,
                   replies=outcome.replies), 200


@bp.post("/api/tasks/<path:task_id>/redispatch", merge_slashes=False)
def redispatch(task_id: str) -> tuple[Response, int]:
    """Dispatch a task again as a new task, with the original's exact arguments unless the body gives others:
    {"args"?, "kwargs"?, "options"?, "force"?} -> 202 like /api/dispatch, plus "original"."""
    parsed = _checked(body_object)
    if isinstance(parsed, Failure):
        return parsed.response()
    tasks = services().actions.tasks
    result, failure = perform(
        "task.redispatch", task_id, {"given": sorted(parsed) if isinstance(parsed, dict) else []},
        lambda: tasks.redispatch(task_id, parsed, request_origin()),
        lambda done: {"task_id": done[0].task_id, "source": done[1].source},
    )
    if failure is not None:
        return failure.response()
    assert result is not None
    sent, call = result
    return jsonify(
        task_id=sent.task_id, queue=sent.resolution.queue, name=sent.name, routing_key=sent.resolution.routing_key,
        exchange=sent.resolution.exchange, route=sent.resolution.to_dict(), options=sent.options.to_dict(),
        url=url_for("pages.task", task_id=sent.task_id), original=task_id, source=call.source,
    ), 202


@bp.get("/api/tasks/<path:task_id>/call", merge_slashes=False)
def call(task_id: str) -> Response:
    """How the task was called (exactly, or only as the events' repr) and its dispatch-again links."""
    tasks = services().actions.tasks
    links = tasks.links(task_id)
    return jsonify(**tasks.known_call(task_id).to_dict(), original=links.original, again=list(links.again))


# -- bulk --------------------------------------------------------------------------------------------------------


@bp.post("/api/tasks/bulk/preview")
def bulk_preview() -> tuple[Response, int]:
    """How many tasks a bulk action would take, and the first few: nothing is done."""
    parsed = _checked(lambda: bulk_request(body_object()))
    if isinstance(parsed, Failure):
        return parsed.response()
    kind, selection, _revoke, _force, _expected = parsed
    return jsonify(services().actions.bulk.preview(kind, selection).to_dict()), 200


@bp.post("/api/tasks/bulk")
def bulk_start() -> tuple[Response, int]:
    """Start a bulk action ("revoke" unfinished tasks, or "redispatch" failures) over the tasks list's filters:
    202 with the job to poll; 409 when more tasks match than "expected" (the preview's count)."""
    parsed = _checked(lambda: bulk_request(body_object()))
    if isinstance(parsed, Failure):
        return parsed.response()
    kind, selection, revoke_request, force, expected = parsed
    bulk = services().actions.bulk
    try:
        job = bulk.start(kind, selection, request_origin(), expected=expected, revoke=revoke_request, force=force)
    except ActionError as exc:
        record_action(f"tasks.bulk_{kind}", "tasks", {"filters": selection.to_dict(), "expected": expected},
                      "refused", exc.message)
        return Failure(exc.status, exc.message, dict(exc.extra)).response()
    body = job.to_dict(outcomes=False)
    return jsonify(**body, url=url_for("actions.bulk_job", job_id=job.id)), 202


@bp.get("/api/tasks/bulk/<job_id>")
def bulk_job(job_id: str) -> tuple[Response, int]:
    """A bulk job's progress and the outcome of each task so far."""
    job = services().actions.bulk.job(job_id)
    if job is None:
        return jsonify(error=f"no bulk job {job_id[:40]!r} (unknown, or forgotten since)"), 404
    return jsonify(job.to_dict()), 200


# -- workers -----------------------------------------------------------------------------------------------------


def _known_worker(hostname: str) -> Failure | None:
    if services().state.worker(hostname) is None:
        return Failure(404, f"no worker {hostname[:255]!r} has been seen")
    return None


@bp.get("/api/workers/<hostname>")
def worker(hostname: str) -> tuple[Response, int]:
    """One worker, asked now: pool, processes, queues, registered tasks with their limits, active, reserved and
    scheduled tasks, stats, configuration (secrets masked), and what its pool supports."""
    unknown = _known_worker(hostname)
    if unknown is not None:
        return unknown.response()
    svc = services()
    try:
        detail = svc.actions.workers.detail(hostname)
    except _UNAVAILABLE as exc:
        return jsonify(error=_unavailable_text(exc)), 503
    view = svc.state.worker(hostname)
    if not detail.answered:
        offline = " (it is offline)" if view is not None and not view.online else ""
        return jsonify(error=f"worker {hostname} did not answer within {svc.actions.workers.inspector.timeout:.0f}s"
                             f"{offline}"), 504
    return jsonify(**detail.to_dict(), status=view.status if view else "offline",
                   answered=detail.answered), 200


def worker_command(hostname: str, action: str, parse: Callable[[Any], T],
                   do: Callable[[T], str], describe: Callable[[T], dict[str, Any]]) -> tuple[Response, int]:
    """Check the body, send one command to one worker, audit it, answer {"ok": ...} or the error."""
    unknown = _known_worker(hostname)
    if unknown is not None:
        return unknown.response()
    parsed = _checked(lambda: parse(body_object()))
    if isinstance(parsed, Failure):
        return parsed.response()
    answer, failure = perform(action, hostname, describe(parsed), lambda: do(parsed))
    services().monitor.kick()
    return failure.response() if failure is not None else (jsonify(ok=answer), 200)


@bp.post("/api/workers/<hostname>/pool")
def pool(hostname: str) -> tuple[Response, int]:
    """Grow or shrink the worker's pool: {"grow": n} or {"shrink": n}."""
    control = services().actions.workers
    return worker_command(hostname, "worker.pool", lambda body: parse_count(body, ("grow", "shrink")),
                          lambda p: control.pool(hostname, p[0], p[1]), lambda p: {p[0]: p[1]})


@bp.post("/api/workers/<hostname>/autoscale")
def autoscale(hostname: str) -> tuple[Response, int]:
    """Set the autoscale range: {"max": n, "min": m} (workers started with --autoscale)."""
    control = services().actions.workers
    return worker_command(hostname, "worker.autoscale", parse_autoscale,
                          lambda p: control.autoscale(hostname, p[0], p[1]), lambda p: {"max": p[0], "min": p[1]})


@bp.post("/api/workers/<hostname>/consumers")
def add_consumer(hostname: str) -> tuple[Response, int]:
    """Start consuming a queue: {"queue": name}."""
    control = services().actions.workers
    return worker_command(hostname, "worker.add_consumer", parse_queue,
                          lambda queue: control.add_consumer(hostname, queue), lambda queue: {"queue": queue})


@bp.post("/api/workers/<hostname>/consumers/cancel")
def cancel_consumer(hostname: str) -> tuple[Response, int]:
    """Stop consuming a queue: {"queue": name}."""
    control = services().actions.workers
    return worker_command(hostname, "worker.cancel_consumer", parse_queue,
                          lambda queue: control.cancel_consumer(hostname, queue), lambda queue: {"queue": queue})


@bp.post("/api/workers/<hostname>/rate-limit")
def rate_limit(hostname: str) -> tuple[Response, int]:
    """Set a task's rate limit on this worker: {"task": name, "rate": "10/m"} ("" or "0": none)."""
    control = services().actions.workers
    return worker_command(hostname, "worker.rate_limit", parse_rate_limit,
                          lambda p: control.rate_limit(hostname, p[0], p[1]), lambda p: {"task": p[0], "rate": p[1]})


@bp.post("/api/workers/<hostname>/time-limit")
def time_limit(hostname: str) -> tuple[Response, int]:
    """Set a task's soft and hard time limits on this worker: {"task": name, "soft": s, "hard": s}."""
    control = services().actions.workers
    return worker_command(hostname, "worker.time_limit", parse_time_limit,
                          lambda p: control.time_limit(hostname, p[0], p[1], p[2]),
                          lambda p: {"task": p[0], "soft": p[1], "hard": p[2]})
