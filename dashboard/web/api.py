"""The JSON API: dispatch, catalog, tasks, workers, status, health."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, jsonify, request, stream_with_context, url_for

from ..exceptions import DispatchRefused, RoutingError
from ..model.dispatch import DispatchInvalid, parse_api_body
from ..model.search import first_seen, parse_query
from ..model.secrets import mask_text
from ..model.state import TaskView
from ..services.history import HistoryUnavailable
from . import views
from .audit import record_invalid, request_origin
from .context import now, services
from .history import history_status
from .live import status_message
from .query import int_arg

bp = Blueprint("api", __name__)


def _bad_request(message: str, **extra: Any) -> tuple[Response, int]:
    return jsonify(error=message, **extra), 400


@bp.post("/api/dispatch")
def dispatch() -> tuple[Response, int]:
    """Publish one task by name: 202 with its id and queue, 400 for bad input, 503 when the broker can't take it."""
    raw = request.get_data(cache=False)
    if not raw:
        return _bad_request('the body is empty; send a JSON object like {"name": "worker.tasks.x", "args": []}')
    try:
        body = json.loads(raw)
    except UnicodeDecodeError:
        return _bad_request("the body is not UTF-8 text")
    except ValueError as exc:
        return _bad_request(f"the body is not valid JSON: {exc}")
    except RecursionError:
        return _bad_request("the body is nested too deeply")
    svc = services()
    try:
        checked = parse_api_body(body, svc.config.catalog, now())
    except DispatchInvalid as exc:
        svc.stats.note_dispatch("invalid")
        record_invalid(body, exc)
        return _bad_request(exc.message, fields=exc.errors)
    try:
        sent = svc.dispatcher.dispatch(checked, request_origin())
    except DispatchRefused as exc:
        message = f'not sent: {exc}. Send again with "force": true to dispatch anyway.'
        return jsonify(error=message, warnings=exc.warnings, queue=exc.queue), 409
    payload = {
        "task_id": sent.task_id,
        "queue": sent.resolution.queue,
        "name": sent.name,
        "routing_key": sent.resolution.routing_key,
        "exchange": sent.resolution.exchange,
        "route": sent.resolution.to_dict(),
        "options": sent.options.to_dict(),
        "url": url_for("pages.task", task_id=sent.task_id),
    }
    return jsonify(payload), 202


@bp.get("/api/catalog")
def catalog() -> Response:
    """The catalog's tasks with their params and the queue each resolves to."""
    svc = services()
    tasks = []
    for spec in svc.config.catalog:
        # One task whose route cannot be resolved (a failing router, a queue missing from task_queues) is
        # listed with the reason; the rest of the catalog stays usable.
        route: dict[str, Any]
        try:
            resolution = svc.client.resolve(spec.name)
            route = {"queue": resolution.queue, "route": resolution.to_dict()}
        except RoutingError as exc:
            route = {"queue": None, "route": None, "route_error": mask_text(str(exc))}
        tasks.append(
            {
                "name": spec.name,
                "description": spec.description,
                "params": [
                    {
                        "name": p.name,
                        "type": p.type,
                        "required": p.required,
                        "description": p.description,
                        **({"default": p.default} if p.has_default else {}),
                    }
                    for p in spec.params
                ],
                **route,
            }
        )
    return jsonify(tasks=tasks)


@bp.get("/api/tasks")
def tasks() -> tuple[Response, int]:
    """Tasks, newest first (or ?sort=): ?q= searches (history when kept, else memory); ?state=&name=&queue=
    &worker= filter memory; &limit=(1-1000, 50)&offset=."""
    try:
        filters = views.TaskFilters.from_args(request.args)
    except views.FilterError as exc:
        return _bad_request(str(exc))
    try:
        page = views.task_page(services(), filters)
    except HistoryUnavailable as exc:
        return jsonify(error=str(exc)), 503
    return jsonify(tasks=[task.to_dict() for task in page.tasks], total=page.total, limit=filters.limit,
                   offset=filters.offset, capped=page.capped, source=page.source), 200


EXPORT_FORMATS = ("csv", "ndjson")
EXPORT_PAGE = 1000
EXPORT_MAX = 1_000_000
EXPORT_COLUMNS = ("id", "name", "state", "queue", "worker", "first_seen", "runtime", "retries", "args", "kwargs",
                  "result", "exception", "root_id", "parent_id")


@bp.get("/api/tasks/export")
def export_tasks() -> Response | tuple[Response, int]:
    """The tasks a search finds, as CSV or NDJSON, streamed: ?q=&format=csv|ndjson&sort=&limit=(at most 1000000,
    default 100000)."""
    fmt = (request.args.get("format") or "ndjson").strip().lower()
    if fmt not in EXPORT_FORMATS:
        return _bad_request(f"format: must be one of {', '.join(EXPORT_FORMATS)}")
    try:
        limit = int_arg(request.args, "limit", 100_000, 1, EXPORT_MAX, views.FilterError)
        filters = views.TaskFilters.from_args({**request.args, "limit": str(EXPORT_PAGE), "offset": "0"})
    except views.FilterError as exc:
        return _bad_request(str(exc))
    if filters.search is None:
        filters = dataclasses.replace(filters, q="", search=parse_query("", time.time()))
    svc = services()
    try:
        first = views.task_page(svc, filters)
    except HistoryUnavailable as exc:
        return jsonify(error=str(exc)), 503

    def pages() -> Iterator[list[TaskView]]:
        page, offset = first, 0
        while True:
            yield page.tasks[: max(limit - offset, 0)]
            offset += len(page.tasks)
            if len(page.tasks) < EXPORT_PAGE or offset >= limit:
                return
            page = views.task_page(svc, dataclasses.replace(filters, offset=offset))

    def csv_lines() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(EXPORT_COLUMNS)
        for page in pages():
            for task in page:
                writer.writerow([_export_value(task, column) for column in EXPORT_COLUMNS])
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()

    def ndjson_lines() -> Iterator[str]:
        for page in pages():
            yield "".join(json.dumps(task.to_dict(), ensure_ascii=False) + "\n" for task in page)

    mimetype = "text/csv" if fmt == "csv" else "application/x-ndjson"
    body = stream_with_context(csv_lines() if fmt == "csv" else ndjson_lines())
    response = Response(body, mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="tasks.{fmt}"'
    return response


def _export_value(task: TaskView, column: str) -> Any:
    if column == "first_seen":
        return first_seen(task)
    value = getattr(task, column)
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value  # a spreadsheet must not run a task's text as a formula
    return value


@bp.get("/api/tasks/<path:task_id>", merge_slashes=False)
def task(task_id: str) -> tuple[Response, int]:
    """One task with its timeline, from memory, else from history; 404 when never seen (or pruned)."""
    found = views.find_task(services(), task_id[:255])
    if found is None:
        return jsonify(error=f"no task with id {task_id[:255]!r} is retained (never seen, or evicted)"), 404
    return jsonify(found.to_dict()), 200


@bp.get("/api/workers")
def workers() -> Response:
    """Every worker seen, online or offline, with what inspection learned of it."""
    return jsonify(workers=[worker.to_dict() for worker in services().monitor.state.workers()])


@bp.get("/api/status")
def status() -> Response:
    """The event stream's connection, stream gaps, and counts of what is retained."""
    svc = services()
    body = status_message(svc)
    body.pop("type")
    return jsonify(**body, counts=svc.monitor.state.counts().to_dict(), history=history_status(svc),
                   notifications={**svc.notifier.status(), "marks_shared": svc.marks.shared})


@bp.get("/api/routing")
def routing() -> Response:
    """The comparison: one row per task and per queue, with status and problems. Before the first comparison
    every key is there too: no rows, and `consistent` null (not known yet)."""
    svc = services()
    service = svc.routing
    report = service.report
    body: dict[str, Any] = report.to_dict() if report is not None else {
        "tasks": [], "queues": [], "default_queue": svc.client.settings.task_default_queue, "consistent": None,
        "offline_workers": [],
    }
    body.update(
        inspected_at=service.inspected_at,
        compared_at=service.compared_at,
        broker_error=service.broker_error,
        inspect_error=service.inspect_error,
    )
    return jsonify(body)


@bp.get("/api/alerts")
def alerts() -> Response:
    """Active alerts, oldest first: kind, queue/task/depth when they apply, since, message, and who acknowledged or
    silenced them."""
    svc = services()
    return jsonify([{**alert.to_dict(), **svc.marks.mark(alert).to_dict()} for alert in views.alerts_of(svc)])


@bp.post("/api/queues/<path:queue>/consumers", merge_slashes=False)
def add_consumer(queue: str) -> tuple[Response, int]:
    """Tell an online worker to consume `queue`: body {"worker": hostname}."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("worker"), str):
        return _bad_request('send a JSON object like {"worker": "celery@host"}')
    ok, message, status = views.consumer_fix(services(), queue, body["worker"].strip())
    return (jsonify(ok=message), status) if ok else (jsonify(error=message), status)


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: 200 while the app serves requests (the broker's state is reported elsewhere)."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Readiness, for load balancers and orchestrators: 200 once this process's event stream is live and the
    workers were inspected once, 503 until then (and while the stream is down)."""
    svc = services()
    svc.ensure_started()
    live, inspected = svc.stream.live, svc.routing.inspected_at is not None
    ready = live and inspected
    body = {"status": "ready" if ready else "not ready", "broker": svc.stream.status.status.value,
            "inspected": inspected}
    return jsonify(body), 200 if ready else 503
