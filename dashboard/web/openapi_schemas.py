"""The OpenAPI document's building blocks and its component schemas (declarative: the spec as data)."""

from __future__ import annotations

import re
from typing import Any, get_args

from ..model.alerts import ALERT_KINDS
from ..model.catalog import PARAM_TYPES
from ..model.dispatch import AUDIT_OUTCOMES, MAX_ARGS, MAX_DELAY_SECONDS, MAX_JSON_DEPTH, OPTION_NAMES, PRIORITY_RANGE
from ..model.messages import MAX_SELECT_IDS
from ..model.routing import SEVERITY, QueueStatus, RouteSource, TaskStatus
from ..model.state.tasks import EVENT_STATES, TASK_EVENT_TYPES, TIMESTAMP_KEYS
from ..services.audit import ACTION_OUTCOMES, SOURCES
from ..services.events.listener import BrokerStatus
from . import live

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
ALERT_MARK_FIELDS: Schema = {
    "acknowledged_by": {**OPT_STRING, "description": "Who acknowledged this occurrence of the alert"},
    "acknowledged_at": OPT_NUMBER,
    "silenced_by": {**OPT_STRING, "description": "Who silenced the alert key (no webhooks until silenced_until)"},
    "silenced_until": OPT_NUMBER,
}

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


def ref_to(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def object_of(properties: Schema, *, optional: tuple[str, ...] = (), description: str | None = None) -> Schema:
    """A closed object: every property required unless named in `optional`, no others allowed."""
    schema: Schema = {"type": "object", "properties": properties,
                      "required": [key for key in properties if key not in optional],
                      "additionalProperties": False}
    if description:
        schema["description"] = description
    return schema


def array_of(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def json_body(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error_answer(description: str) -> Schema:
    return json_body(ref_to("Error"), description)


def query_param(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def path_param(name: str, description: str, example: str) -> Schema:
    # Werkzeug's `path` converter, "[^/].*?", whose "." stops at a line break; "/" may follow the first character.
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "pattern": PATH_VALUE_PATTERN}, "example": example}


def filter_param(name: str, max_chars: int, description: str) -> Schema:
    return query_param(name, {"type": "string", "maxLength": max_chars}, f"{description} (exact match; blank: any)")


def paging_params(default: int, maximum: int, max_offset: int) -> list[Schema]:
    limit = {"type": "integer", "minimum": 1, "maximum": maximum, "default": default}
    return [query_param("limit", limit, "Page size"),
            query_param("offset", {"type": "integer", "minimum": 0, "maximum": max_offset, "default": 0}, "To skip")]


def schemas() -> Schema:
    # One literal, one entry per schema, is the readable form of a spec: longer than 60 lines on purpose.
    """Request and response bodies; the to_dict shapes are closed objects."""
    timestamps = {key: OPT_NUMBER for key in TIMESTAMP_KEYS}
    seconds = {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_DELAY_SECONDS}
    return {
        "Error": object_of({"error": STRING}, description="Any error: one line for a person"),
        "DispatchInvalid": object_of({"error": STRING, "fields": {
            "type": "object", "additionalProperties": STRING,
            "description": "Field ('name', 'args', 'kwargs.x', 'options.eta', '' for the body) -> why"}},
            optional=("fields",), description="The dispatch was refused as invalid; nothing was sent"),
        "DispatchRefused": object_of({"error": STRING, "warnings": STRINGS, "queue": STRING},
                                   description='Nobody would take it there; send again with "force": true'),
        "DispatchRequest": {**object_of({
            "name": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": TASK_NAME_PATTERN,
                     "description": "The task's registered name"},
            "args": {"type": "array", "maxItems": MAX_ARGS, "default": [],
                     "description": f"Positional arguments (JSON nested at most {MAX_JSON_DEPTH} deep)"},
            "kwargs": {"type": "object", "propertyNames": {"pattern": IDENTIFIER_PATTERN}, "default": {},
                       "description": "Keyword arguments; a catalog task's are type-checked"},
            "options": {"anyOf": [ref_to("DispatchOptions"), {"type": "null"}]},
            "force": {"type": "boolean", "default": False,
                      "description": "Send even where no online worker consumes or registers the task"},
        }, optional=("args", "kwargs", "options", "force")),
            "example": {"name": "worker.tasks.link.unfurl", "kwargs": {"url": "https://example.com/post"}}},
        "DispatchOptions": object_of({
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
        "Route": object_of({
            "queue": STRING, "exchange": STRING, "routing_key": STRING,
            "matched": {"enum": ["override", "route", "default"],
                        "description": "An options.queue override, a task_routes entry, or the default queue"},
            "pattern": {**OPT_STRING, "description": "The task_routes key that matched"},
            "router": {**OPT_STRING, "description": "A non-mapping router that matched"},
        }, description="Where Celery's router sends the task"),
        "DispatchAccepted": object_of({
            "task_id": STRING, "queue": STRING, "name": STRING, "routing_key": STRING, "exchange": STRING,
            "route": ref_to("Route"),
            "options": object_of({"queue": STRING, "countdown": NUMBER, "eta": STRING,
                                "expires": {"type": ["number", "string"]}, "priority": INTEGER},
                               optional=OPTION_NAMES, description="The options sent (times in ISO 8601)"),
            "url": {"type": "string", "description": "The task's page"},
        }),
        "Catalog": object_of({"tasks": array_of(object_of({
            "name": STRING, "description": STRING, "queue": OPT_STRING,
            "route": {"anyOf": [ref_to("Route"), {"type": "null"}]},
            "route_error": {"type": "string", "description": "Why the route could not be resolved (queue and "
                                                               "route are null then)"},
            "params": array_of(object_of({
                "name": STRING, "type": {"enum": list(PARAM_TYPES)}, "required": BOOLEAN, "description": STRING,
                "default": {"description": "Present only when the catalog gives one"},
            }, optional=("default",))),
        }, optional=("route_error",)))}),
        "TimelineEntry": object_of({"type": {"enum": list(TASK_EVENT_TYPES)}, "timestamp": NUMBER,
                                  "hostname": OPT_STRING, "detail": OPT_STRING}),
        "Task": object_of({
            "id": STRING, "name": OPT_STRING, "state": {"enum": list(EVENT_STATES)},
            "queue": OPT_STRING, "exchange": OPT_STRING, "routing_key": OPT_STRING, "worker": OPT_STRING,
            "args": OPT_STRING, "kwargs": OPT_STRING, "result": OPT_STRING, "exception": OPT_STRING,
            "traceback": OPT_STRING, "runtime": OPT_NUMBER, "retries": INTEGER, "eta": OPT_STRING,
            "expires": OPT_STRING, "root_id": OPT_STRING, "parent_id": OPT_STRING, "not_registered": BOOLEAN,
            "timestamps": object_of(timestamps, description="When each event type last happened"),
            "timeline": array_of(ref_to("TimelineEntry")),
        }, description="A task as the events describe it; args, kwargs and result are the events' text, clipped"),
        "TaskPage": object_of({"tasks": array_of(ref_to("Task")), "total": INTEGER, "limit": INTEGER,
                               "offset": INTEGER,
                               "capped": {"type": "boolean",
                                          "description": "total is a lower bound: a search stops counting there"},
                               "source": {"enum": ["memory", "history"]}}),
        "Worker": object_of({
            "hostname": STRING, "status": {"enum": ["online", "offline"]},
            "last_heartbeat": OPT_NUMBER, "heartbeat_expires": OPT_NUMBER, "freq": NUMBER, "pid": OPT_INTEGER,
            "active": OPT_INTEGER, "processed": OPT_INTEGER,
            "loadavg": {"type": ["array", "null"], "items": NUMBER},
            "pool": {"type": ["object", "null"], "description": "From inspect stats"},
            "queues": {"type": ["array", "null"], "items": STRING},
            "registered": {"type": ["array", "null"], "items": STRING},
            "stats": {"type": ["object", "null"], "description": "inspect stats, as the worker answered"},
            "inspected_at": OPT_NUMBER,
            "sw": object_of({"ident": OPT_STRING, "ver": OPT_STRING, "sys": OPT_STRING}),
        }),
        "Workers": object_of({"workers": array_of(ref_to("Worker"))}),
        "Readiness": object_of({"status": {"enum": ["ready", "not ready"]}, "broker": STRING,
                                "inspected": BOOLEAN}, description="GET /readyz: ready for traffic or not, and why"),
        "Gap": object_of({"started": NUMBER, "ended": OPT_NUMBER, "reason": STRING, "detected": OPT_NUMBER,
                        "resynced": OPT_NUMBER},
                       description="A time when events may have been lost: from the last moment the stream was "
                                   "known whole (started) to the new subscription (ended); detected is when the "
                                   "cut was noticed, resynced when task states were recovered after it"),
        "Status": object_of({
            "broker": {"enum": [status.value for status in BrokerStatus]}, "since": NUMBER, "detail": STRING,
            "reconnects": INTEGER, "gaps_total": INTEGER, "gaps": array_of(ref_to("Gap")),
            "counts": object_of({"tasks": INTEGER, "by_state": {"type": "object", "additionalProperties": INTEGER},
                               "workers": INTEGER, "workers_online": INTEGER, "events": INTEGER,
                               "tasks_evicted": INTEGER}),
            "history": {"type": "object", "description": "enabled; when on: store, where, role (writer/reader), "
                        "degraded, pending, dropped, written, write_errors, write_lag_seconds, last_write, "
                        "restored, restoring, tasks, bytes"},
            "notifications": object_of({
                "webhooks": array_of(ref_to("Webhook")), "suppressed": INTEGER,
                "marks_shared": {"type": "boolean", "description": "Acknowledgements and silences shared by the "
                                                                   "replicas through Redis"}}),
        }, description="The event stream's connection, its recent gaps, what is retained, history's state and the "
                       "alert webhooks"),
        "TaskRouting": object_of({
            "task": STRING, "api_queue": STRING, "api_pattern": OPT_STRING,
            "api_source": {"enum": [source for source in get_args(RouteSource) if source != "override"]},
            "worker_route": OPT_STRING,
            "worker_routes": {"type": "object", "additionalProperties": INTEGER,
                              "description": "queue -> online workers routing the task there"},
            "drifting_workers": {"type": "object", "additionalProperties": STRINGS,
                                 "description": "queue -> workers whose own routes disagree with the API's"},
            "consumers": STRINGS, "registered_on": STRINGS,
            "status": {"enum": list(get_args(TaskStatus))}, "problems": array_of({"enum": list(SEVERITY)}),
            "explanations": STRINGS, "sent": BOOLEAN,
        }),
        "QueueRouting": object_of({
            "name": STRING, "depth": OPT_INTEGER, "consumers": STRINGS, "routed_tasks": STRINGS,
            "status": {"enum": list(get_args(QueueStatus))}, "has_consumers": BOOLEAN, "is_default": BOOLEAN,
            "offline_consumers": STRINGS, "note": OPT_STRING,
        }),
        "Routing": object_of({
            "tasks": array_of(ref_to("TaskRouting")), "queues": array_of(ref_to("QueueRouting")),
            "default_queue": STRING, "consistent": {"type": ["boolean", "null"]}, "offline_workers": STRINGS,
            "inspected_at": OPT_NUMBER, "compared_at": OPT_NUMBER, "broker_error": OPT_STRING,
            "inspect_error": OPT_STRING,
        }, description="The comparison of API routes and workers; until the first comparison tasks and queues are "
                       "empty and consistent is null (not known yet)"),
        "Alert": object_of({
            "kind": {"enum": list(ALERT_KINDS)}, "key": STRING, "queue": STRING, "task": STRING, "depth": INTEGER,
            "since": NUMBER, "since_iso": STRING, "raised_at": NUMBER, "updated_at": NUMBER, "cleared_at": NUMBER,
            "message": STRING, **ALERT_MARK_FIELDS,
        }, optional=("queue", "task", "depth", "cleared_at", *ALERT_MARK_FIELDS)),
        "QueueMessage": object_of({
            "id": OPT_STRING, "name": OPT_STRING,
            "args": {"description": "A list when decoded; the cut JSON or repr text when long or not JSON"},
            "kwargs": {"description": "An object when decoded; the cut JSON or repr text when long or not JSON"},
            "eta": OPT_STRING, "priority": OPT_INTEGER,
            "registered": {"type": "boolean", "description": "An online worker registers this name"},
            "retries": OPT_INTEGER, "expires": OPT_STRING,
            "sent_at": {"type": ["number", "null"], "description": "From the task-sent event, when seen"},
            "protocol": {"enum": [1, 2, None]}, "content_type": STRING, "parent_id": OPT_STRING,
            "root_id": OPT_STRING, "origin": OPT_STRING, "redelivered": BOOLEAN,
            "truncated": {"type": "boolean", "description": "args or kwargs were cut, or only a repr is known"},
            "problem": OPT_STRING, "target": {"type": ["string", "null"], "description":
                                              "Where the workers' routes (else the API's) send this name"},
            "did_you_mean": {"type": ["string", "null"],
                             "description": "For a name nobody registers: the registered name it likely misspells"},
        }),
        "QueueMessages": object_of({
            "queue": STRING, "depth": INTEGER, "offset": INTEGER, "limit": INTEGER,
            "messages": array_of(ref_to("QueueMessage")),
            "exists": {"type": "boolean", "description": "False: nothing waits (an empty Redis queue is no key)"},
            "registered_known": {"type": "boolean", "description": "False before the first worker inspection"},
            "requeued": {"type": "boolean", "description": "Read by taking and requeueing (RabbitMQ)"},
            "suggested_target": OPT_STRING,
        }),
        "QueueCannotPeek": object_of({"error": STRING, "queue": STRING, "depth": INTEGER},
                                     optional=("queue", "depth")),
        "QueueActionFailed": object_of({"error": STRING, "moved": INTEGER, "purged": INTEGER, "deleted": INTEGER},
                                       optional=("moved", "purged", "deleted"),
                                       description="The count says how many were handled before a broker failure"),
        "QueueMove": {**object_of({
            "to": {"type": "string", "minLength": 1, "maxLength": 255, "description": "The target queue"},
            "name": {"type": "string", "maxLength": 255, "description": "Only the messages of this task name"},
            "ids": {"type": "array", "items": STRING, "minItems": 1, "maxItems": MAX_SELECT_IDS,
                    "description": "Only these task ids"},
            "limit": {"type": "integer", "minimum": 1, "description": "At most this many, oldest first"},
        }, optional=("name", "ids", "limit")), "example": {"to": "llm", "name": "worker.tasks.llm.summarize"}},
        "QueuePurge": {**object_of({"confirm": {"type": "string", "description": "The queue's name, again"}}),
                       "example": {"confirm": "llm-gpu"}},
        "QueueDelete": {**object_of({
            "name": {"type": "string", "minLength": 1, "maxLength": 255, "description": "The task name"},
            "ids": {"type": "array", "items": STRING, "minItems": 1, "maxItems": MAX_SELECT_IDS},
            "limit": {"type": "integer", "minimum": 1},
        }, optional=("ids", "limit")), "example": {"name": "worker.tasks.llm.sumarize"}},
        "AlertMarked": object_of({"ok": STRING, "key": STRING, **ALERT_MARK_FIELDS},
                                 description="The alert key's acknowledgement and silence after the action"),
        "Webhook": object_of({
            "name": STRING, "url": {"type": "string", "description": "Scheme, host and port only (the rest is masked)"},
            "events": STRINGS, "kinds": {"type": ["array", "null"], "items": STRING},
            "sent": INTEGER, "failed": INTEGER, "retries": INTEGER, "dropped": INTEGER, "pending": INTEGER,
            "last_error": OPT_STRING, "last_error_at": OPT_NUMBER, "last_sent_at": OPT_NUMBER,
        }, description="One alert webhook's deliveries: sent (2xx), failed (given up after the last attempt)"),
        "AuditEntry": object_of({
            "id": OPT_INTEGER, "at": NUMBER, "time": {"type": "string", "description": "`at` in ISO 8601 UTC"},
            "who": STRING, "source": {"enum": list(SOURCES)}, "remote_addr": OPT_STRING, "name": STRING,
            "args": {"type": "string", "description": "JSON text (no longer valid JSON when cut)"},
            "kwargs": STRING, "options": STRING, "queue": OPT_STRING, "forced": BOOLEAN,
            "outcome": {"enum": list(AUDIT_OUTCOMES)}, "task_id": OPT_STRING, "error": OPT_STRING,
        }),
        "AuditPage": object_of({"entries": array_of(ref_to("AuditEntry")), "total": INTEGER, "limit": INTEGER,
                              "offset": INTEGER, "write_errors": INTEGER}),
        "Stats": object_of({
            "window": {"enum": ["hour", "day", "week"]}, "start": NUMBER, "step_seconds": INTEGER, "points": INTEGER,
            "tasks": array_of(object_of({"name": STRING, "totals": {"type": "object"},
                                         "series": array_of({"type": "object"})})),
            "queues": array_of(object_of({"queue": STRING, "totals": {"type": "object"},
                                          "series": array_of({"type": "object"}),
                                          "depth": array_of({"type": "object"})})),
        }),
        "ActionEntry": object_of({
            "id": OPT_INTEGER, "at": NUMBER, "time": STRING, "who": STRING, "source": {"enum": list(SOURCES)},
            "remote_addr": OPT_STRING, "action": STRING, "target": STRING,
            "detail": {"type": "string", "description": "JSON text: the action's parameters and results"},
            "outcome": {"enum": list(ACTION_OUTCOMES)}, "error": OPT_STRING,
        }),
        "ActionPage": object_of({"entries": array_of(ref_to("ActionEntry")), "total": INTEGER, "limit": INTEGER,
                               "offset": INTEGER, "write_errors": INTEGER}),
    }

