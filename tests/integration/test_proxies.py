"""Behind a reverse proxy (`trusted_proxies`): client address, scheme, host and path prefix from X-Forwarded-*.

The app is the real one (create_app) on a broker port where nothing listens: a dispatch that gets that far is
refused at once (503) and recorded in the audit log, which is what the client-address checks read.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.security import generate_password_hash

from dashboard import create_app
from dashboard.config import config_from_mapping
from dashboard.web.context import services

OPERATOR, PASSWORD = "op", "op-password-2"
BASIC = {"Authorization": "Basic b3A6b3AtcGFzc3dvcmQtMg=="}  # op:op-password-2
CLIENT_IP = "203.0.113.9"
DISPATCH = {"name": "worker.tasks.llm.summarize_note", "kwargs": {"note_id": "n"}}
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
FORWARDED = {
    "X-Forwarded-For": CLIENT_IP,
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "dash.example",
    "X-Forwarded-Prefix": "/ops",
}


def build(tmp_path: Path, proxies: int) -> Flask:
    data: dict[str, Any] = {
        "broker_url": "redis://127.0.0.1:1/0",  # nothing listens on port 1: refused at once
        "broker_timeout": 1,
        "secret_key": "test-secret-key-0123456789abcdef",
        "audit": {"path": str(tmp_path / "audit.sqlite3")},
        "routes": {"worker.tasks.llm.*": "llm"},
        "tasks": {"worker.tasks.llm.summarize_note": {"params": [{"name": "note_id", "required": True}]}},
        "auth": {"users": [{"name": OPERATOR, "password_hash": generate_password_hash(PASSWORD, "pbkdf2:sha256:1000"),
                            "role": "operator"}]},
        "trusted_proxies": proxies,
        "server": {"allowed_hosts": ["localhost", "dash.example"]},
    }
    app = create_app(config_from_mapping(data), live=False)
    app.testing = True
    return app


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[FlaskClient]:
    app = build(tmp_path, proxies=1)
    yield app.test_client()
    close(app)


@pytest.fixture
def direct(tmp_path: Path) -> Iterator[FlaskClient]:
    app = build(tmp_path, proxies=0)
    yield app.test_client()
    close(app)


def close(app: Flask) -> None:
    rt = services(app)
    rt.monitor.stop()
    rt.client.close()
    if rt.audit is not None:
        rt.audit.close()


def audited_address(client: FlaskClient, headers: dict[str, str]) -> str | None:
    refused = client.post("/api/dispatch", json=DISPATCH, headers={**BASIC, **headers})
    assert refused.status_code == 503, refused.data
    entries = client.get("/api/audit", headers=BASIC).get_json()["entries"]
    address: str | None = entries[0]["remote_addr"]
    return address


def test_the_audit_log_records_the_client_behind_a_trusted_proxy(proxied: FlaskClient) -> None:
    assert audited_address(proxied, {"X-Forwarded-For": CLIENT_IP}) == CLIENT_IP


def test_forwarded_headers_are_ignored_without_trusted_proxies(direct: FlaskClient) -> None:
    # Any client can send X-Forwarded-For: believed only when a proxy that sets it is configured.
    assert audited_address(direct, {"X-Forwarded-For": CLIENT_IP}) == "127.0.0.1"


def login(client: FlaskClient, headers: dict[str, str]) -> Any:
    page = client.get("/login", headers=headers)
    token = CSRF_RE.search(page.get_data(as_text=True))
    assert token, page.data[:300]
    return client.post("/login", headers=headers,
                       data={"csrf_token": token.group(1), "name": OPERATOR, "password": PASSWORD})


def test_behind_an_https_proxy_the_session_cookie_is_secure_and_the_origin_is_the_public_one(
    proxied: FlaskClient,
) -> None:
    origin = {**FORWARDED, "Origin": "https://dash.example"}
    response = login(proxied, origin)

    assert response.status_code == 302
    cookie = response.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie
    assert response.headers["Location"] == "/ops/"  # the prefix the proxy serves us under


def test_without_trusted_proxies_the_forwarded_scheme_does_not_make_the_cookie_secure(direct: FlaskClient) -> None:
    response = login(direct, {"X-Forwarded-Proto": "https"})

    assert response.status_code == 302
    assert "Secure" not in response.headers["Set-Cookie"]


def test_pages_link_under_the_proxy_prefix(proxied: FlaskClient) -> None:
    to_login = proxied.get("/tasks", headers=FORWARDED)
    assert to_login.status_code == 302
    assert to_login.headers["Location"].startswith("/ops/login?next=/ops/tasks")

    page = proxied.get("/", headers={**FORWARDED, **BASIC}).get_data(as_text=True)
    assert 'src="/ops/static/' in page
    assert 'ws-connect="wss://dash.example/ops/ws/ui' in page


WS_HEADERS = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


def test_the_websocket_origin_check_compares_with_the_public_origin(proxied: FlaskClient) -> None:
    def upgrade(origin: str) -> int:
        headers = {**WS_HEADERS, **FORWARDED, **BASIC, "Origin": origin}
        return proxied.get("/ws/events", headers=headers).status_code

    assert upgrade("http://localhost") == 403  # the address the proxy talks to is not the page's origin
    assert upgrade("https://dash.example") not in (401, 403)
