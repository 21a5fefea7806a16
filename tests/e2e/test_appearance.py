"""How the pages look and handle in Chromium: dark mode (the system's, or the viewer's choice), narrow windows
down to 768 px, and forms reachable from the keyboard."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.browser_errors import BrowserErrors
from tests.support.live_server import LiveServer

EXPECT_MS = 5_000
PAGES = ("/", "/tasks", "/workers", "/routing", "/alerts", "/audit")
BACKGROUND_JS = "() => getComputedStyle(document.body).backgroundColor"


def brightness(page: Page) -> int:
    rgb = str(page.evaluate(BACKGROUND_JS))  # "rgb(15, 19, 27)"
    return sum(int(part) for part in rgb[rgb.index("(") + 1 : rgb.index(")")].split(",")[:3])


def test_dark_mode_follows_the_system_and_the_theme_button_overrides_it(
    page: Page, dashboard_server: LiveServer, browser_errors: BrowserErrors
) -> None:
    page.emulate_media(color_scheme="dark")
    page.goto(f"{dashboard_server.url}/tasks")
    assert brightness(page) < 150, "the system asks for dark"

    button = page.locator("#theme")
    expect(button).to_have_text("Theme: auto", timeout=EXPECT_MS)
    button.click()
    expect(button).to_have_text("Theme: dark")
    button.click()
    expect(button).to_have_text("Theme: light")
    assert brightness(page) > 600

    page.reload()  # the choice is kept, and applied before the page paints
    expect(page.locator("#theme")).to_have_text("Theme: light", timeout=EXPECT_MS)
    assert brightness(page) > 600
    page.locator("#theme").click()
    expect(page.locator("#theme")).to_have_text("Theme: auto")
    assert brightness(page) < 150
    browser_errors.assert_clean()


@pytest.mark.parametrize("path", PAGES)
def test_every_page_fits_a_768_pixel_window(page: Page, dashboard_server: LiveServer, path: str) -> None:
    page.set_viewport_size({"width": 768, "height": 900})
    page.goto(f"{dashboard_server.url}{path}")
    expect(page.locator("main")).to_be_visible(timeout=EXPECT_MS)

    width = int(page.evaluate("() => document.documentElement.scrollWidth"))

    assert width <= 768, f"{path} is {width} px wide: the page scrolls sideways"


def test_the_dispatch_form_is_reachable_from_the_keyboard(page: Page, dashboard_server: LiveServer) -> None:
    page.goto(dashboard_server.url)
    expect(page.locator(".dispatch-form").first).to_be_visible(timeout=EXPECT_MS)
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("() => !!document.activeElement.closest('.dispatch-form')"):
            break
    else:
        pytest.fail("40 presses of Tab never reached a dispatch form")
    assert page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle") != "none", \
        "the focused field shows no focus outline"
