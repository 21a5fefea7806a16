"""GET /alerts: active alerts with their fixes and the latest changes, newest first (no broker: the comparison is
run by hand on an app whose broker nobody answers)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from dashboard import create_app
from dashboard.config import config_from_mapping
from dashboard.web.context import services


@pytest.fixture
def app() -> Iterator[Flask]:
    config = config_from_mapping({"broker_url": "redis://127.0.0.1:1/0", "audit": {"path": ""},
                                  "monitor": {"alert_grace": 0}})
    built = create_app(config, live=False)
    built.testing = True
    yield built
    services(built).close()


def test_the_alerts_page_lists_active_alerts_and_the_latest_changes(app: Flask) -> None:
    svc = services(app)
    client = app.test_client()
    empty = client.get("/alerts")
    assert empty.status_code == 200
    assert b"No alert raised since this process started." in empty.data

    svc.routing.inspected_at = 1.0  # as if the workers had been asked (there are none)
    svc.routing.note_event({"type": "task-sent", "name": "billing.<b>typo</b>", "uuid": "t1"})
    svc.routing.run_comparison()
    page = client.get("/alerts").data.decode()

    assert 'data-status="raised"' in page and "billing.&lt;b&gt;typo&lt;/b&gt;" in page  # escaped
    assert 'id="alerts-panel"' in page and 'aria-current="page">Alerts</a>' in page


def test_the_alert_banner_links_to_the_alerts_page(app: Flask) -> None:
    svc = services(app)
    svc.routing.inspected_at = 1.0
    svc.routing.note_event({"type": "task-sent", "name": "billing.typo", "uuid": "t1"})
    svc.routing.run_comparison()

    page = app.test_client().get("/tasks").data.decode()

    assert '<ul class="alert-list">' in page and 'href="/alerts">Alerts →</a>' in page


@pytest.fixture
def audited_app() -> Iterator[Flask]:
    config = config_from_mapping({"broker_url": "redis://127.0.0.1:1/0", "audit": {"path": ":memory:"},
                                  "monitor": {"alert_grace": 0}})
    built = create_app(config, live=False)
    built.testing = True
    svc = services(built)
    svc.routing.inspected_at = 1.0
    svc.routing.note_event({"type": "task-sent", "name": "billing.typo", "uuid": "t1"})
    svc.routing.run_comparison()
    yield built
    services(built).close()


KEY = "unregistered_task:billing.typo"


def test_an_operator_acknowledges_and_silences_an_alert_and_every_page_says_who(audited_app: Flask) -> None:
    client = audited_app.test_client(use_cookies=False)  # an API client: no session, so no CSRF token needed
    assert client.post("/api/alerts/unregistered_task:nope/ack").status_code == 404
    acked = client.post(f"/api/alerts/{KEY}/ack")
    assert acked.status_code == 200 and acked.get_json()["acknowledged_by"] == "anonymous"
    assert "this replica only until it does" in acked.get_json()["ok"]  # its Redis does not answer
    silenced = client.post(f"/api/alerts/{KEY}/silence", json={"minutes": 60})
    assert silenced.status_code == 200 and silenced.get_json()["silenced_by"] == "anonymous"

    alert = client.get("/api/alerts").get_json()[0]
    assert alert["key"] == KEY and alert["acknowledged_by"] == "anonymous"
    assert alert["silenced_until"] - alert["acknowledged_at"] == pytest.approx(3600, abs=5)
    page = client.get("/tasks").data.decode()
    assert "acknowledged by <strong>anonymous</strong>" in page and "silenced by <strong>anonymous</strong>" in page
    assert 'class="alert-banner all-silenced"' in page and "(1 silenced)" in page
    assert 'class="alert-unsilence"' in page and 'class="alert-ack"' not in page  # acknowledged: no second ack

    assert client.delete(f"/api/alerts/{KEY}/silence").status_code == 200
    assert client.delete(f"/api/alerts/{KEY}/silence").status_code == 404
    assert client.get("/api/alerts").get_json()[0]["silenced_by"] is None
    actions = client.get("/api/audit/actions?action=alert.*").get_json()["entries"]
    assert [(entry["action"], entry["outcome"]) for entry in reversed(actions)] == [
        ("alert.ack", "refused"), ("alert.ack", "done"), ("alert.silence", "done"), ("alert.unsilence", "done"),
        ("alert.unsilence", "refused")]


@pytest.mark.parametrize(("key", "body", "problem"), [
    (KEY, {}, "minutes"),
    (KEY, {"minutes": 0}, "minutes"),
    (KEY, {"minutes": "60"}, "minutes"),
    (KEY, {"minutes": 10_081}, "minutes"),
    ("disk_full:sda", {"minutes": 15}, "not an alert key"),
    ("orphaned_queue:", {"minutes": 15}, "not an alert key"),
])
def test_a_bad_silence_is_a_400_that_says_why(audited_app: Flask, key: str, body: dict[str, object],
                                              problem: str) -> None:
    reply = audited_app.test_client().post(f"/api/alerts/{key}/silence", json=body)
    assert reply.status_code == 400 and problem in reply.get_json()["error"]


def test_the_banner_forms_act_through_htmx_and_a_plain_post_goes_back_to_the_alerts(audited_app: Flask) -> None:
    client = audited_app.test_client()
    reply = client.post("/alerts/silence", data={"key": KEY, "minutes": "240"}, headers={"HX-Request": "true"})
    assert reply.status_code == 200 and "silenced by anonymous for 240 min" in reply.data.decode()
    plain = client.post("/alerts/ack", data={"key": KEY})
    assert plain.status_code == 303 and plain.headers["Location"].endswith("/alerts")
    refused = client.post("/alerts/unsilence", data={"key": "orphaned_queue:x"}, headers={"HX-Request": "true"})
    assert refused.status_code == 404 and "is not silenced" in refused.data.decode()


def test_alert_actions_need_the_operator_role_and_from_a_browser_the_csrf_token() -> None:
    import re

    from werkzeug.security import generate_password_hash

    users = [{"name": name, "password_hash": generate_password_hash("pw-123456", "pbkdf2:sha256:1000"), "role": role}
             for name, role in (("op", "operator"), ("vi", "viewer"))]
    config = config_from_mapping({"broker_url": "redis://127.0.0.1:1/0", "audit": {"path": ""},
                                  "monitor": {"alert_grace": 0}, "auth": {"users": users},
                                  "secret_key": "alerts-page-secret-0123456789"})
    app = create_app(config, live=False)
    app.testing = True
    svc = services(app)
    svc.routing.inspected_at = 1.0
    svc.routing.note_event({"type": "task-sent", "name": "billing.typo", "uuid": "t1"})
    svc.routing.run_comparison()
    try:
        def logged_in(name: str) -> tuple[Any, str]:
            client = app.test_client()
            token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").data.decode())
            assert token is not None
            client.post("/login", data={"csrf_token": token[1], "name": name, "password": "pw-123456"})
            page = client.get("/alerts").data.decode()
            fresh = re.search(r'name="csrf_token" value="([^"]+)"', page)
            assert fresh is not None
            return client, fresh[1]

        viewer, token = logged_in("vi")
        assert 'class="alert-ack"' not in viewer.get("/tasks").data.decode()  # no buttons for a viewer
        assert viewer.post("/alerts/ack", data={"key": KEY, "csrf_token": token}).status_code == 403
        operator, token = logged_in("op")
        assert 'class="alert-ack"' in operator.get("/tasks").data.decode()
        assert operator.post("/alerts/ack", data={"key": KEY}).status_code == 403  # no CSRF token
        assert operator.post("/alerts/ack", data={"key": KEY, "csrf_token": token},
                             headers={"Origin": "https://evil.example"}).status_code == 403
        done = operator.post("/alerts/ack", data={"key": KEY, "csrf_token": token}, headers={"HX-Request": "true"})
        assert done.status_code == 200 and "acknowledged by op" in done.data.decode()
        assert operator.delete(f"/api/alerts/{KEY}/silence", headers={"X-CSRF-Token": token}).status_code == 404
    finally:
        svc.close()
