"""A person logs in and out through the real form in Chromium, directly and behind a reverse proxy prefix."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page, expect
from werkzeug.security import generate_password_hash

from tests.e2e.browser_errors import BrowserErrors
from tests.support.live_server import ConfigFactory, LiveServer, StartDashboard
from tests.support.reverse_proxy import reverse_proxy

EXPECT_MS = 5_000
OPERATOR, PASSWORD = "alice", "correct horse battery"
SECRET_KEY = "e2e-login-secret-0123456789abcdef"


def auth_config(dashboard_config_for: ConfigFactory, **extra: Any) -> dict[str, Any]:
    users = [{"name": OPERATOR, "password_hash": generate_password_hash(PASSWORD), "role": "operator"}]
    return dashboard_config_for(auth={"users": users}, secret_key=SECRET_KEY, **extra)


@pytest.fixture(scope="module")
def auth_server(start_dashboard: StartDashboard, dashboard_config_for: ConfigFactory) -> LiveServer:
    return start_dashboard(auth_config(dashboard_config_for), name="login")


@pytest.fixture(scope="module")
def proxied_server(start_dashboard: StartDashboard, dashboard_config_for: ConfigFactory) -> LiveServer:
    return start_dashboard(auth_config(dashboard_config_for, trusted_proxies=1), name="login-proxied")


def log_in_and_out(page: Page, base: str, prefix: str = "") -> None:
    page.goto(f"{base}/tasks")
    expect(page).to_have_url(f"{base}/login?next={prefix}/tasks", timeout=EXPECT_MS)  # sent to log in first
    page.get_by_label("User").fill(OPERATOR)
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong user name or password.", timeout=EXPECT_MS)

    page.get_by_label("User").fill(OPERATOR)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").press("Enter")
    expect(page).to_have_url(f"{base}/tasks", timeout=EXPECT_MS)
    expect(page.locator(".who")).to_have_text(f"{OPERATOR} · operator", timeout=EXPECT_MS)
    expect(page.locator("#conn-status")).to_contain_text("live", timeout=EXPECT_MS)  # the page's websocket too

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(f"{base}/login", timeout=EXPECT_MS)
    page.goto(f"{base}/tasks")
    expect(page).to_have_url(f"{base}/login?next={prefix}/tasks", timeout=EXPECT_MS)


def test_log_in_and_out_with_the_real_form(page: Page, auth_server: LiveServer,
                                           browser_errors: BrowserErrors) -> None:
    log_in_and_out(page, auth_server.url)
    browser_errors.assert_clean(allow_status=[401])


def test_log_in_and_out_behind_a_reverse_proxy_prefix(page: Page, proxied_server: LiveServer,
                                                      browser_errors: BrowserErrors) -> None:
    with reverse_proxy(proxied_server.port, "/ops") as base:
        log_in_and_out(page, base, prefix="/ops")
    browser_errors.assert_clean(allow_status=[401])
