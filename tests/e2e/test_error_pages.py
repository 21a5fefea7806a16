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
    browser_errors.assert_clean(allow_status=[404])
