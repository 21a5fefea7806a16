"""Error pages in the browser: a wrong address shows the dashboard's own page with the right status."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.browser_errors import BrowserErrors
from tests.support.live_server import LiveServer

EXPECT_MS = 5_000


@pytest.mark.parametrize("path", ["/no-such-page", "/tasks/not a task id"])
def test_unknown_address_shows_the_not_found_page(
    page: Page, dashboard_server: LiveServer, browser_errors: BrowserErrors, path: str
) -> None:
    response = page.goto(f"{dashboard_server.url}{path}")
    assert response is not None
    assert response.status == 404, f"expected 404, got {response.status}"
    expect(page.locator("main h1")).to_have_text("404", timeout=EXPECT_MS)
    expect(page.locator("main .error")).to_have_text("Not found.", timeout=EXPECT_MS)
    expect(page.get_by_role("link", name="Back to dispatch")).to_be_visible(timeout=EXPECT_MS)
    # The page's usual chrome, as on every page: once the 404 page had none of it.
    expect(page.locator("#conn-status")).to_be_visible(timeout=EXPECT_MS)
    expect(page.locator(".open-notice")).to_be_visible(timeout=EXPECT_MS)
    expect(page.locator("#alert-banner")).to_have_count(1)
    browser_errors.assert_clean(allow_status=[404])


def test_no_page_asks_for_a_missing_favicon(page: Page, dashboard_server: LiveServer) -> None:
    # Once every page logged "/favicon.ico 404" in the console.
    missing: list[str] = []
    page.on("response", lambda response: missing.append(response.url) if response.status == 404 else None)
    for path in ("/", "/tasks", "/routing", "/workers"):
        page.goto(f"{dashboard_server.url}{path}")
        expect(page.locator("link[rel=icon]")).to_have_count(1)
        page.wait_for_load_state("load")
    href = page.locator("link[rel=icon]").get_attribute("href")
    assert href is not None
    icon = page.request.get(f"{dashboard_server.url}{href}")
    assert icon.status == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert missing == [], missing
