"""GET /openapi.json: an OpenAPI 3.1 description of the JSON API, built from the constants the handlers check.

Enums and bounds come from the modules that enforce them; object shapes are written out with
`additionalProperties: false`, so a field added to a `to_dict` without a line here fails
tests/integration/test_openapi.py (which also checks paths and methods against the URL map both ways).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify

from ..config import MAX_BODY_BYTES
from ..model.dispatch import AUDIT_OUTCOMES
from ..model.messages import MAX_PAGE
from ..model.notify import MAX_SILENCE_MINUTES
from ..model.search import MAX_QUERY_CHARS, SEARCH_SORTS
from ..model.state import SORT_KEYS
from ..model.state.tasks import EVENT_STATES
from ..services.audit import MAX_QUERY_LIMIT
from . import audit, auth, openapi_actions, query, queues, views
from .context import services
from .openapi_schemas import (
    DESCRIPTION,
    EXAMPLE_TASK_ID,
    EXAMPLE_WORKER,
    INTEGER,
    NUMBER,
    STRING,
    TASKS_MAX_LIMIT,
    WEBSOCKETS,
    Schema,
    array_of,
    error_answer,
    filter_param,
    json_body,
    object_of,
    openapi_path,
    paging_params,
    path_param,
    query_param,
    ref_to,
    schemas,
)

bp = Blueprint("openapi", __name__)


def _paths() -> Schema:
    # One literal, one entry per path, is the readable form of a spec: longer than 60 lines on purpose.
    read_401 = {"401": {"$ref": "#/components/responses/Unauthorized"}}
    write_40x = {**read_401, "403": {"$ref": "#/components/responses/Forbidden"}}
    too_large = {"413": error_answer(f"The body is larger than {MAX_BODY_BYTES} bytes")}

    def get(operation_id: str, tag: str, summary: str, ok: Schema, **more: Any) -> Schema:
        return {"get": {"operationId": operation_id, "tags": [tag], "summary": summary,
                        "responses": {"200": ok, **more.pop("responses", {}), **read_401}, **more}}

    return {
        "/api/dispatch": {"post": {
            "operationId": "dispatchTask", "tags": ["dispatch"], "summary": "Publish one task by name",
            "requestBody": {"required": True, "content": {"application/json": {"schema": ref_to("DispatchRequest")}}},
            "responses": {
                "202": json_body(ref_to("DispatchAccepted"), "Published: the broker has the message"),
                "400": json_body(ref_to("DispatchInvalid"), "Not sent: the body is not valid (see fields), or "
                                                      "Celery's router could not resolve a queue"),
                "409": json_body(ref_to("DispatchRefused"), "Not sent: no online worker would take it there"),
                **too_large,
                "503": error_answer("Not sent: the broker did not take the message in time"),
                **write_40x,
            },
        }},
        "/api/catalog": get("getCatalog", "dispatch", "The catalog's tasks, their params and queues",
                            json_body(ref_to("Catalog"), "The catalog")),
        "/api/tasks": get(
            "listTasks", "tasks", "Tasks, newest first: a search (history when kept), or filters over memory",
            json_body(ref_to("TaskPage"), "One page"),
            parameters=[
                filter_param("q", MAX_QUERY_CHARS, "A search: name:acme.* state:FAILURE worker: queue: id: since:1h "
                                                   "until: args: kwargs: result: exception: traceback: "
                                                   '"free text" (see the README)'),
                query_param("state", {"enum": list(EVENT_STATES)}, "Only tasks in this state (case-insensitive)"),
                filter_param("name", 255, "Task name, or a part of names when no task has exactly that name"),
                filter_param("queue", 255, "Queue"), filter_param("worker", 255, "Worker hostname"),
                query_param("sort", {"enum": [f"{sign}{key}" for key in SORT_KEYS for sign in ("", "-")]},
                            "Order: seen (first sighting), runtime, name or state; - first for descending "
                            "(default -seen: newest first)"),
                *paging_params(views.PAGE_SIZE, TASKS_MAX_LIMIT, query.MAX_OFFSET),
            ],
            responses={"400": error_answer("A filter, a search or a paging parameter cannot be used"),
                       "503": error_answer("History cannot be read now")},
        ),
        "/api/tasks/export": {"get": {
            "operationId": "exportTasks", "tags": ["tasks"], "summary": "A search's matches as CSV or NDJSON",
            "parameters": [
                filter_param("q", MAX_QUERY_CHARS, "A search, as for /api/tasks (empty: every task)"),
                query_param("format", {"enum": ["csv", "ndjson"]}, "csv or ndjson (default)"),
                query_param("sort", {"enum": list(SEARCH_SORTS)}, "Order, as for /api/tasks"),
                query_param("limit", {"type": "integer", "minimum": 1, "maximum": 1_000_000},
                            "At most this many tasks (default 100000)"),
            ],
            "responses": {
                "200": {"description": "The matches, streamed",
                        "content": {"text/csv": {"schema": STRING}, "application/x-ndjson": {"schema": STRING}}},
                "400": error_answer("A parameter or the search cannot be used"),
                "503": error_answer("History cannot be read now"),
                **read_401,
            },
        }},
        "/api/stats": get(
            "getStats", "tasks", "Series per task name and per queue over the last hour, day or week",
            json_body(ref_to("Stats"), "The series"),
            parameters=[
                query_param("window", {"enum": ["hour", "day", "week"]}, "The window (default hour)"),
                filter_param("name", 255, "Only this task name (repeatable)"),
                filter_param("queue", 255, "Only this queue (repeatable)"),
            ],
            responses={"400": error_answer("A parameter cannot be used"), "404": error_answer("History is off"),
                       "503": error_answer("History cannot be read now")},
        ),
        "/api/tasks/{task_id}": get(
            "getTask", "tasks", "One task with its timeline, from memory or history",
            json_body(ref_to("Task"), "The task"),
            parameters=[path_param("task_id", "The task id ('/' allowed after the first character)", EXAMPLE_TASK_ID)],
            responses={"404": error_answer("Never seen or evicted, or an id the route cannot match (see task_id)")},
        ),
        "/api/workers": get("listWorkers", "workers", "Every worker seen, online or offline",
                            json_body(ref_to("Workers"), "The workers")),
        "/api/status": get("getStatus", "monitoring", "The event stream's connection and what is retained",
                           json_body(ref_to("Status"), "The status")),
        "/api/routing": get("getRouting", "routing", "API routes compared with what the workers do",
                            json_body(ref_to("Routing"), "The comparison")),
        "/api/alerts": get("listAlerts", "routing", "Active alerts, oldest first",
                           json_body(array_of(ref_to("Alert")), "The alerts")),
        "/api/alerts/{key}/ack": {"post": {
            "operationId": "acknowledgeAlert", "tags": ["routing"],
            "summary": "Acknowledge an active alert (its current occurrence): who and when show beside it",
            "parameters": [path_param("key", "The alert's key", "orphaned_queue:llm")],
            "responses": {
                "200": json_body(ref_to("AlertMarked"), "Acknowledged"),
                "404": error_answer("No active alert with that key (or a key the route cannot match)"),
                **write_40x,
            },
        }},
        "/api/alerts/{key}/silence": {
            "post": {
                "operationId": "silenceAlert", "tags": ["routing"],
                "summary": "Silence an alert key for a while: no webhooks for it meanwhile",
                "parameters": [path_param("key", "An alert key (<kind>:<queue or task>)", "orphaned_queue:llm")],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["minutes"], "properties": {"minutes": {
                        "type": "integer", "minimum": 1, "maximum": MAX_SILENCE_MINUTES,
                        "description": "How long (the pages offer 15, 60, 240 and 1440)"}},
                    "example": {"minutes": 60}}}}},
                "responses": {
                    "200": json_body(ref_to("AlertMarked"), "Silenced"),
                    "400": error_answer("Not a JSON object with minutes, minutes out of range, or not an alert key"),
                    "404": error_answer("No such route: the key starts with '/' or holds a line break"),
                    **too_large,
                    **write_40x,
                },
            },
            "delete": {
                "operationId": "unsilenceAlert", "tags": ["routing"], "summary": "End an alert key's silence",
                "parameters": [path_param("key", "An alert key", "orphaned_queue:llm")],
                "responses": {
                    "200": json_body(ref_to("AlertMarked"), "The silence ended"),
                    "404": error_answer("The key is not silenced (or a key the route cannot match)"),
                    **write_40x,
                },
            },
        },
        "/api/queues/{queue}/consumers": {"post": {
            "operationId": "addConsumer", "tags": ["routing"], "summary": "Tell an online worker to consume a queue",
            "parameters": [path_param("queue", "The queue name", "llm-gpu")],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["worker"], "properties": {"worker": {
                    "type": "string", "description": "An online worker's hostname"}},
                "example": {"worker": EXAMPLE_WORKER}}}}},
            "responses": {
                "200": json_body(object_of({"ok": STRING}), "The worker's answer"),
                "400": error_answer("Not a JSON object with a worker; not a queue name; or the worker is not online"),
                "404": error_answer("No such route: the queue name starts with '/' or holds a line break"),
                "409": error_answer("Routing is not monitored here, or the worker refused"),
                **too_large,
                "503": error_answer("The broker did not take the command"),
                "504": error_answer("The worker did not answer in time"),
                **write_40x,
            },
        }},
        "/api/queues/{queue}/messages": get(
            "listQueueMessages", "queues", "A page of the messages waiting in a queue, in serving order, none "
            "consumed (RabbitMQ: read through the management API, which requeues them at once)",
            json_body(ref_to("QueueMessages"), "One page"),
            parameters=[path_param("queue", "The queue name", "llm-gpu"),
                        *paging_params(queues.PAGE_SIZE, MAX_PAGE, query.MAX_OFFSET)],
            responses={"400": error_answer("Not a queue name, or a paging parameter cannot be used"),
                       "404": error_answer("The queue does not exist (RabbitMQ)"),
                       "409": json_body(ref_to("QueueCannotPeek"),
                                        "The broker cannot show messages without taking them (RabbitMQ without "
                                        "management_url; depth given), or queues cannot be browsed here"),
                       "503": error_answer("The broker did not answer")},
        ),
        **{f"/api/queues/{{queue}}/{action}": {"post": {
            "operationId": operation, "tags": ["queues"], "summary": summary,
            "parameters": [path_param("queue", "The queue name", "llm-gpu")],
            "requestBody": {"required": True, "content": {"application/json": {"schema": ref_to(request)}}},
            "responses": {
                "200": json_body(object_of({key: INTEGER, "message": STRING}), "Done: how many"),
                "400": error_answer("Not a queue name, or the body cannot be used (the error says which field)"),
                "404": error_answer("The queue does not exist (RabbitMQ)"),
                "409": error_answer("Queues cannot be browsed on this broker"),
                **too_large,
                "503": json_body(ref_to("QueueActionFailed"), f"The broker failed; `{key}` says how many were "
                                 "handled before it did (the others stay where they were)"),
                **write_40x,
            },
        }} for action, operation, summary, request, key in (
            ("move", "moveQueueMessages", "Move a queue's messages (all, one task name's, given ids) to another "
             "queue, oldest first, none lost or duplicated", "QueueMove", "moved"),
            ("purge", "purgeQueue", "Delete every message waiting in a queue (type its name to confirm)",
             "QueuePurge", "purged"),
            ("delete", "deleteQueueMessages", "Delete only the messages of one task name", "QueueDelete",
             "deleted"),
        )},
        **openapi_actions.paths(write_40x, too_large),
        "/api/audit": get(
            "listAuditEntries", "audit", "Dispatch attempts, newest first", json_body(ref_to("AuditPage"), "One page"),
            parameters=[
                *(filter_param(key, query.MAX_FILTER_CHARS, key.replace("_", " ").capitalize())
                  for key in ("name", "who", "queue", "task_id")),
                query_param("outcome", {"enum": list(AUDIT_OUTCOMES)}, "Only this outcome (case-insensitive)"),
                *(query_param(key, {"anyOf": [NUMBER, {"type": "string", "format": "date-time"}]},
                         f"Entries at or after / before this time: epoch seconds or ISO 8601 ({key})")
                  for key in audit.TIME_KEYS),
                *paging_params(audit.PAGE_SIZE, MAX_QUERY_LIMIT, query.MAX_OFFSET),
            ],
            responses={"400": error_answer("A filter or paging parameter cannot be used"),
                       "404": error_answer("Auditing is off"),
                       "503": error_answer("The audit log cannot be read")},
        ),
        "/api/audit/actions": get(
            "listAuditActions", "audit", "Operator actions, newest first",
            json_body(ref_to("ActionPage"), "One page"),
            parameters=[
                filter_param("action", query.MAX_FILTER_CHARS, "An action, or a family like queue.*"),
                *(filter_param(key, query.MAX_FILTER_CHARS, key.capitalize()) for key in ("target", "who")),
                *(query_param(key, {"anyOf": [NUMBER, {"type": "string", "format": "date-time"}]},
                         f"Actions at or after / before this time: epoch seconds or ISO 8601 ({key})")
                  for key in audit.TIME_KEYS),
                *paging_params(audit.PAGE_SIZE, MAX_QUERY_LIMIT, query.MAX_OFFSET),
            ],
            responses={"400": error_answer("A filter or paging parameter cannot be used"),
                       "404": error_answer("Auditing is off"),
                       "503": error_answer("The audit log cannot be read")},
        ),
        "/healthz": get("healthz", "health", "Liveness: 200 while the app serves requests",
                        json_body(object_of({"status": {"const": "ok"}}), "Serving")),
        "/readyz": {"get": {
            "operationId": "readyz", "tags": ["health"],
            "summary": "Readiness: 200 once the event stream is live and the workers were inspected once",
            "responses": {
                "200": json_body(ref_to("Readiness"), "Ready for traffic"),
                "503": json_body(ref_to("Readiness"), "Not ready yet, or the event stream is down"),
            },
        }},
        "/metrics": get("metrics", "health", "Prometheus metrics",
                        {"description": "Prometheus text exposition",
                         "content": {"text/plain": {"schema": STRING}}}),
        "/openapi.json": get("getOpenapi", "health", "This document",
                             json_body({"type": "object"}, "OpenAPI 3.1")),
    }


def document(app: Flask) -> dict[str, Any]:
    """The OpenAPI document for `app`: public endpoints need no credentials, an open dashboard none at all."""
    try:
        release = version("dispatch-dashboard")
    except PackageNotFoundError:  # running from a checkout that was never installed
        release = "0.0.0"
    security: list[Schema] = [{"basicAuth": []}, {"bearerAuth": []}, {"session": []}]
    if not services(app).config.auth.enabled:
        security.append({})
    paths = _paths()
    public = {openapi_path(rule.rule) for rule in app.url_map.iter_rules() if rule.endpoint in auth.PUBLIC_ENDPOINTS}
    for path in public & paths.keys():
        for operation in paths[path].values():
            operation["security"] = []
            operation["responses"].pop("401", None)
            operation["responses"].pop("403", None)
    return {
        "openapi": "3.1.0",
        "info": {"title": "dispatch-dashboard", "version": release, "description": DESCRIPTION,
                 "license": {"name": "MIT", "identifier": "MIT"}},
        "tags": [{"name": name} for name in ("dispatch", "tasks", "workers", "monitoring", "routing", "queues",
                                             "audit", "health")],
        "security": security,
        "paths": paths,
        "components": {
            "schemas": {**schemas(), **openapi_actions.schemas()},
            "responses": {
                "Unauthorized": {
                    **error_answer("No credentials, or wrong ones"),
                    "headers": {"WWW-Authenticate": {"schema": STRING, "description": "Basic realm=..."}},
                },
                "Forbidden": error_answer("Cross-site request, missing CSRF token, or a viewer trying to change "
                                    "something (operator role needed)"),
            },
            "securitySchemes": {
                "basicAuth": {"type": "http", "scheme": "basic", "description": "A dashboard user"},
                "bearerAuth": {"type": "http", "scheme": "bearer", "description": "A token from the config"},
                "session": {"type": "apiKey", "in": "cookie", "name": app.config["SESSION_COOKIE_NAME"],
                            "description": "Browsers, after /login; POSTs also need the X-CSRF-Token header"},
            },
        },
        "x-websockets": WEBSOCKETS,
    }


@bp.get("/openapi.json")
def openapi_json() -> Response:
    """This app's OpenAPI document."""
    return jsonify(document(current_app._get_current_object()))  # type: ignore[attr-defined]
