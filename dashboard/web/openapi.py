"""GET /openapi.json: an OpenAPI 3.1 description of the JSON API, built from the constants the handlers check.

Enums and bounds come from the modules that enforce them; object shapes are written out with
`additionalProperties: false`, so a field added to a `to_dict` without a line here fails
tests/integration/test_openapi.py (which also checks paths and methods against the URL map both ways).
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from typing import Any, get_args

from flask import Blueprint, Flask, Response, current_app, jsonify

from ..config import MAX_BODY_BYTES
from ..model.alerts import ALERT_KINDS
from ..model.catalog import PARAM_TYPES
from ..model.dispatch import MAX_ARGS, MAX_DELAY_SECONDS, MAX_JSON_DEPTH, OPTION_NAMES, OUTCOMES, PRIORITY_RANGE
from ..model.routing import SEVERITY, QueueStatus, RouteSource, TaskStatus
from ..model.state.tasks import EVENT_STATES, TASK_EVENT_TYPES, TIMESTAMP_KEYS
from ..services.audit import MAX_QUERY_LIMIT, SOURCES
from ..services.events.listener import BrokerStatus
from . import audit, auth, live, query, views
from .context import services

bp = Blueprint("openapi", __name__)

Schema = dict[str, Any]

TASK_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:@/$-]{0,254}$"  # catalog.TASK_NAME_RE, ASCII (JSON Schema's \w)
IDENTIFIER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"  # str.isidentifier, ASCII
PATH_VALUE_PATTERN = r"^[^/\n][^\n]*$"
TASKS_MAX_LIMIT = 1000  # views.TaskFilters.from_args's max_limit for the API
EXAMPLE_WORKER = "celery@worker1"
EXAMPLE_TASK_ID = "9a3c1c9e-5c3e-4c1e-8f7a-2b6d0e4c8a11"
_CONVERTER = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")

STRING, NUMBER, INTEGER, BOOLEAN = ({"type": name} for name in ("string", "number", "integer", "boolean"))
OPT_STRING, OPT_NUMBER, OPT_INTEGER = ({"type": [name, "null"]} for name in ("string", "number", "integer"))
STRINGS: Schema = {"type": "array", "items": STRING}

DESCRIPTION = """\
Dispatch Celery tasks by name through a send-only client and watch where they go.

Every JSON error body is `{"error": "<one line for a person>"}`, sometimes with more fields.

**Authentication.** API clients send HTTP Basic (the dashboard's users) or a bearer token from its config;
browsers use the session cookie from `/login`. Viewers may read everything; dispatching and worker control
(every POST) need the operator role. When no users or tokens are configured the dashboard runs open and needs
no credentials. A request carrying a cookie, `Origin` or `Sec-Fetch-Site` must be same-origin, and a cookie or
open-mode POST from a browser must send the session's CSRF token in `X-CSRF-Token`.

**Live events.** `GET /ws/events` is a websocket (not described as a path: OpenAPI has no websockets); see
`x-websockets`.
"""

WEBSOCKETS: Schema = {
    "/ws/events": {
        "summary": "JSON stream of what the dashboard sees",
        "description": (
            "Each message is one JSON object with a `type`: first a `snapshot` (tasks, tasks_total, workers, "
            f"status, alerts), then, at most {round(1 / live.JSON_FRAME_SECONDS)} frames a second, `task` (a Task "
            "plus `timestamp`), `worker` (a Worker), `status` (a Status without counts), `alert` (an Alert plus "
            "`status`: raised, updated or cleared) and `routing` (a Routing without the inspection times). A "
            "client that falls behind gets a fresh snapshot. Same authentication as the API (viewer); a "
            "browser's Origin must be the dashboard's."
        ),
        "parameters": [{"name": "tasks", "in": "query", "description": "Tasks in the snapshot (clamped)",
                        "schema": {"type": "integer", "minimum": 0, "maximum": live.SNAPSHOT_TASKS_MAX,
                                   "default": live.SNAPSHOT_TASKS_DEFAULT}}],
    },
}


def openapi_path(rule: str) -> str:
    """A Werkzeug rule as an OpenAPI path: `/api/tasks/<path:task_id>` -> `/api/tasks/{task_id}`."""
    return _CONVERTER.sub(r"{\1}", rule)


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: Schema, *, optional: tuple[str, ...] = (), description: str | None = None) -> Schema:
    """A closed object: every property required unless named in `optional`, no others allowed."""
    schema: Schema = {"type": "object", "properties": properties,
                      "required": [key for key in properties if key not in optional],
                      "additionalProperties": False}
    if description:
        schema["description"] = description
    return schema


def _array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> Schema:
    return _json(_ref("Error"), description)


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _path(name: str, description: str, example: str) -> Schema:
    # Werkzeug's `path` converter, "[^/].*?", whose "." stops at a line break; "/" may follow the first character.
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "pattern": PATH_VALUE_PATTERN}, "example": example}


def _filter(name: str, max_chars: int, description: str) -> Schema:
    return _query(name, {"type": "string", "maxLength": max_chars}, f"{description} (exact match; blank: any)")


def _paging(default: int, maximum: int, max_offset: int) -> list[Schema]:
    return [_query("limit", {"type": "integer", "minimum": 1, "maximum": maximum, "default": default}, "Page size"),
            _query("offset", {"type": "integer", "minimum": 0, "maximum": max_offset, "default": 0}, "To skip")]


def _schemas() -> Schema:
    """Request and response bodies; the to_dict shapes are closed objects."""
    timestamps = {key: OPT_NUMBER for key in TIMESTAMP_KEYS}
    seconds = {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_DELAY_SECONDS}
    return {
        "Error": _object({"error": STRING}, description="Any error: one line for a person"),
        "DispatchInvalid": _object({"error": STRING, "fields": {
            "type": "object", "additionalProperties": STRING,
            "description": "Field ('name', 'args', 'kwargs.x', 'options.eta', '' for the body) -> why"}},
            optional=("fields",), description="The dispatch was refused as invalid; nothing was sent"),
        "DispatchRefused": _object({"error": STRING, "warnings": STRINGS, "queue": STRING},
                                   description='Nobody would take it there; send again with "force": true'),
        "DispatchRequest": {**_object({
            "name": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": TASK_NAME_PATTERN,
                     "description": "The task's registered name"},
            "args": {"type": "array", "maxItems": MAX_ARGS, "default": [],
                     "description": f"Positional arguments (JSON nested at most {MAX_JSON_DEPTH} deep)"},
            "kwargs": {"type": "object", "propertyNames": {"pattern": IDENTIFIER_PATTERN}, "default": {},
                       "description": "Keyword arguments; a catalog task's are type-checked"},
            "options": {"anyOf": [_ref("DispatchOptions"), {"type": "null"}]},
            "force": {"type": "boolean", "default": False,
                      "description": "Send even where no online worker consumes or registers the task"},
        }, optional=("args", "kwargs", "options", "force")),
            "example": {"name": "worker.tasks.link.unfurl", "kwargs": {"url": "https://example.com/post"}}},
        "DispatchOptions": _object({
            "queue": {"type": ["string", "null"], "minLength": 1, "maxLength": 255, "pattern": r"^\S+$",
                      "description": "Publish to this queue instead of the routed one"},
            "countdown": {"type": ["number", "null"], "minimum": 0, "maximum": MAX_DELAY_SECONDS,
                          "description": "Seconds to wait (not with eta)"},
            "eta": {"type": ["string", "null"], "format": "date-time",
                    "description": "When to run: ISO 8601 (UTC when it has no zone), not past, within a year"},
            "expires": {"anyOf": [seconds, {"type": "string", "format": "date-time"}, {"type": "null"}],
                        "description": "Seconds from now, or an ISO 8601 time; after the start"},
            "priority": {"type": ["integer", "null"], "minimum": PRIORITY_RANGE.start,
                         "maximum": PRIORITY_RANGE.stop - 1, "description": "A JSON integer literal (3, not 3.0)"},
        }, optional=OPTION_NAMES, description="Celery execution options; absent or null: Celery's defaults"),
        "Route": _object({
            "queue": STRING, "exchange": STRING, "routing_key": STRING,
            "matched": {"enum": ["override", "route", "default"],
                        "description": "An options.queue override, a task_routes entry, or the default queue"},
            "pattern": {**OPT_STRING, "description": "The task_routes key that matched"},
            "router": {**OPT_STRING, "description": "A non-mapping router that matched"},
        }, description="Where Celery's router sends the task"),
        "DispatchAccepted": _object({
            "task_id": STRING, "queue": STRING, "name": STRING, "routing_key": STRING, "exchange": STRING,
            "route": _ref("Route"),
            "options": _object({"queue": STRING, "countdown": NUMBER, "eta": STRING,
                                "expires": {"type": ["number", "string"]}, "priority": INTEGER},
                               optional=OPTION_NAMES, description="The options sent (times in ISO 8601)"),
            "url": {"type": "string", "description": "The task's page"},
        }),
        "Catalog": _object({"tasks": _array(_object({
            "name": STRING, "description": STRING, "queue": OPT_STRING,
            "route": {"anyOf": [_ref("Route"), {"type": "null"}]},
            "route_error": {"type": "string", "description": "Why the route could not be resolved (queue and "
                                                               "route are null then)"},
            "params": _array(_object({
                "name": STRING, "type": {"enum": list(PARAM_TYPES)}, "required": BOOLEAN, "description": STRING,
                "default": {"description": "Present only when the catalog gives one"},
            }, optional=("default",))),
        }, optional=("route_error",)))}),
        "TimelineEntry": _object({"type": {"enum": list(TASK_EVENT_TYPES)}, "timestamp": NUMBER,
                                  "hostname": OPT_STRING, "detail": OPT_STRING}),
        "Task": _object({
            "id": STRING, "name": OPT_STRING, "state": {"enum": list(EVENT_STATES)},
            "queue": OPT_STRING, "exchange": OPT_STRING, "routing_key": OPT_STRING, "worker": OPT_STRING,
            "args": OPT_STRING, "kwargs": OPT_STRING, "result": OPT_STRING, "exception": OPT_STRING,
            "traceback": OPT_STRING, "runtime": OPT_NUMBER, "retries": INTEGER, "eta": OPT_STRING,
            "expires": OPT_STRING, "root_id": OPT_STRING, "parent_id": OPT_STRING, "not_registered": BOOLEAN,
            "timestamps": _object(timestamps, description="When each event type last happened"),
            "timeline": _array(_ref("TimelineEntry")),
        }, description="A task as the events describe it; args, kwargs and result are the events' text, clipped"),
        "TaskPage": _object({"tasks": _array(_ref("Task")), "total": INTEGER, "limit": INTEGER, "offset": INTEGER}),
        "Worker": _object({
            "hostname": STRING, "status": {"enum": ["online", "offline"]},
            "last_heartbeat": OPT_NUMBER, "heartbeat_expires": OPT_NUMBER, "freq": NUMBER, "pid": OPT_INTEGER,
            "active": OPT_INTEGER, "processed": OPT_INTEGER,
            "loadavg": {"type": ["array", "null"], "items": NUMBER},
            "pool": {"type": ["object", "null"], "description": "From inspect stats"},
            "queues": {"type": ["array", "null"], "items": STRING},
            "registered": {"type": ["array", "null"], "items": STRING},
            "stats": {"type": ["object", "null"], "description": "inspect stats, as the worker answered"},
            "inspected_at": OPT_NUMBER,
            "sw": _object({"ident": OPT_STRING, "ver": OPT_STRING, "sys": OPT_STRING}),
        }),
        "Workers": _object({"workers": _array(_ref("Worker"))}),
        "Gap": _object({"started": NUMBER, "ended": OPT_NUMBER, "reason": STRING, "detected": OPT_NUMBER,
                        "resynced": OPT_NUMBER},
                       description="A time when events may have been lost: from the last moment the stream was "
                                   "known whole (started) to the new subscription (ended); detected is when the "
                                   "cut was noticed, resynced when task states were recovered after it"),
        "Status": _object({
            "broker": {"enum": [status.value for status in BrokerStatus]}, "since": NUMBER, "detail": STRING,
            "reconnects": INTEGER, "gaps_total": INTEGER, "gaps": _array(_ref("Gap")),
            "counts": _object({"tasks": INTEGER, "by_state": {"type": "object", "additionalProperties": INTEGER},
                               "workers": INTEGER, "workers_online": INTEGER, "events": INTEGER,
                               "tasks_evicted": INTEGER}),
        }, description="The event stream's connection, its recent gaps, and what is retained"),
        "TaskRouting": _object({
            "task": STRING, "api_queue": STRING, "api_pattern": OPT_STRING,
            "api_source": {"enum": [source for source in get_args(RouteSource) if source != "override"]},
            "worker_route": OPT_STRING,
            "worker_routes": {"type": "object", "additionalProperties": INTEGER,
                              "description": "queue -> online workers routing the task there"},
            "drifting_workers": {"type": "object", "additionalProperties": STRINGS,
                                 "description": "queue -> workers whose own routes disagree with the API's"},
            "consumers": STRINGS, "registered_on": STRINGS,
            "status": {"enum": list(get_args(TaskStatus))}, "problems": _array({"enum": list(SEVERITY)}),
            "explanations": STRINGS, "sent": BOOLEAN,
        }),
        "QueueRouting": _object({
            "name": STRING, "depth": OPT_INTEGER, "consumers": STRINGS, "routed_tasks": STRINGS,
            "status": {"enum": list(get_args(QueueStatus))}, "has_consumers": BOOLEAN, "is_default": BOOLEAN,
            "offline_consumers": STRINGS, "note": OPT_STRING,
        }),
        "Routing": _object({
            "tasks": _array(_ref("TaskRouting")), "queues": _array(_ref("QueueRouting")),
            "default_queue": STRING, "consistent": {"type": ["boolean", "null"]}, "offline_workers": STRINGS,
            "inspected_at": OPT_NUMBER, "compared_at": OPT_NUMBER, "broker_error": OPT_STRING,
            "inspect_error": OPT_STRING,
        }, description="The comparison of API routes and workers; until the first comparison tasks and queues are "
                       "empty and consistent is null (not known yet)"),
        "Alert": _object({
            "kind": {"enum": list(ALERT_KINDS)}, "key": STRING, "queue": STRING, "task": STRING, "depth": INTEGER,
            "since": NUMBER, "since_iso": STRING, "raised_at": NUMBER, "updated_at": NUMBER, "cleared_at": NUMBER,
            "message": STRING,
        }, optional=("queue", "task", "depth", "cleared_at")),
        "AuditEntry": _object({
            "id": OPT_INTEGER, "at": NUMBER, "time": {"type": "string", "description": "`at` in ISO 8601 UTC"},
            "who": STRING, "source": {"enum": list(SOURCES)}, "remote_addr": OPT_STRING, "name": STRING,
            "args": {"type": "string", "description": "JSON text (no longer valid JSON when cut)"},
            "kwargs": STRING, "options": STRING, "queue": OPT_STRING, "forced": BOOLEAN,
            "outcome": {"enum": list(OUTCOMES)}, "task_id": OPT_STRING, "error": OPT_STRING,
        }),
        "AuditPage": _object({"entries": _array(_ref("AuditEntry")), "total": INTEGER, "limit": INTEGER,
                              "offset": INTEGER, "write_errors": INTEGER}),
    }


def _paths() -> Schema:
    read_401 = {"401": {"$ref": "#/components/responses/Unauthorized"}}
    write_40x = {**read_401, "403": {"$ref": "#/components/responses/Forbidden"}}
    too_large = {"413": _error(f"The body is larger than {MAX_BODY_BYTES} bytes")}

    def get(operation_id: str, tag: str, summary: str, ok: Schema, **more: Any) -> Schema:
        return {"get": {"operationId": operation_id, "tags": [tag], "summary": summary,
                        "responses": {"200": ok, **more.pop("responses", {}), **read_401}, **more}}

    return {
        "/api/dispatch": {"post": {
            "operationId": "dispatchTask", "tags": ["dispatch"], "summary": "Publish one task by name",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("DispatchRequest")}}},
            "responses": {
                "202": _json(_ref("DispatchAccepted"), "Published: the broker has the message"),
                "400": _json(_ref("DispatchInvalid"), "Not sent: the body is not valid (see fields), or "
                                                      "Celery's router could not resolve a queue"),
                "409": _json(_ref("DispatchRefused"), "Not sent: no online worker would take it there"),
                **too_large,
                "503": _error("Not sent: the broker did not take the message in time"),
                **write_40x,
            },
        }},
        "/api/catalog": get("getCatalog", "dispatch", "The catalog's tasks, their params and queues",
                            _json(_ref("Catalog"), "The catalog")),
        "/api/tasks": get(
            "listTasks", "tasks", "Retained tasks, newest first", _json(_ref("TaskPage"), "One page"),
            parameters=[
                _query("state", {"enum": list(EVENT_STATES)}, "Only tasks in this state (case-insensitive)"),
                _filter("name", 255, "Task name"), _filter("queue", 255, "Queue"),
                _filter("worker", 255, "Worker hostname"),
                *_paging(views.PAGE_SIZE, TASKS_MAX_LIMIT, query.MAX_OFFSET),
            ],
            responses={"400": _error("A filter or paging parameter cannot be used")},
        ),
        "/api/tasks/{task_id}": get(
            "getTask", "tasks", "One retained task with its timeline", _json(_ref("Task"), "The task"),
            parameters=[_path("task_id", "The task id ('/' allowed after the first character)", EXAMPLE_TASK_ID)],
            responses={"404": _error("Never seen or evicted, or an id the route cannot match (see task_id)")},
        ),
        "/api/workers": get("listWorkers", "workers", "Every worker seen, online or offline",
                            _json(_ref("Workers"), "The workers")),
        "/api/status": get("getStatus", "monitoring", "The event stream's connection and what is retained",
                           _json(_ref("Status"), "The status")),
        "/api/routing": get("getRouting", "routing", "API routes compared with what the workers do",
                            _json(_ref("Routing"), "The comparison")),
        "/api/alerts": get("listAlerts", "routing", "Active alerts, oldest first",
                           _json(_array(_ref("Alert")), "The alerts")),
        "/api/queues/{queue}/consumers": {"post": {
            "operationId": "addConsumer", "tags": ["routing"], "summary": "Tell an online worker to consume a queue",
            "parameters": [_path("queue", "The queue name", "llm-gpu")],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["worker"], "properties": {"worker": {
                    "type": "string", "description": "An online worker's hostname"}},
                "example": {"worker": EXAMPLE_WORKER}}}}},
            "responses": {
                "200": _json(_object({"ok": STRING}), "The worker's answer"),
                "400": _error("Not a JSON object with a worker; not a queue name; or the worker is not online"),
                "404": _error("No such route: the queue name starts with '/' or holds a line break"),
                "409": _error("Routing is not monitored here, or the worker refused"),
                **too_large,
                "503": _error("The broker did not take the command"),
                "504": _error("The worker did not answer in time"),
                **write_40x,
            },
        }},
        "/api/audit": get(
            "listAuditEntries", "audit", "Dispatch attempts, newest first", _json(_ref("AuditPage"), "One page"),
            parameters=[
                *(_filter(key, query.MAX_FILTER_CHARS, key.replace("_", " ").capitalize())
                  for key in ("name", "who", "queue", "task_id")),
                _query("outcome", {"enum": list(OUTCOMES)}, "Only this outcome (case-insensitive)"),
                *(_query(key, {"anyOf": [NUMBER, {"type": "string", "format": "date-time"}]},
                         f"Entries at or after / before this time: epoch seconds or ISO 8601 ({key})")
                  for key in audit.TIME_KEYS),
                *_paging(audit.PAGE_SIZE, MAX_QUERY_LIMIT, query.MAX_OFFSET),
            ],
            responses={"400": _error("A filter or paging parameter cannot be used"),
                       "404": _error("Auditing is off"),
                       "503": _error("The audit log cannot be read")},
        ),
        "/healthz": get("healthz", "health", "Liveness: 200 while the app serves requests",
                        _json(_object({"status": {"const": "ok"}}), "Serving")),
        "/metrics": get("metrics", "health", "Prometheus metrics",
                        {"description": "Prometheus text exposition",
                         "content": {"text/plain": {"schema": STRING}}}),
        "/openapi.json": get("getOpenapi", "health", "This document",
                             _json({"type": "object"}, "OpenAPI 3.1")),
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
        "tags": [{"name": name} for name in ("dispatch", "tasks", "workers", "monitoring", "routing", "audit",
                                             "health")],
        "security": security,
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "responses": {
                "Unauthorized": {
                    **_error("No credentials, or wrong ones"),
                    "headers": {"WWW-Authenticate": {"schema": STRING, "description": "Basic realm=..."}},
                },
                "Forbidden": _error("Cross-site request, missing CSRF token, or a viewer trying to change "
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
