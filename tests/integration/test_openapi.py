"""GET /openapi.json against the app itself: the same paths and methods as the URL map, a valid OpenAPI 3.1
document, and (schemathesis) every answer of the real routes has a documented status and matches its schema.

The main app runs open on the sample catalog with a broker port where nothing listens, so a dispatch that passes
validation and the routing guard fails fast with 503 and nothing is ever published. Its state is seeded with
events and one inspection (no event thread runs with live=False, so the test is the state's only writer), so the
task, worker, routing and alert schemas are checked against populated bodies, not empty lists. A second app on
the session's real Redis covers what a dead broker cannot answer: 202 and the add-consumer 504.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import kombu.connection
import kombu.entity
import pytest
import redis
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate as validate_openapi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from werkzeug.security import generate_password_hash

from dashboard import create_app
from dashboard.config import MAX_BODY_BYTES, Config, config_from_mapping, load_config
from dashboard.resources import sample_config
from dashboard.services.client import ClientSettings, SendOnlyClient
from dashboard.services.inspection import InspectionResult, WorkerReport
from dashboard.services.processes import free_port
from dashboard.web import openapi, openapi_schemas
from dashboard.web.auth import PUBLIC_ENDPOINTS
from dashboard.web.context import services

DOCUMENTED_OUTSIDE_API = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
AUTOMATIC_METHODS = frozenset({"HEAD", "OPTIONS"})  # Werkzeug adds these to every GET rule
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
# Not schemathesis's not_a_server_error: the documented 503 (broker down) and 504 (worker silent) are the
# designed answers here. An undocumented status, any 500 included, fails status_code_conformance.
# Nor negative_data_rejection / positive_data_acceptance: the API is lenient on purpose (blank query values mean
# the default, "pending" is a state) and checks across fields the schema cannot express (catalog params, eta).
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance, response_headers_conformance]
SETTINGS = settings(max_examples=30, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
WORKER = openapi_schemas.EXAMPLE_WORKER  # the add-consumer example names it: the examples phase reaches the broker call
GONE = "celery@gone"
UNFURL = "worker.tasks.link.unfurl"
HASH_METHOD = "pbkdf2:sha256:1000"  # fast for tests
VIEWER, VIEWER_PASSWORD = "vi", "vi-password-1"
TOKEN = "openapi-token-7e2f"
PRIORITY_STEPS = (0, 3, 6, 9)  # kombu's Redis priority sub-lists


def openapi_path(rule: str) -> str:
    """`/api/tasks/<path:task_id>` -> `/api/tasks/{task_id}` (written again: the module's must not grade itself)."""
    return re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule)


def open_config(broker_url: str | None = None) -> Config:
    """The sample catalog and routes, open (no users), auditing in memory, alerts at once; a dead broker by default."""
    broker = broker_url or f"redis://127.0.0.1:{free_port()}/0"
    config = load_config(sample_config(), {"CELERY_BROKER_URL": broker, "DASHBOARD_AUDIT_PATH": ":memory:"})
    config = dataclasses.replace(config, result_backend=None, broker_timeout=1.0,
                                 auth=dataclasses.replace(config.auth, users=(), tokens=()),
                                 monitor=dataclasses.replace(config.monitor, alert_grace=0.0))
    assert not config.auth.enabled and config.audit_path == ":memory:"
    assert ":6379/" not in config.broker_url, "a test must not use the Redis on 6379"
    return config


def build_app(config: Config, client: SendOnlyClient | None = None) -> Flask:
    app = create_app(config, client=client, live=False)
    app.config["PROPAGATE_EXCEPTIONS"] = False  # a bug must show as the 500 a client would get, not a raise
    return app


def close_app(app: Flask) -> None:
    rt = services(app)
    rt.monitor.stop()
    rt.client.close()
    if rt.audit is not None:
        rt.audit.close()


def worker_online(app: Flask, hostname: str = WORKER) -> None:
    services(app).monitor.state.apply({
        "type": "worker-online", "hostname": hostname, "timestamp": time.time(), "freq": 3600.0, "pid": 4242,
        "sw_ident": "py-celery", "sw_ver": "5.4.0", "sw_sys": "Linux", "active": 1, "processed": 7,
        "loadavg": [0.5, 0.25, 0.125],
    })


def seed(app: Flask, task_id: str) -> None:
    """Tasks in every kind of end state, an online and an offline worker, one inspection and its comparison."""
    rt = services(app)
    state = rt.monitor.state
    now = time.time()
    worker_online(app)
    state.apply({"type": "worker-online", "hostname": GONE, "timestamp": now - 10, "freq": 2.0})
    state.apply({"type": "worker-offline", "hostname": GONE, "timestamp": now - 5})
    sent: dict[str, Any] = {"type": "task-sent", "uuid": task_id, "name": UNFURL, "args": "()",
            "kwargs": "{'url': 'https://example.com'}", "queue": "default", "exchange": "", "routing_key": "default",
            "root_id": task_id, "hostname": "gen1@api"}
    lifecycle: list[dict[str, Any]] = [
        sent,
        {"type": "task-received", "uuid": task_id, "name": UNFURL, "retries": 0},
        {"type": "task-started", "uuid": task_id},
        {"type": "task-retried", "uuid": task_id, "exception": "ConnectionError('reset')", "traceback": "Tb"},
        {"type": "task-succeeded", "uuid": task_id, "result": "{'title': 'x'}", "runtime": 0.25},
    ]
    for offset, event in enumerate(lifecycle):
        state.apply({"hostname": WORKER, "timestamp": now + offset / 10, **event})
    ends: list[tuple[str, dict[str, Any]]] = [
        ("task-failed", {"exception": "RuntimeError('boom')", "traceback": "Traceback ..."}),
        ("task-revoked", {"terminated": True, "signum": 15}),
        ("task-rejected", {"requeue": True}),
    ]
    for kind, extra in ends:
        state.apply({"type": kind, "uuid": f"{kind}-1", "hostname": WORKER, "timestamp": now, **extra})
    registered = (UNFURL, "worker.tasks.demo.fail", "worker.tasks.stt.transcribe")
    state.update_worker_inspection(WORKER, queues=["default", "stt"], registered=registered,
                                   pool={"max-concurrency": 4}, stats={"pid": 4242, "pool": {"max-concurrency": 4}})
    routing = rt.routing
    assert routing is not None
    routing.store_reports(InspectionResult({WORKER: WorkerReport(
        WORKER, queues=("default", "stt"), registered=registered,
        conf={"task_routes": {"worker.tasks.llm.*": "llm"}, "task_default_queue": "default"}, stats={"pid": 4242},
    )}))
    routing.inspected_at = now
    routing.run_comparison()  # queue depths fail fast (dead broker): broker_error is set, depths unknown


def example_task_id(document: dict[str, Any]) -> str:
    """The document's example task id: seeded, so the examples phase gets a 200 with a timeline."""
    example: str = document["paths"]["/api/tasks/{task_id}"]["get"]["parameters"][0]["example"]
    return example


# Built at import because schemathesis parametrizes the test at the end at collection (its lazy `from_fixture`
# loader reads `Function._nodeid`, which pytest 9.2 no longer has). Nothing connects until `app` seeds it.
APP = build_app(open_config())
API_SCHEMA = schemathesis.openapi.from_wsgi("/openapi.json", APP)


@pytest.fixture(scope="module")
def app() -> Iterator[Flask]:
    seed(APP, example_task_id(openapi.document(APP)))
    try:
        yield APP
    finally:
        close_app(APP)


@pytest.fixture(scope="module")
def document(app: Flask) -> dict[str, Any]:
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json", response.data[:200]
    body: dict[str, Any] = response.get_json()
    return body


def url_map_routes(app: Flask) -> dict[str, set[str]]:
    """Path -> methods for the API's rules, with OpenAPI path templates."""
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.websocket or not (rule.rule.startswith("/api/") or rule.rule in DOCUMENTED_OUTSIDE_API):
            continue
        routes.setdefault(openapi_path(rule.rule), set()).update(set(rule.methods or ()) - AUTOMATIC_METHODS)
    return routes


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield path, method.upper(), operation


# --- the document against the URL map ------------------------------------------------------------------


def test_every_api_route_is_documented_with_its_methods_and_nothing_else(app: Flask, document: dict[str, Any]) -> None:
    routes = url_map_routes(app)
    documented: dict[str, set[str]] = {}
    for path, method, _ in operations(document):
        documented.setdefault(path, set()).add(method)

    assert set(routes) - set(documented) == set(), "routes missing from the document"
    assert set(documented) - set(routes) == set(), "documented paths the app does not serve"
    assert documented == routes
    assert len(routes) >= 13, "the URL map looks too small: did create_app change?"


def test_path_parameters_are_the_rules_arguments(app: Flask, document: dict[str, Any]) -> None:
    arguments = {openapi_path(rule.rule): set(rule.arguments) for rule in app.url_map.iter_rules()}
    for path, method, operation in operations(document):
        declared = {p["name"] for p in operation.get("parameters", ()) if p["in"] == "path"}
        assert declared == arguments[path] == set(re.findall(r"{([^}]+)}", path)), f"{method} {path}"


def test_websockets_are_described_but_not_as_paths(app: Flask, document: dict[str, Any]) -> None:
    websockets = {rule.rule for rule in app.url_map.iter_rules() if rule.websocket}

    assert "/ws/events" in websockets
    assert set(document["x-websockets"]) <= websockets
    assert not websockets & set(document["paths"])
    assert "/ws/events" in document["info"]["description"]


# --- the document is OpenAPI -------------------------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1.")
    validate_openapi(document)  # the OAS 3.1 meta-schema plus openapi-spec-validator's own checks
    API_SCHEMA.validate()  # and schemathesis's loader accepts it


def test_operation_ids_are_unique_and_errors_are_json(document: dict[str, Any]) -> None:
    ids = [operation["operationId"] for _, _, operation in operations(document)]

    assert len(ids) == len(set(ids))
    for path, method, operation in operations(document):
        responses = operation["responses"]
        assert any(code.startswith("2") for code in responses), f"{method} {path}: no success response"
        for code, response in responses.items():
            if code.startswith(("4", "5")):
                ref = response.get("$ref") or response["content"]["application/json"]["schema"]["$ref"]
                assert ref.startswith("#/components/"), f"{method} {path} {code}"


def test_an_open_dashboard_documents_credentials_as_optional(document: dict[str, Any]) -> None:
    assert document["info"]["version"]
    assert {"basicAuth", "bearerAuth"} <= set(document["components"]["securitySchemes"])
    assert {} in document["security"]


# --- authentication, on an app with users ------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded_app() -> Iterator[Flask]:
    config = config_from_mapping({
        "broker_url": f"redis://127.0.0.1:{free_port()}/0",
        "broker_timeout": 1,
        "audit": {"path": ""},
        "auth": {
            "users": [{"name": VIEWER, "password_hash": generate_password_hash(VIEWER_PASSWORD, HASH_METHOD),
                       "role": "viewer"}],
            "tokens": [{"name": "ci", "token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest(),
                        "role": "viewer"}],
        },
    })
    built = build_app(config)
    try:
        yield built
    finally:
        close_app(built)


def sample_url(path: str) -> str:
    return path.replace("{task_id}", "t-1").replace("{queue}", "q1").replace("{key}", "orphaned_queue:q1")


def test_with_users_credentials_are_required_except_on_public_endpoints(guarded_app: Flask) -> None:
    document = openapi.document(guarded_app)
    public = {openapi_path(rule.rule) for rule in guarded_app.url_map.iter_rules()
              if rule.endpoint in PUBLIC_ENDPOINTS}
    client = guarded_app.test_client(use_cookies=False)

    assert {} not in document["security"]
    for path, method, operation in operations(document):
        response = client.open(sample_url(path), method=method)
        where = f"{method} {path}: {response.status_code} {response.data[:120]!r}"
        assert str(response.status_code) in operation["responses"], where
        if path in public:
            assert operation["security"] == [] and response.status_code not in (401, 403), where
        else:
            assert "security" not in operation and response.status_code == 401, where
            assert set(response.get_json()) == {"error"}, where
            assert response.headers["WWW-Authenticate"].startswith("Basic "), where


def test_a_viewer_may_read_but_gets_the_documented_403_on_every_post(guarded_app: Flask) -> None:
    document = openapi.document(guarded_app)
    client = guarded_app.test_client(use_cookies=False)

    for path, method, operation in operations(document):
        response = client.open(sample_url(path), method=method, json={}, headers={"Authorization": f"Bearer {TOKEN}"})
        where = f"{method} {path}: {response.status_code} {response.data[:120]!r}"
        assert str(response.status_code) in operation["responses"], where
        unsafe = method in ("POST", "DELETE")
        assert response.status_code == 403 if unsafe else response.status_code not in (401, 403), where


# --- the real routes against the document (schemathesis) ------------------------------------------------


def test_the_seeded_bodies_are_populated(app: Flask) -> None:
    """The schemas are only as good as what they are checked against: not empty lists."""
    client = app.test_client(use_cookies=False)

    assert len(client.get("/api/tasks").get_json()["tasks"]) == 4
    assert {w["status"] for w in client.get("/api/workers").get_json()["workers"]} == {"online", "offline"}
    routing = client.get("/api/routing").get_json()
    assert routing["tasks"] and routing["queues"] and routing["inspected_at"] and "default_queue" in routing
    assert client.get("/api/alerts").get_json(), "no alert raised: the alert schema would go unchecked"


@pytest.mark.parametrize("path", ["/api/tasks", "/api/workers", "/api/routing", "/api/alerts", "/api/status",
                                  "/api/catalog", "/healthz", "/metrics", "/openapi.json"])
def test_populated_answers_conform(app: Flask, path: str) -> None:
    response = API_SCHEMA[path]["GET"].Case().call_and_validate(checks=CHECKS)

    assert response.status_code == 200


def test_a_catalog_task_whose_route_fails_is_listed_with_the_reason(document: dict[str, Any]) -> None:
    # A client app with task_create_missing_queues off and a route to a queue it does not declare: Celery's
    # router refuses that name. The catalog still answers 200, with the reason on that task alone.
    config = dataclasses.replace(open_config(), routes={"worker.tasks.llm.*": {"queue": "nowhere"}})
    settings = ClientSettings.from_config(config)
    strict = SendOnlyClient(dataclasses.replace(settings, task_create_missing_queues=False,
                                                task_queues=[kombu.entity.Queue("default"), kombu.entity.Queue("stt")]))
    app = build_app(config, strict)
    try:
        response = app.test_client().get("/api/catalog")
    finally:
        close_app(app)

    assert response.status_code == 200, response.data
    body = response.get_json()
    jsonschema.validate(body, {"$ref": "#/components/schemas/Catalog", "components": document["components"]})
    tasks = {task["name"]: task for task in body["tasks"]}
    broken = tasks["worker.tasks.llm.summarize_note"]
    assert (broken["queue"], broken["route"]) == (None, None) and "nowhere" in broken["route_error"]
    assert tasks["worker.tasks.stt.transcribe"]["queue"] == "default"  # no route left for it: the default
    assert "route_error" not in tasks["worker.tasks.stt.transcribe"]


def test_the_example_task_conforms(app: Flask, document: dict[str, Any]) -> None:
    case = API_SCHEMA["/api/tasks/{task_id}"]["GET"].Case(path_parameters={"task_id": example_task_id(document)})

    response = case.call_and_validate(checks=CHECKS)

    assert response.status_code == 200 and len(response.json()["timeline"]) == 5


@pytest.mark.parametrize(("path", "path_parameters"), [("/api/dispatch", None),
                                                     ("/api/queues/{queue}/consumers", {"queue": "q1"})])
def test_a_body_over_the_limit_gets_the_documented_413(app: Flask, path: str, path_parameters: Any) -> None:
    case = API_SCHEMA[path]["POST"].Case(path_parameters=path_parameters,
                                         body={"name": UNFURL, "worker": WORKER, "args": ["x" * MAX_BODY_BYTES]})

    response = case.call_and_validate(checks=CHECKS)

    assert response.status_code == 413


@API_SCHEMA.parametrize()
@SETTINGS
def test_api_answers_match_the_document(case: schemathesis.Case[Any], app: Flask) -> None:
    response = case.call_and_validate(checks=CHECKS)

    assert response.status_code != 500, response.text[:300]


# --- a real broker: 202 and 504 ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_app(broker_url: str) -> Iterator[tuple[Flask, str]]:
    """The dashboard on the session's Redis; every dispatch is forced into a queue nobody consumes, removed after."""
    built = build_app(open_config(broker_url))
    queue = f"openapi-{uuid.uuid4().hex[:8]}"
    conn = redis.Redis.from_url(broker_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        yield built, queue
    finally:
        close_app(built)
        keys = [queue if step == 0 else f"{queue}\x06\x16{step}" for step in PRIORITY_STEPS]
        conn.delete(*keys, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
        conn.close()


def test_published_dispatches_conform(live_app: tuple[Flask, str]) -> None:
    app, queue = live_app
    operation = schemathesis.openapi.from_wsgi("/openapi.json", app)["/api/dispatch"]["POST"]
    soon = datetime.now(UTC) + timedelta(hours=1)
    statuses: list[int] = []

    explicit: list[dict[str, Any]] = [
        {"countdown": 5, "expires": 60, "priority": 3},
        {"eta": soon.isoformat(), "expires": (soon + timedelta(hours=1)).isoformat()},
    ]
    for options in explicit:
        body: dict[str, Any] = {"name": "tests.openapi.never_run", "args": [1], "options": {**options, "queue": queue}}
        statuses.append(operation.Case(body=body).call_and_validate(checks=CHECKS).status_code)

    @given(case=operation.as_strategy())
    @SETTINGS
    def forced_into_the_queue(case: schemathesis.Case[Any]) -> None:
        assert isinstance(case.body, dict)  # positive cases only
        options = case.body.get("options") or {}
        assert isinstance(options, dict)
        case.body = {**case.body, "force": True, "options": {**options, "queue": queue}}
        if case.headers:  # generated credentials would only earn a 401 from this open dashboard
            case.headers.pop("Authorization", None)
        statuses.append(case.call_and_validate(checks=CHECKS).status_code)

    forced_into_the_queue()
    assert statuses[:2] == [202, 202] and set(statuses) <= {202, 400}


def test_a_silent_worker_gets_the_documented_504(live_app: tuple[Flask, str]) -> None:
    app, queue = live_app
    worker_online(app, "celery@silent")  # heard from, but no such process answers the broadcast
    operation = schemathesis.openapi.from_wsgi("/openapi.json", app)["/api/queues/{queue}/consumers"]["POST"]

    response = operation.Case(path_parameters={"queue": queue}, body={"worker": "celery@silent"}).call_and_validate(
        checks=CHECKS)

    assert response.status_code == 504


# --- API bugs found on the way (fixed; these keep them fixed) ---------------------------------------------


@pytest.mark.parametrize(("method", "url"), [("GET", "/api/tasks/%2Fx"), ("POST", "/api/queues/%2Fx/consumers")])
def test_a_path_value_starting_with_a_slash_is_not_redirected(app: Flask, method: str, url: str) -> None:
    response = app.test_client(use_cookies=False).open(url, method=method, json={"worker": WORKER})

    assert response.status_code in (400, 404), response.headers.get("Location")


def test_a_task_name_ending_in_a_line_break_is_refused(app: Flask) -> None:
    response = app.test_client(use_cookies=False).post("/api/dispatch", json={"name": "x.y\n", "force": True})

    assert response.status_code == 400 and "name" in response.get_json()["fields"], response.data[:200]
