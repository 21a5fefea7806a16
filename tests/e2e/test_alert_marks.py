"""Acknowledging and silencing an alert in Chromium: an operator acts from the alerts panel and from the banner, and
another person's open page (a viewer, in a browser context of their own) shows who did it, live, without a reload;
the alerts page shows a failing webhook live.

The module owns its Redis, one worker consuming only "stt" and "default", and a dashboard with two users; the alert
is a real orphaned queue: a forced dispatch to a queue nobody consumes. At the end the worker is told to consume
it, which clears the alert.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Locator, Page, expect
from werkzeug.security import generate_password_hash

from dashboard.services.processes import CeleryWorker, RedisServer, free_port
from tests.conftest import REPO_ROOT
from tests.e2e.browser_errors import BrowserErrors
from tests.e2e.live_helpers import assert_not_reloaded, open_live
from tests.support.http import request
from tests.support.live_server import LiveServer, StartDashboard, dashboard_config
from tests.support.processes import started

EXPECT_MS = 5_000
ALERT_MS = 15_000  # inspection every 0.5 s, grace 1 s; generous for a loaded machine
OPERATOR, VIEWER, PASSWORD = "alice", "victor", "a long enough password"
HASH = "pbkdf2:sha256:1000"  # fast for tests
TRANSCRIBE = "worker.tasks.stt.transcribe"
TRANSLATE = "worker.tasks.llm.translate"
URL_SECRET = "T000/B000/e2eSecretPath"


@pytest.fixture(scope="module")
def marks_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    directory = tmp_path_factory.mktemp("marks-redis")
    with started(RedisServer(directory=directory, log_path=directory / "redis.log")) as server:
        yield server


@pytest.fixture(scope="module")
def marks_worker(marks_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CeleryWorker]:
    with started(CeleryWorker(marks_redis.url(0), backend_url=marks_redis.url(1), name=f"marks-{uuid.uuid4().hex[:6]}",
                              queues=("stt", "default"), log_path=tmp_path_factory.mktemp("marks") / "worker.log",
                              cwd=REPO_ROOT, pythonpath=[REPO_ROOT])) as worker:
        yield worker


@pytest.fixture(scope="module")
def marks_dashboard(marks_redis: RedisServer, marks_worker: CeleryWorker,
                    start_dashboard: StartDashboard) -> LiveServer:
    base = dashboard_config(marks_redis.url(0), marks_redis.url(1))
    users = [{"name": OPERATOR, "password_hash": generate_password_hash(PASSWORD, HASH), "role": "operator"},
             {"name": VIEWER, "password_hash": generate_password_hash(PASSWORD, HASH), "role": "viewer"}]
    config = {**base, "routes": {k: v for k, v in base["routes"].items() if k != TRANSLATE},
              "tasks": {k: v for k, v in base["tasks"].items() if k != TRANSLATE},
              "auth": {"users": users}, "secret_key": "e2e-marks-secret-0123456789abcdef",
              # Nothing listens there: every POST is refused at once, a failure the alerts page must show live.
              "alerts": {"webhooks": [{"name": "nobody", "url": f"http://127.0.0.1:{free_port()}/hook/{URL_SECRET}",
                                       "max_attempts": 1}]}}
    return start_dashboard(config, name="marks")


def api(server: LiveServer, method: str, path: str, body: Any = None) -> Any:
    token = base64.b64encode(f"{OPERATOR}:{PASSWORD}".encode()).decode()
    reply = request(server, method, path, body, headers={"Authorization": f"Basic {token}"})
    assert reply.status in (200, 202), (method, path, reply.status, reply.data)
    return reply.data


def log_in(page: Page, server: LiveServer, user: str, path: str) -> str:
    page.goto(f"{server.url}/login?next={path}")
    page.get_by_label("User").fill(user)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{server.url}{path}", timeout=EXPECT_MS)
    return open_live(page, f"{server.url}{path}")


def item(page: Page, where: str, key: str) -> Locator:
    return page.locator(f'{where} li[data-key="{key}"]')


def test_an_operator_acknowledges_and_silences_and_every_open_page_shows_who_live(
    page: Page, browser: Browser, marks_dashboard: LiveServer, marks_worker: CeleryWorker,
    browser_errors: BrowserErrors,
) -> None:
    server = marks_dashboard
    queue = f"e2e-marks-{uuid.uuid4().hex[:6]}"
    key = f"orphaned_queue:{queue}"
    log_in(page, server, OPERATOR, "/alerts")
    other_context = browser.new_context()
    other = other_context.new_page()
    other_errors = BrowserErrors().attach(other)
    try:
        marker = log_in(other, server, VIEWER, "/tasks")

        api(server, "POST", "/api/dispatch", {"name": TRANSCRIBE, "kwargs": {"audio_url": "m.wav"},
                                              "options": {"queue": queue}, "force": True})
        expect(item(other, "#alert-banner", key)).to_be_visible(timeout=ALERT_MS)
        expect(item(page, "#alerts-panel", key)).to_be_visible(timeout=ALERT_MS)
        expect(item(other, "#alert-banner", key).locator(".alert-controls")).to_have_count(0)  # a viewer: no buttons
        failing = page.locator("#webhook-status")
        expect(failing).to_have_attribute("data-failing", "1", timeout=ALERT_MS)  # pushed live, no reload
        expect(failing.locator(".webhook-failing")).to_contain_text("nobody", timeout=EXPECT_MS)
        expect(failing.locator('tr[data-webhook="nobody"]')).to_have_attribute("data-failed", "1")
        assert URL_SECRET not in page.content()

        # Acknowledge from the alerts panel.
        item(page, "#alerts-panel", key).get_by_role("button", name="Acknowledge").click()
        expect(page.locator("#alert-action-result")).to_contain_text(f"acknowledged by {OPERATOR}", timeout=EXPECT_MS)
        expect(item(other, "#alert-banner", key).locator(".alert-ack-note")).to_contain_text(
            f"acknowledged by {OPERATOR} at", timeout=EXPECT_MS)
        expect(item(page, "#alerts-panel", key).get_by_role("button", name="Acknowledge")).to_have_count(0)

        # Silence for an hour from the banner: de-emphasised everywhere, with who and until when.
        in_banner = item(page, "#alert-banner", key)
        in_banner.get_by_label("Silence for").select_option(label="1 h")
        in_banner.get_by_role("button", name="Silence", exact=True).click()
        expect(page.locator("#alert-action-result")).to_contain_text(f"silenced by {OPERATOR} for 60 min",
                                                                      timeout=EXPECT_MS)
        expect(other.locator("#alert-banner")).to_have_class("alert-banner all-silenced", timeout=EXPECT_MS)
        expect(item(other, "#alert-banner", key).locator(".alert-silence-note")).to_contain_text(
            f"silenced by {OPERATOR} until", timeout=EXPECT_MS)
        expect(item(page, "#alerts-panel", key)).to_have_class("alert kind-orphaned_queue silenced acknowledged")

        # Unsilence from the alerts panel: loud again on every page.
        item(page, "#alerts-panel", key).get_by_role("button", name="Unsilence").click()
        expect(other.locator("#alert-banner")).to_have_class("alert-banner", timeout=EXPECT_MS)
        expect(item(other, "#alert-banner", key).locator(".alert-silence-note")).to_have_count(0)
        assert_not_reloaded(other, marker)

        actions = api(server, "GET", f"/api/audit/actions?target={key}")["entries"]
        assert sorted((entry["action"], entry["who"]) for entry in actions) == [
            ("alert.ack", OPERATOR), ("alert.silence", OPERATOR), ("alert.unsilence", OPERATOR)]

        api(server, "POST", f"/api/queues/{queue}/consumers", {"worker": marks_worker.hostname})
        expect(item(other, "#alert-banner", key)).to_have_count(0, timeout=ALERT_MS)
    finally:
        other_context.close()
    browser_errors.assert_clean()
    other_errors.assert_clean()
