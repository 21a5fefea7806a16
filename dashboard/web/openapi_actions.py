"""The OpenAPI paths and schemas of the actions API (dashboard/web/actions.py), merged into the document."""

from __future__ import annotations

from typing import Any

from ..model.actions import BULK_KINDS, MAX_POOL_STEP, MAX_TIME_LIMIT, SIGNALS
from ..model.state.tasks import EVENT_STATES
from .openapi_schemas import (
    BOOLEAN,
    EXAMPLE_TASK_ID,
    EXAMPLE_WORKER,
    INTEGER,
    NUMBER,
    OPT_NUMBER,
    OPT_STRING,
    STRING,
    STRINGS,
    TASK_NAME_PATTERN,
    Schema,
    array_of,
    error_answer,
    json_body,
    object_of,
    path_param,
    ref_to,
)

HOSTNAME_PATTERN = r"^[^/]+$"  # Werkzeug's default converter: no "/"
OPT_OBJECT: Schema = {"type": ["object", "null"]}
OPT_ARRAY: Schema = {"type": ["array", "null"], "items": {"type": "object"}}
FILTERS = {"state": {"type": "string", "description": f"One of {', '.join(EVENT_STATES)} (case-insensitive)"},
           "name": {"type": "string", "maxLength": 255, "description": "A task name, or a part of names"},
           "queue": {"type": "string", "maxLength": 255}, "worker": {"type": "string", "maxLength": 255}}


def _host() -> Schema:
    return {"name": "hostname", "in": "path", "required": True, "description": "The worker's hostname",
            "schema": {"type": "string", "pattern": HOSTNAME_PATTERN}, "example": EXAMPLE_WORKER}


def _task() -> Schema:
    return path_param("task_id", "The task id", EXAMPLE_TASK_ID)


def _post(operation_id: str, tag: str, summary: str, body: Schema, ok: tuple[str, Schema], errors: Schema,
          parameters: list[Schema]) -> Schema:
    return {"post": {"operationId": operation_id, "tags": [tag], "summary": summary, "parameters": parameters,
                     "requestBody": {"required": False, "content": {"application/json": {"schema": body}}},
                     "responses": {ok[0]: ok[1], **errors}}}


def paths(write_40x: Schema, too_large: Schema) -> Schema:
    """The actions' paths, with the shared 401/403 and 413 answers."""
    refused = json_body(ref_to("ActionError"), "Not done: the message says why (nothing changed)")
    bad = {"400": json_body(ref_to("ActionError"), "The body cannot be used (the message says what to fix)")}
    unavailable = {"503": error_answer("The broker did not take the command")}
    silent = {"504": json_body(ref_to("ActionError"), "No worker answered in time")}
    unknown_worker = {"404": error_answer("No worker with this hostname has been seen")}
    common = {**bad, **too_large, **unavailable, **write_40x}
    no_route = {"404": error_answer("No such route: the id starts with '/' or holds a line break")}

    def command(operation_id: str, summary: str, body: Schema) -> Schema:
        return _post(operation_id, "workers", summary, body, ("200", json_body(object_of({"ok": STRING}),
                                                                                "The worker's answer")),
                     {**common, **unknown_worker, "409": refused, **silent}, [_host()])

    return {
        "/api/tasks/{task_id}/revoke": _post(
            "revokeTask", "tasks", "Revoke a task; with terminate, stop it where it runs (a signal)",
            ref_to("RevokeRequest"), ("200", json_body(ref_to("Revoked"), "The workers marked it revoked")),
            {**common, **no_route, "409": refused, **silent}, [_task()]),
        "/api/tasks/{task_id}/redispatch": _post(
            "redispatchTask", "tasks", "Dispatch a task again as a new task (same arguments unless given)",
            ref_to("RedispatchRequest"), ("202", json_body(ref_to("RedispatchAccepted"), "Published")),
            {**common, **no_route, "409": refused, "422": refused}, [_task()]),
        "/api/tasks/{task_id}/call": {"get": {
            "operationId": "getTaskCall", "tags": ["tasks"], "parameters": [_task()],
            "summary": "How a task was called (exactly, or only as a repr) and its dispatch-again links",
            "responses": {"200": json_body(ref_to("KnownCall"), "The call"),
                          "404": error_answer("No such route"), "401": {"$ref": "#/components/responses/Unauthorized"}},
        }},
        "/api/tasks/bulk/preview": _post(
            "previewBulk", "tasks", "How many tasks a bulk action would take, and which (nothing is done)",
            ref_to("BulkRequest"), ("200", json_body(ref_to("BulkPreview"), "The preview")), common, []),
        "/api/tasks/bulk": _post(
            "startBulk", "tasks", "Start a bulk revoke (unfinished tasks) or dispatch again (failures)",
            ref_to("BulkRequest"), ("202", json_body(ref_to("BulkJob"), "Started: poll its url")),
            {**common, "409": refused}, []),
        "/api/tasks/bulk/{job_id}": {"get": {
            "operationId": "getBulkJob", "tags": ["tasks"], "summary": "A bulk job's progress and outcomes",
            "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": STRING,
                            "description": "The job id from POST /api/tasks/bulk"}],
            "responses": {"200": json_body(ref_to("BulkJob"), "The job"), "404": error_answer("Unknown job"),
                          "401": {"$ref": "#/components/responses/Unauthorized"}},
        }},
        "/api/workers/{hostname}": {"get": {
            "operationId": "getWorker", "tags": ["workers"], "parameters": [_host()],
            "summary": "One worker asked now: pool, queues, registered tasks, active/reserved/scheduled, stats, conf",
            "responses": {"200": json_body(ref_to("WorkerDetail"), "What the worker answered"),
                          **unknown_worker, **unavailable, "504": error_answer("The worker did not answer in time"),
                          "401": {"$ref": "#/components/responses/Unauthorized"}},
        }},
        "/api/workers/{hostname}/pool": command("resizePool", "Grow or shrink the pool by n processes",
                                                 ref_to("PoolRequest")),
        "/api/workers/{hostname}/autoscale": command("autoscale", "Set the autoscale range (--autoscale workers)",
                                                      object_of({"max": INTEGER, "min": INTEGER}, optional=("min",))),
        "/api/workers/{hostname}/consumers": command("workerAddConsumer", "Start consuming a queue",
                                                      object_of({"queue": STRING})),
        "/api/workers/{hostname}/consumers/cancel": command("workerCancelConsumer", "Stop consuming a queue",
                                                             object_of({"queue": STRING})),
        "/api/workers/{hostname}/rate-limit": command(
            "setRateLimit", "Set a task's rate limit (\"\" or \"0\": none)",
            object_of({"task": {"type": "string", "pattern": TASK_NAME_PATTERN}, "rate": STRING})),
        "/api/workers/{hostname}/time-limit": command(
            "setTimeLimit", "Set a task's soft and hard time limits (null: none)",
            object_of({"task": {"type": "string", "pattern": TASK_NAME_PATTERN},
                       "soft": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": MAX_TIME_LIMIT},
                       "hard": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": MAX_TIME_LIMIT}},
                      optional=("soft", "hard"))),
    }


def schemas() -> Schema:
    """The actions' request and answer bodies."""
    signal = {"enum": list(SIGNALS), "default": "SIGTERM", "description": "Also accepted without SIG, any case"}
    call: dict[str, Any] = {
        "name": OPT_STRING, "exact": BOOLEAN, "source": {"enum": ["audit", "backend", "events", "none"]},
        "args": {"type": ["array", "null"]}, "kwargs": OPT_OBJECT, "options": {"type": "object"},
        "args_repr": OPT_STRING, "kwargs_repr": OPT_STRING, "reason": OPT_STRING,
    }
    return {
        "ActionError": object_of({
            "error": STRING, "queue": OPT_STRING, "queue_url": STRING, "call": object_of(call), "warnings": STRINGS,
            "fields": {"type": "object", "additionalProperties": STRING}, "count": INTEGER,
        }, optional=("queue", "queue_url", "call", "warnings", "fields", "count"),
            description="An action not done: why, and what helps (the queue to open, the call as known)"),
        "RevokeRequest": object_of({"terminate": {"type": "boolean", "default": False}, "signal": signal,
                                    "force": {"type": "boolean", "default": False,
                                              "description": "Revoke even where no worker can hear it"}},
                                   optional=("terminate", "signal", "force")),
        "Revoked": object_of({"ok": STRING, "task_id": STRING, "terminate": BOOLEAN, "signal": STRING,
                              "replies": {"type": "object", "additionalProperties": STRING}}),
        "RedispatchRequest": object_of({
            "name": {"type": "string", "pattern": TASK_NAME_PATTERN, "description": "Another name (a typo fixed)"},
            "args": {"type": "array"}, "kwargs": {"type": "object"},
            "options": {"anyOf": [ref_to("DispatchOptions"), {"type": "null"}]}, "force": BOOLEAN},
            optional=("name", "args", "kwargs", "options", "force"),
            description="Without args and kwargs the original's exact ones are used (409 when not known)"),
        "RedispatchAccepted": object_of({
            "task_id": STRING, "queue": STRING, "name": STRING, "routing_key": STRING, "exchange": STRING,
            "route": ref_to("Route"), "options": {"type": "object"}, "url": STRING,
            "original": {"type": "string", "description": "The task dispatched again"},
            "source": {"enum": ["audit", "backend", "events", "none"]}}),
        "KnownCall": object_of({**call, "original": OPT_STRING, "again": STRINGS}),
        "BulkRequest": object_of({
            "action": {"enum": list(BULK_KINDS)}, **FILTERS, "terminate": BOOLEAN, "signal": signal,
            "force": BOOLEAN, "expected": {"type": "integer", "minimum": 0,
                                           "description": "The preview's count: refused (409) if more match now"}},
            optional=("state", "name", "queue", "worker", "terminate", "signal", "force", "expected")),
        "BulkPreview": object_of({
            "action": {"enum": list(BULK_KINDS)}, "filters": {"type": "object"}, "matching": INTEGER,
            "count": INTEGER, "limit": INTEGER, "capped": BOOLEAN, "problem": OPT_STRING,
            "sample": array_of(object_of({"id": STRING, "name": OPT_STRING, "state": STRING, "queue": OPT_STRING}))}),
        "BulkJob": object_of({
            "job": STRING, "action": {"enum": list(BULK_KINDS)}, "filters": {"type": "object"}, "total": INTEGER,
            "done": INTEGER, "counts": {"type": "object", "additionalProperties": INTEGER}, "running": BOOLEAN,
            "who": STRING, "started": NUMBER, "finished": OPT_NUMBER, "error": OPT_STRING,
            "outcomes": array_of(object_of({"id": STRING, "outcome": STRING, "detail": STRING, "task_id": STRING},
                                           optional=("detail", "task_id"))),
            "url": STRING}, optional=("outcomes", "url")),
        "PoolRequest": {"oneOf": [
            object_of({"grow": {"type": "integer", "minimum": 1, "maximum": MAX_POOL_STEP}}),
            object_of({"shrink": {"type": "integer", "minimum": 1, "maximum": MAX_POOL_STEP}})],
            "example": {"grow": 1}},
        "WorkerDetail": object_of({
            "hostname": STRING, "status": {"enum": ["online", "offline"]}, "answered": BOOLEAN,
            "pool": object_of({
                "kind": STRING, "size": {"type": ["integer", "null"]},
                "processes": {"type": ["array", "null"], "items": INTEGER},
                **{key: BOOLEAN for key in ("resize", "autoscale", "terminate", "time_limit")},
                **{f"{key}_why": OPT_STRING for key in ("resize", "autoscale", "terminate", "time_limit")}}),
            "stats": OPT_OBJECT, "queues": OPT_ARRAY,
            "registered": {"type": ["array", "null"], "items": object_of({
                "name": STRING, "rate_limit": OPT_STRING, "time_limit": OPT_STRING, "soft_time_limit": OPT_STRING})},
            "active": OPT_ARRAY, "reserved": OPT_ARRAY, "scheduled": OPT_ARRAY, "conf": OPT_OBJECT,
            "unanswered": STRINGS}),
    }
