"""Helpers for tests of the live pages: dispatch from outside the browser, open a page and wait for its socket."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from typing import Any

from playwright.sync_api import Page, expect

from tests.support.live_server import LiveServer

EXPECT_MS = 5_000
API_TIMEOUT = 5.0
MARKER = "window.__e2eNoReload"  # set after a load; a reload would wipe it

# Mirror into attributes of <html> what expect() cannot see otherwise (the CSP forbids the eval that
# page.wait_for_function needs; init scripts run before the page's scripts regardless): the page's own websocket.
WS_STATE_INIT_JS = """(() => {
  const mark = (name, value) => { document.documentElement.dataset[name] = value; };  // no <html> yet at init
  document.addEventListener("htmx:wsOpen", () => mark("e2eWs", "open"));
  document.addEventListener("htmx:wsClose", () => mark("e2eWs", "closed"));
})();"""

_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def api_dispatch(server: LiveServer, body: Mapping[str, Any]) -> dict[str, Any]:
    """POST /api/dispatch from outside the browser; return the 202 body (fail the test on any other answer)."""
    request = urllib.request.Request(
        f"{server.url}/api/dispatch",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with _NO_PROXY_OPENER.open(request, timeout=API_TIMEOUT) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode(errors="replace")
    assert status == 202, f"POST /api/dispatch answered {status}: {text}"
    answer: dict[str, Any] = json.loads(text)
    return answer


def open_live(page: Page, url: str) -> str:
    """Load `url`, wait until its websocket is open, and set a marker that only survives if no reload follows."""
    page.add_init_script(WS_STATE_INIT_JS)
    page.goto(url)
    expect(page.locator("html"), "the page's websocket did not open").to_have_attribute(
        "data-e2e-ws", "open", timeout=EXPECT_MS
    )
    marker = uuid.uuid4().hex
    page.evaluate(f"{MARKER} = {marker!r}")
    return marker


def assert_not_reloaded(page: Page, marker: str) -> None:
    assert page.evaluate(MARKER) == marker, "the page was reloaded; it should have been updated in place"
