"""Auth, roles and CSRF on every route, the session login flow, security headers, the CLI, and real websockets.

The route table is generated from the app's own URL map at collection time, so a route added later is tested
(and must be classified) without anyone remembering to add it here. The test-client app uses a broker port
where nothing listens: nothing reaches a Redis, and a dispatch that gets that far fails fast with 503.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import simple_websocket
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.routing import Rule
from werkzeug.security import check_password_hash, generate_password_hash
from werkzeug.test import TestResponse

from dashboard import create_app
from dashboard.config import config_from_mapping
from dashboard.services.processes import free_port
from dashboard.services.sessions import NEGATIVE_TTL
from dashboard.web.auth import PUBLIC_ENDPOINTS
from dashboard.web.context import services
from tests.support.http import WebSocketClient
from tests.support.live_server import (
    SCRUBBED_ENV,
    LiveServer,
    LiveServerError,
    dashboard_command,
    dashboard_config,
    start_live_server,
)

HASH_METHOD = "pbkdf2:sha256:1000"  # fast for tests; the CLI's default (scrypt) is what production uses
VIEWER, VIEWER_PASSWORD = "vi", "vi-password-1"
OPERATOR, OPERATOR_PASSWORD = "op", "op-password-2"
VIEWER_TOKEN = "viewer-token-5d1c0e"
SECRET_KEY = "test-secret-key-0123456789abcdef"
EVIL = "https://evil.example"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Endpoints whose designed answer can be 503: readiness says "not ready" so (the monitor never starts here).
MAY_BE_UNAVAILABLE = frozenset({"api.readyz", "queues.api_messages", "queues.page"})  # the broker is down here
CLI_TIMEOUT = 30
WS_TIMEOUT = 10.0

# Sample values for the URL map's path arguments; a new argument name fails test_every_path_argument_has_a_sample.
PATH_SAMPLES = {"task_id": "abc-123", "queue": "q1", "filename": "app.css", "key": "orphaned_queue:q1",
                "hostname": "celery@w1", "job_id": "j1"}
UNUSED_PORT = 1  # tcpmux: nothing listens on loopback, so broker calls are refused at once

WS_HEADERS = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


def basic(name: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{name}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def auth_table() -> dict[str, Any]:
    return {
        "users": [
            {"name": VIEWER, "password_hash": generate_password_hash(VIEWER_PASSWORD, HASH_METHOD), "role": "viewer"},
            {"name": OPERATOR, "password_hash": generate_password_hash(OPERATOR_PASSWORD, HASH_METHOD),
             "role": "operator"},
        ],
        "tokens": [
            {"name": "grafana", "token_sha256": hashlib.sha256(VIEWER_TOKEN.encode()).hexdigest(), "role": "viewer"}
        ],
    }


AUTH = auth_table()


def build_app(*, with_auth: bool = True) -> Flask:
    data: dict[str, Any] = {
        "broker_url": f"redis://127.0.0.1:{UNUSED_PORT}/0",
        "broker_timeout": 1,
        "secret_key": SECRET_KEY,
        "audit": {"path": ""},
        "routes": {"worker.tasks.llm.*": "llm"},
        "tasks": {"worker.tasks.llm.summarize_note": {"params": [{"name": "note_id", "required": True}]}},
        "server": {"allowed_hosts": ["localhost", "dash.example"]},
    }
    if with_auth:
        data["auth"] = AUTH
    app = create_app(config_from_mapping(data), live=False)
    app.testing = True
    return app


def close_app(app: Flask) -> None:
    rt = services(app)
    rt.monitor.stop()
    rt.client.close()


# --- the route table, from the URL map -----------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """One (rule, method) pair of the URL map with a concrete URL."""

    endpoint: str
    rule: str
    method: str
    url: str
    websocket: bool

    @property
    def public(self) -> bool:
        return self.endpoint in PUBLIC_ENDPOINTS

    @property
    def unsafe(self) -> bool:
        return self.method not in SAFE_METHODS

    @property
    def wants_json(self) -> bool:
        return self.url.startswith("/api/") or self.url in ("/metrics", "/healthz") or self.websocket

    @property
    def id(self) -> str:
        return f"{self.method} {self.rule}"


def concrete_url(app: Flask, rule: Rule) -> str:
    adapter = app.url_map.bind("localhost")
    values = {name: PATH_SAMPLES.get(name, "sample") for name in rule.arguments}
    return adapter.build(rule.endpoint, values, method=None)


def route_table() -> list[Route]:
    app = build_app()
    try:
        routes: list[Route] = []
        for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
            if rule.endpoint == "static":
                continue
            url = concrete_url(app, rule)
            methods = ["GET"] if rule.websocket else sorted(rule.methods or ())
            routes.extend(Route(rule.endpoint, rule.rule, m, url, rule.websocket) for m in methods)
        return routes
    finally:
        close_app(app)


ROUTES = route_table()
HTTP_ROUTES = [r for r in ROUTES if not r.websocket]
WS_ROUTES = [r for r in ROUTES if r.websocket]
VIEWER_MAY_POST = {"auth.logout"}  # a viewer must be able to end their own session


def params(routes: list[Route]) -> list[Any]:
    return [pytest.param(r, id=r.id) for r in routes]


@pytest.fixture
def app() -> Iterator[Flask]:  # one per test: failed logins are throttled per app
    built = build_app()
    try:
        yield built
    finally:
        close_app(built)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def call(client: FlaskClient, route: Route, headers: Mapping[str, str] | None = None) -> TestResponse:
    return client.open(route.url, method=route.method, headers=dict(headers or {}))


def test_the_table_covers_every_route_of_a_fresh_app() -> None:
    app = build_app()
    try:
        fresh = {(rule.rule, method) for rule in app.url_map.iter_rules() if rule.endpoint != "static"
                 for method in (["GET"] if rule.websocket else rule.methods or ())}
    finally:
        close_app(app)

    assert {(r.rule, r.method) for r in ROUTES} == fresh
    assert len(ROUTES) > 30 and WS_ROUTES, "the URL map looks too small: did create_app change?"
    assert {"api.dispatch", "pages.submit", "live.ui", "live.events", "auth.logout"} <= {r.endpoint for r in ROUTES}


def test_every_path_argument_has_a_sample() -> None:
    app = build_app()
    try:
        arguments = {name for rule in app.url_map.iter_rules() for name in rule.arguments}
    finally:
        close_app(app)

    assert arguments <= set(PATH_SAMPLES), f"add samples for {arguments - set(PATH_SAMPLES)} to PATH_SAMPLES"


# --- anonymous ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", params(HTTP_ROUTES))
def test_anonymous(client: FlaskClient, route: Route) -> None:
    response = call(client, route)

    status = response.status_code
    assert status < 500 or (status == 503 and route.endpoint in MAY_BE_UNAVAILABLE), \
        f"{route.id}: {status} {response.data[:300]!r}"
    if route.public:
        if route.unsafe:  # POST /login without the form's CSRF token
            assert status == 403, f"{route.id}: {status}"
        else:
            assert status not in (302, 401, 403), f"{route.id}: {status}"
    elif route.wants_json:
        assert status == 401, f"{route.id}: {status} {response.data[:200]!r}"
        assert response.headers.get("WWW-Authenticate", "").startswith("Basic "), response.headers
        if route.method != "HEAD":
            assert "error" in (response.get_json(silent=True) or {}), response.data[:200]
    else:
        assert status == 302, f"{route.id}: {status}"
        location = response.headers["Location"]
        assert location.startswith("/login?next="), location


@pytest.mark.parametrize("route", params(WS_ROUTES))
def test_anonymous_websocket_is_refused_with_401(client: FlaskClient, route: Route) -> None:
    response = call(client, route, WS_HEADERS)

    assert response.status_code == 401, response.data[:200]


@pytest.mark.parametrize("route", params(WS_ROUTES))
@pytest.mark.parametrize(
    "foreign", [{"Origin": EVIL}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}], ids=["origin", "null", "sfs"]
)
def test_cross_site_websocket_with_valid_credentials_is_refused_with_403(
    client: FlaskClient, route: Route, foreign: dict[str, str]
) -> None:
    response = call(client, route, {**WS_HEADERS, **basic(OPERATOR, OPERATOR_PASSWORD), **foreign})

    assert response.status_code == 403, response.data[:200]


# --- viewer and operator with Basic ------------------------------------------------------------------


@pytest.mark.parametrize("route", params(HTTP_ROUTES))
def test_viewer(client: FlaskClient, route: Route) -> None:
    response = call(client, route, basic(VIEWER, VIEWER_PASSWORD))

    status = response.status_code
    assert status < 500 or (status == 503 and route.endpoint in MAY_BE_UNAVAILABLE), \
        f"{route.id}: {status} {response.data[:300]!r}"
    if route.unsafe and (route.endpoint not in VIEWER_MAY_POST or route.public):
        assert status == 403, f"{route.id}: a viewer got {status}"
    else:
        assert status not in (401, 403), f"{route.id}: a viewer got {status} {response.data[:200]!r}"


@pytest.mark.parametrize("route", params(HTTP_ROUTES))
def test_operator(client: FlaskClient, route: Route) -> None:
    response = call(client, route, basic(OPERATOR, OPERATOR_PASSWORD))

    status = response.status_code
    assert status < 500 or (status == 503 and route.endpoint in MAY_BE_UNAVAILABLE), \
        f"{route.id}: {status} {response.data[:300]!r}"
    if route.public and route.unsafe:
        assert status == 403, "POST /login needs its form's CSRF token whoever asks"
    else:
        assert status not in (401, 403), f"{route.id}: an operator got {status} {response.data[:200]!r}"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(basic(OPERATOR, "wrong"), id="wrong-password"),
        pytest.param(basic(OPERATOR + "2", OPERATOR_PASSWORD), id="longer-name"),
        pytest.param(basic(OPERATOR[:-1], OPERATOR_PASSWORD), id="prefix-name"),
        pytest.param(basic("", OPERATOR_PASSWORD), id="empty-name"),
        pytest.param({"Authorization": "Basic not-base64!"}, id="not-base64"),
        pytest.param({"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()}, id="no-colon"),
        pytest.param({"Authorization": "Basic " + base64.b64encode(b"op:\xff").decode()}, id="not-utf8"),
        pytest.param({"Authorization": "Bearer wrong-token"}, id="wrong-token"),
        pytest.param({"Authorization": f"Bearer {hashlib.sha256(VIEWER_TOKEN.encode()).hexdigest()}"},
                     id="the-hash-as-token"),
    ],
)
def test_wrong_credentials_get_401(client: FlaskClient, headers: dict[str, str]) -> None:
    for url in ("/api/status", "/"):
        response = client.get(url, headers=headers)

        assert response.status_code == 401, f"{url}: {response.status_code}"
        assert response.headers.get("WWW-Authenticate", "").startswith("Basic ")


def test_non_ascii_user_name_in_basic_auth_gets_401(client: FlaskClient) -> None:
    response = client.get("/api/status", headers=basic("opé", "x"))

    assert response.status_code == 401


def test_non_ascii_user_name_in_the_login_form_gets_401(client: FlaskClient) -> None:
    token = csrf_of(client.get("/login").data)

    response = client.post("/login", data={"csrf_token": token, "name": "josé", "password": "x"})

    assert response.status_code == 401


def test_bearer_token_is_a_viewer(client: FlaskClient) -> None:
    headers = {"Authorization": f"Bearer {VIEWER_TOKEN}"}

    assert client.get("/api/status", headers=headers).status_code == 200
    assert client.get("/tasks", headers=headers).status_code == 200
    refused = client.post("/api/dispatch", json={"name": "worker.tasks.llm.summarize_note"}, headers=headers)
    assert refused.status_code == 403, refused.data
    assert "viewer" in refused.get_json()["error"]


def test_operator_dispatch_by_basic_needs_no_csrf_token_and_reaches_the_broker(client: FlaskClient) -> None:
    body = {"name": "worker.tasks.llm.summarize_note", "kwargs": {"note_id": "n"}}

    response = client.post("/api/dispatch", json=body, headers=basic(OPERATOR, OPERATOR_PASSWORD))

    assert response.status_code == 503, response.data  # nothing listens on the broker port: it got that far


# --- the session: login, CSRF, cross-site, logout --------------------------------------------------------

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: bytes) -> str:
    found = CSRF_RE.search(html.decode())
    assert found, "no csrf_token field in the page"
    return found.group(1)


def log_in(client: FlaskClient, name: str, password: str, next_path: str = "/tasks") -> str:
    """Log in through the form; return the session's CSRF token as the pages carry it."""
    page = client.get(f"/login?next={next_path}")
    assert page.status_code == 200
    response = client.post("/login", data={"csrf_token": csrf_of(page.data), "name": name, "password": password,
                                           "next": next_path})
    assert response.status_code == 302, response.data[:300]
    assert response.headers["Location"] == next_path
    index = client.get("/")
    assert index.status_code == 200, index.status_code
    return csrf_of(index.data)  # the logout form carries the fresh token


DISPATCH = {"name": "worker.tasks.llm.summarize_note", "kwargs": {"note_id": "n"}}


def test_login_flow_and_csrf_on_cookie_authenticated_requests(client: FlaskClient) -> None:
    token = log_in(client, OPERATOR, OPERATOR_PASSWORD)

    assert client.get("/api/status").status_code == 200, "the session cookie authenticates"
    without = client.post("/api/dispatch", json=DISPATCH)
    assert without.status_code == 403 and "CSRF" in without.get_json()["error"], without.data
    wrong = client.post("/api/dispatch", json=DISPATCH, headers={"X-CSRF-Token": token[:-2] + "xx"})
    assert wrong.status_code == 403
    with_token = client.post("/api/dispatch", json=DISPATCH, headers={"X-CSRF-Token": token})
    assert with_token.status_code == 503, with_token.data  # it reached the (absent) broker

    form = {"form_id": "dispatch-0", "arg.note_id": "n"}
    assert client.post("/dispatch", data=form).status_code == 403, "a form POST without csrf_token"
    assert client.post("/dispatch", data={**form, "csrf_token": token}).status_code == 503
    evil = client.post("/dispatch", data={**form, "csrf_token": token}, headers={"Origin": EVIL})
    assert evil.status_code == 403, "a cross-site POST is refused even with the right token"
    sfs = client.post("/api/dispatch", json=DISPATCH, headers={"X-CSRF-Token": token, "Sec-Fetch-Site": "cross-site"})
    assert sfs.status_code == 403
    same_site = client.post("/api/dispatch", json=DISPATCH,
                            headers={"X-CSRF-Token": token, "Sec-Fetch-Site": "same-site"})
    assert same_site.status_code == 403, "a sibling subdomain is another origin"
    same = client.post("/api/dispatch", json=DISPATCH,
                       headers={"X-CSRF-Token": token, "Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"})
    assert same.status_code == 503, same.data

    assert client.post("/logout").status_code == 403, "logout needs the CSRF token too"
    out = client.post("/logout", data={"csrf_token": token})
    assert out.status_code == 302 and out.headers["Location"] == "/login"
    after = client.get("/api/status")
    assert after.status_code == 401, "the session ended"
    assert client.get("/tasks").status_code == 302


def test_viewer_can_log_out(client: FlaskClient) -> None:
    token = log_in(client, VIEWER, VIEWER_PASSWORD)

    assert client.post("/logout").status_code == 403, "logout needs the CSRF token"
    response = client.post("/logout", data={"csrf_token": token})

    assert response.status_code == 302, response.data[:200]
    assert client.get("/api/status").status_code == 401


def test_viewer_session_cannot_dispatch(client: FlaskClient) -> None:
    token = log_in(client, VIEWER, VIEWER_PASSWORD)

    assert client.get("/routing").status_code == 200
    response = client.post("/api/dispatch", json=DISPATCH, headers={"X-CSRF-Token": token})

    assert response.status_code == 403 and "viewer" in response.get_json()["error"]


def test_login_with_a_wrong_password_gets_401_and_no_session(client: FlaskClient) -> None:
    page = client.get("/login")
    token = csrf_of(page.data)

    response = client.post("/login", data={"csrf_token": token, "name": OPERATOR, "password": "nope"})

    assert response.status_code == 401
    assert b"Wrong user name or password" in response.data
    assert client.get("/api/status").status_code == 401


def test_login_without_the_form_token_is_refused(client: FlaskClient) -> None:
    client.get("/login")

    response = client.post("/login", data={"name": OPERATOR, "password": OPERATOR_PASSWORD})

    assert response.status_code == 403
    assert client.get("/api/status").status_code == 401


def test_login_from_another_site_is_refused(client: FlaskClient) -> None:
    token = csrf_of(client.get("/login").data)

    response = client.post("/login", data={"csrf_token": token, "name": OPERATOR, "password": OPERATOR_PASSWORD},
                           headers={"Origin": EVIL})

    assert response.status_code == 403


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:x",
                                    "/\t/evil.example", "/\n/evil.example", "/\r\nSet-Cookie: a=b"])
def test_login_never_redirects_to_another_site(client: FlaskClient, target: str) -> None:
    token = csrf_of(client.get("/login").data)

    response = client.post("/login", data={"csrf_token": token, "name": OPERATOR, "password": OPERATOR_PASSWORD,
                                           "next": target})

    assert response.status_code == 302
    assert response.headers["Location"] == "/", response.headers["Location"]


def test_login_form_with_origin_null_from_the_same_origin_logs_in(client: FlaskClient) -> None:
    # What Chromium sends for a plain form POST when the page withholds its origin (no-referrer policy)
    token = csrf_of(client.get("/login").data)
    browser = {"Origin": "null", "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "navigate"}

    response = client.post("/login", headers=browser,
                           data={"csrf_token": token, "name": OPERATOR, "password": OPERATOR_PASSWORD, "next": "/"})

    assert response.status_code == 302, response.data[:300]
    assert client.get("/api/status").status_code == 200
    refused = client.post("/logout", headers={"Origin": "null", "Sec-Fetch-Site": "cross-site"},
                          data={"csrf_token": csrf_of(client.get("/").data)})
    assert refused.status_code == 403, "a null origin from another site (a sandboxed frame) is still refused"


@pytest.mark.parametrize("query", ["next=/%09/evil.example", "next=/%0a/evil.example", "next=/%0d%0aX:%20y"])
def test_a_redirect_target_with_control_characters_goes_home(open_app: Flask, query: str) -> None:
    response = open_app.test_client().get(f"/login?{query}")

    assert response.status_code == 302
    assert response.headers["Location"] == "/", response.headers["Location"]


def test_a_session_cookie_is_dead_after_logout(client: FlaskClient, app: Flask) -> None:
    token = log_in(client, OPERATOR, OPERATOR_PASSWORD)
    cookie = client.get_cookie("dispatch_dashboard_session")
    assert cookie is not None

    assert client.post("/logout", data={"csrf_token": token}).status_code == 302

    replay = app.test_client()  # someone who copied the cookie before the logout
    replay.set_cookie("dispatch_dashboard_session", cookie.value)
    assert replay.get("/api/status").status_code == 401
    dispatch = replay.post("/api/dispatch", json=DISPATCH, headers={"X-CSRF-Token": token})
    assert dispatch.status_code == 401, dispatch.data


def test_failed_logins_are_throttled_per_user_name(client: FlaskClient) -> None:
    token = csrf_of(client.get("/login").data)
    codes = [client.post("/login", data={"csrf_token": token, "name": OPERATOR, "password": f"guess-{n}"},
                         environ_base={"REMOTE_ADDR": f"10.0.0.{n}"}).status_code for n in range(8)]

    assert codes[:5] == [401] * 5, codes
    assert 429 in codes[5:], codes
    throttled = client.post("/login", data={"csrf_token": token, "name": OPERATOR, "password": OPERATOR_PASSWORD})
    assert throttled.status_code == 429, "even the right password waits out the throttle"
    assert int(throttled.headers["Retry-After"]) >= 1
    assert b"try again in" in throttled.data


def test_wrong_basic_passwords_are_throttled_per_address(client: FlaskClient) -> None:
    codes = [client.get("/api/status", headers=basic(f"user-{n}", "wrong")).status_code for n in range(8)]

    assert codes[:5] == [401] * 5, codes
    assert codes[-1] == 429, codes
    other = client.get("/api/status", headers=basic(VIEWER, VIEWER_PASSWORD),
                       environ_base={"REMOTE_ADDR": "10.9.9.9"})
    assert other.status_code == 200, "another address is not held back"


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_unknown_methods_from_anonymous_get_401_not_405(client: FlaskClient, method: str) -> None:
    assert client.open("/api/dispatch", method=method).status_code == 401
    assert client.open("/api/dispatch", method=method, headers=basic(VIEWER, VIEWER_PASSWORD)).status_code == 405


@pytest.mark.parametrize("host", ["rebind.evil.test", "rebind.evil.test:5000", "localhost.evil.test"])
def test_dns_rebinding_a_foreign_host_gets_400(open_app: Flask, host: str) -> None:
    client = open_app.test_client()
    page = client.get("/", headers={"Host": host})
    assert page.status_code == 400
    assert b"allowed_hosts" in page.data
    origin = f"http://{host}"
    dispatch = client.post("/api/dispatch", json=DISPATCH, headers={"Host": host, "Origin": origin})
    assert dispatch.status_code == 400


def test_a_foreign_host_gets_400_with_auth_on_too(client: FlaskClient) -> None:
    response = client.get("/api/status", headers={**basic(OPERATOR, OPERATOR_PASSWORD), "Host": "rebind.evil.test"})

    assert response.status_code == 400


def test_login_session_survives_a_new_app_with_the_same_secret_key(client: FlaskClient) -> None:
    log_in(client, OPERATOR, OPERATOR_PASSWORD)
    cookie = client.get_cookie("dispatch_dashboard_session")
    assert cookie is not None
    other = build_app()
    try:
        fresh = other.test_client()
        fresh.set_cookie(cookie.key, cookie.value)
        assert fresh.get("/api/status").status_code == 200
        tampered = other.test_client()
        tampered.set_cookie(cookie.key, cookie.value[:-3] + "abc")
        assert tampered.get("/api/status").status_code == 401
    finally:
        close_app(other)


# --- open mode ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def open_app() -> Iterator[Flask]:
    built = build_app(with_auth=False)
    try:
        yield built
    finally:
        close_app(built)


def test_open_mode_serves_everyone_but_refuses_cross_site_requests(open_app: Flask) -> None:
    page = open_app.test_client().get("/")
    assert page.status_code == 200
    assert b"Open mode" in page.data, "every page says the dashboard is open"
    script = open_app.test_client()  # no cookie, no Origin, no Sec-Fetch-Site: not a browser
    assert script.get("/api/status").status_code == 200
    assert script.post("/api/dispatch", json=DISPATCH).status_code == 503, "a script may post without a token"
    client = open_app.test_client()
    evil = client.post("/api/dispatch", json=DISPATCH, headers={"Origin": EVIL})
    assert evil.status_code == 403, evil.data
    sfs = client.post("/api/dispatch", json=DISPATCH, headers={"Sec-Fetch-Site": "cross-site"})
    assert sfs.status_code == 403, sfs.data
    form = client.post("/dispatch", data={"form_id": "dispatch-0", "arg.note_id": "n"}, headers={"Origin": EVIL})
    assert form.status_code == 403
    ws = client.get("/ws/events", headers={**WS_HEADERS, "Origin": EVIL})
    assert ws.status_code == 403


def test_open_mode_browser_posts_need_the_csrf_token(open_app: Flask) -> None:
    client = open_app.test_client()
    token = csrf_of(client.get("/").data)

    same_origin = {"Origin": "http://localhost"}
    assert client.post("/api/dispatch", json=DISPATCH, headers=same_origin).status_code == 403
    with_token = client.post("/api/dispatch", json=DISPATCH, headers={**same_origin, "X-CSRF-Token": token})
    assert with_token.status_code == 503, with_token.data


def test_open_mode_login_page_redirects_away(open_app: Flask) -> None:
    response = open_app.test_client().get("/login?next=/tasks")

    assert response.status_code == 302 and response.headers["Location"] == "/tasks"


# --- response headers and cookies -----------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/", "/login", "/tasks", "/api/status", "/no-such-page", "/healthz"])
def test_security_headers(client: FlaskClient, url: str) -> None:
    response = client.get(url, headers=basic(VIEWER, VIEWER_PASSWORD))

    csp = response.headers.get("Content-Security-Policy", "")
    directives = {part.split()[0]: part.split()[1:] for part in csp.split(";") if part.strip()}
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp, csp
    assert directives.get("script-src") == ["'self'"], csp
    assert directives.get("frame-ancestors") == ["'none'"], csp
    assert directives.get("object-src") == ["'none'"], csp
    assert directives.get("base-uri") == ["'none'"], csp
    assert response.headers.get("X-Content-Type-Options") == "nosniff"
    assert response.headers.get("X-Frame-Options") == "DENY"
    # same-origin: a plain form POST carries its Origin (under no-referrer Chromium sends "null"); no referrer
    # ever leaves the site
    assert response.headers.get("Referrer-Policy") == "same-origin"
    if response.mimetype == "text/html":
        assert response.headers.get("Cache-Control") == "no-store"


def session_cookie_header(response: TestResponse) -> str:
    cookies = [v for v in response.headers.getlist("Set-Cookie") if v.startswith("dispatch_dashboard_session=")]
    assert len(cookies) == 1, response.headers.getlist("Set-Cookie")
    return cookies[0]


def cookie_flags(header: str) -> set[str]:
    return {part.strip().split("=")[0].lower() for part in header.split(";")[1:]}


def test_session_cookie_is_httponly_samesite_lax(app: Flask) -> None:
    header = session_cookie_header(app.test_client().get("/login"))

    assert "httponly" in cookie_flags(header)
    assert re.search(r";\s*SameSite=Lax", header), header
    assert "secure" not in cookie_flags(header), "plain http: a Secure cookie would never come back"


def test_session_cookie_is_secure_over_https(app: Flask) -> None:
    client = app.test_client()

    header = session_cookie_header(client.get("/login", base_url="https://dash.example"))

    assert {"secure", "httponly"} <= cookie_flags(header), header
    assert re.search(r";\s*SameSite=Lax", header), header


def test_session_cookie_is_secure_after_login_over_https(app: Flask) -> None:
    client = app.test_client()
    base = "https://dash.example"
    token = csrf_of(client.get("/login", base_url=base).data)

    response = client.post("/login", base_url=base, headers={"Origin": base},
                           data={"csrf_token": token, "name": OPERATOR, "password": OPERATOR_PASSWORD})

    assert response.status_code == 302
    assert "secure" in cookie_flags(session_cookie_header(response))


# --- the CLI ------------------------------------------------------------------------------------------


def run_cli(args: list[str], tmp_path: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    return subprocess.run(
        [*dashboard_command(), *args], input=stdin, capture_output=True, text=True, timeout=CLI_TIMEOUT,
        cwd=tmp_path, env=env, check=False,
    )


def test_serve_refuses_a_public_address_without_users(tmp_path: Path) -> None:
    config = tmp_path / "open.toml"
    config.write_text(f'broker_url = "redis://127.0.0.1:{UNUSED_PORT}/0"\n[audit]\npath = ""\n', encoding="utf-8")

    result = run_cli(["serve", "--config", str(config), "--host", "0.0.0.0", "--port", str(free_port())], tmp_path)

    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dispatch-dashboard: error: refusing to serve on 0.0.0.0"), lines[0]
    assert "--insecure-no-auth" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert "serving on" not in result.stdout


def test_hash_password_reads_stdin_and_prints_a_werkzeug_hash(tmp_path: Path) -> None:
    result = run_cli(["hash-password"], tmp_path, stdin="s3cret pass wörd\n")

    assert result.returncode == 0, result.stderr
    printed = result.stdout.strip()
    assert "s3cret" not in printed
    assert check_password_hash(printed, "s3cret pass wörd")
    assert not check_password_hash(printed, "s3cret pass wörd\n")
    config_from_mapping({"auth": {"users": [{"name": "a", "password_hash": printed, "role": "viewer"}]}})


def test_hash_password_token_prints_sha256_hex(tmp_path: Path) -> None:
    result = run_cli(["hash-password", "--token"], tmp_path, stdin="my-api-token\r\n")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == hashlib.sha256(b"my-api-token").hexdigest()


def test_hash_password_with_empty_stdin_fails_with_one_line(tmp_path: Path) -> None:
    result = run_cli(["hash-password"], tmp_path, stdin="")

    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "nothing on stdin" in result.stderr
    assert "Traceback" not in result.stderr


# --- real websockets against a live server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def live_server(broker_url: str, backend_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """`dispatch-dashboard serve` (gunicorn) on the test Redis with the two users and the token."""
    config = dashboard_config(broker_url, backend_url, auth=AUTH, secret_key=SECRET_KEY, audit={"path": ""})
    try:
        server = start_live_server(config, tmp_path_factory.mktemp("auth-live"), name="auth")
    except LiveServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


def ws_url(server: LiveServer, path: str = "/ws/events") -> str:
    return server.url.replace("http://", "ws://") + path


def test_live_websocket_with_a_foreign_origin_is_refused(live_server: LiveServer) -> None:
    with pytest.raises(simple_websocket.ConnectionError) as refused:
        WebSocketClient.connect(
            ws_url(live_server), headers={**basic(OPERATOR, OPERATOR_PASSWORD), "Origin": EVIL}
        )

    assert refused.value.status_code == 403, refused.value


def test_live_websocket_without_credentials_is_refused(live_server: LiveServer) -> None:
    for headers in ({}, basic(OPERATOR, "wrong")):
        with pytest.raises(simple_websocket.ConnectionError) as refused:
            WebSocketClient.connect(ws_url(live_server), headers=headers)

        assert refused.value.status_code == 401, refused.value


@pytest.mark.parametrize("who", [(VIEWER, VIEWER_PASSWORD), (OPERATOR, OPERATOR_PASSWORD)], ids=["viewer", "operator"])
def test_live_websocket_same_origin_with_basic_gets_the_snapshot(live_server: LiveServer, who: tuple[str, str]) -> None:
    # simple_websocket sends "Host: 127.0.0.1" without the port, so the Origin a browser would send for that
    # Host is http://127.0.0.1; test_live_websocket_raw_handshake checks the exact host:port pair.
    ws = WebSocketClient.connect(ws_url(live_server), headers={**basic(*who), "Origin": "http://127.0.0.1"})
    try:
        first = ws.receive(timeout=WS_TIMEOUT)
    finally:
        ws.close()

    assert first is not None, "no first message within the timeout"
    message = json.loads(first)
    assert message["type"] == "snapshot" and "tasks" in message and "status" in message, str(message)[:300]


def raw_handshake(server: LiveServer, path: str, headers: Mapping[str, str]) -> tuple[str, bytes]:
    """Send a browser-like upgrade request with an exact Host; return the status line and what followed."""
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}", *(f"{k}: {v}" for k, v in WS_HEADERS.items()),
             *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection(("127.0.0.1", server.port), timeout=WS_TIMEOUT) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
        head, _, rest = received.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].decode()
        if " 101 " in status_line:
            while len(rest) < 2:
                rest += sock.recv(4096)
    return status_line, rest


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({"Origin": "http://127.0.0.1:{port}"}, "101", id="same-origin"),
        pytest.param({"Origin": "http://localhost:{port}"}, "403", id="other-host-name"),
        pytest.param({"Origin": "http://127.0.0.1:1"}, "403", id="other-port"),
        pytest.param({"Origin": "https://127.0.0.1:{port}"}, "403", id="other-scheme"),
        pytest.param({"Origin": EVIL}, "403", id="evil"),
        pytest.param({"Sec-Fetch-Site": "cross-site"}, "403", id="cross-site"),
    ],
)
def test_live_websocket_raw_handshake(live_server: LiveServer, headers: dict[str, str], status: str) -> None:
    concrete = {k: v.format(port=live_server.port) for k, v in headers.items()}

    status_line, rest = raw_handshake(live_server, "/ws/ui?view=status", {**basic(VIEWER, VIEWER_PASSWORD),
                                                                          **concrete})

    assert status_line.split(" ")[1] == status, status_line
    if status == "101":
        assert rest[0] & 0x0F == 0x1, "the first frame is a text message (the status fragment)"


def test_a_logout_on_one_replica_ends_the_session_on_another(broker_url: str) -> None:
    # Two replicas with the same secret key share nothing but the (real, Redis) broker: the logout mark lives there.
    def replica() -> Flask:
        data = {"broker_url": broker_url, "secret_key": SECRET_KEY, "audit": {"path": ""}, "auth": AUTH}
        built = create_app(config_from_mapping(data), live=False)
        built.testing = True
        return built

    one, two = replica(), replica()
    try:
        client = one.test_client()
        token = log_in(client, OPERATOR, OPERATOR_PASSWORD)
        cookie = client.get_cookie("dispatch_dashboard_session")
        assert cookie is not None
        other = two.test_client()
        other.set_cookie("dispatch_dashboard_session", cookie.value)
        assert other.get("/api/status").status_code == 200, "the same session works on either replica"

        assert client.post("/logout", data={"csrf_token": token}).status_code == 302

        late = two.test_client()  # replica two never saw the logout itself
        late.set_cookie("dispatch_dashboard_session", cookie.value)
        # Replica two trusts a session it checked within the last second (NEGATIVE_TTL): refused after that.
        deadline = time.monotonic() + NEGATIVE_TTL + 2.0
        while late.get("/api/status").status_code != 401:
            assert time.monotonic() < deadline, "replica two still accepts the logged-out session"
            time.sleep(0.1)
    finally:
        close_app(one)
        close_app(two)


def test_readyz_is_public_and_503_until_the_stream_is_live(client: FlaskClient) -> None:
    response = client.get("/readyz")  # live=False: the monitor never starts here

    assert response.status_code == 503
    assert response.get_json() == {"status": "not ready", "broker": "connecting", "inspected": False}
