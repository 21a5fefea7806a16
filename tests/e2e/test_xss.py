"""XSS in Chromium: task names, args, kwargs, results, exceptions, tracebacks and queue names carrying script and
HTML payloads are shown as literal text on every page that shows them, and nothing in them ever runs.

A page-level hook installed before any page script (add_init_script) sets `window.__pwned = 0`, replaces
alert/confirm/prompt with recorders and records CSP violations. Every payload would set `__pwned`, call alert or
make an element; the tests assert none of that happened, on first load and after live websocket updates.

Each page is checked twice: with the dashboard's CSP, and in a context that bypasses CSP, so the escaping
itself is what is tested (the CSP alone would already block inline handlers).

Payload sources (all on the session Redis, seen by a dashboard of this module's own):
  - POST /api/dispatch of a name outside the catalog with payload args/kwargs to a queue whose name is a payload
    (no whitespace, so a valid queue): nobody consumes it, so it also raises an orphaned-queue alert that the
    banner on every page and the routing page show;
  - worker.tasks.demo.fail with a payload message: the FAILURE's exception and traceback carry it;
  - worker.tasks.link.unfurl with a payload URL: the SUCCESS result carries it;
  - a payload task *name* ("worker.tasks.<img src=x onerror=alert(1)>"), which the API refuses (400, audited),
    sent by name through a plain Celery client instead: the stub worker rejects it as NotRegistered;
  - a payload in a query parameter that an error message reflects.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from celery import Celery
from playwright.sync_api import Browser, Page, expect

from tests.e2e.browser_errors import BrowserErrors
from tests.e2e.conftest import ACTION_TIMEOUT_MS
from tests.support.live_server import ConfigFactory, LiveServer, StartDashboard

pytestmark = pytest.mark.usefixtures("stub_worker")  # the failing and unfurl tasks really run

EXPECT_MS = 5_000
RUN_MS = 15_000  # a task's final state reaching the dashboard, or an alert after its grace period
API_TIMEOUT = 5.0
SEED_TIMEOUT = 20.0
POLL = 0.1
FAIL = "worker.tasks.demo.fail"
UNFURL = "worker.tasks.link.unfurl"
PROBE = "worker.tasks.xss.probe"  # outside the catalog: sent by name, unchecked

P_SCRIPT = "<script>window.__pwned=1</script>"
P_IMG = "<img src=x onerror=window.__pwned=1>"
P_NAME = "worker.tasks.<img src=x onerror=alert(1)>"
P_QUEUE = f"xss-{uuid.uuid4().hex[:6]}-<svg/onload=window.__pwned=1>"
P_URL = f"https://example.com/x?q={P_SCRIPT}"

HOOK_JS = """
window.__pwned = 0;
window.__alerts = [];
window.__csp = [];
(function () {
  function recorder(kind) {
    return function (message) { window.__alerts.push(kind + ": " + String(message)); return null; };
  }
  window.alert = recorder("alert");
  window.confirm = recorder("confirm");
  window.prompt = recorder("prompt");
  document.addEventListener("securitypolicyviolation", function (e) {
    window.__csp.push(e.violatedDirective + " " + (e.sample || ""));
  });
  document.addEventListener("htmx:wsOpen", function () { document.documentElement.dataset.xssWs = "open"; });
  document.addEventListener("htmx:wsAfterMessage", function () {
    var n = Number(document.documentElement.dataset.xssWsMessages || "0") + 1;
    document.documentElement.dataset.xssWsMessages = String(n);
  });
})();
"""

# What a successful injection would leave in the DOM or the window; the dashboard itself has none of these.
INSPECT_JS = """
() => {
  const short = (el) => el.outerHTML.slice(0, 160);
  const all = Array.from(document.querySelectorAll("*"));
  // The dashboard's own charts (history sparklines and stats): an svg whose only child is one polyline, with
  // nothing but geometry and paint attributes. Anything else that embeds is a payload that got through.
  const chartAttrs = new Set(["viewBox", "width", "height", "role", "aria-label", "class", "preserveAspectRatio"]);
  const lineAttrs = new Set(["points", "fill", "stroke", "stroke-width", "vector-effect"]);
  const ownChart = (el) => el.tagName.toLowerCase() === "svg"
    && Array.from(el.attributes).every((a) => chartAttrs.has(a.name))
    && el.children.length === 1 && el.children[0].tagName.toLowerCase() === "polyline"
    && el.children[0].children.length === 0
    && Array.from(el.children[0].attributes).every((a) => lineAttrs.has(a.name));
  return {
    handlers: all.filter((el) => Array.from(el.attributes).some((a) => /^on/i.test(a.name))).map(short),
    embeds: Array.from(document.querySelectorAll("img, svg, iframe, object, embed, video, audio"))
      .filter((el) => !ownChart(el)).map(short),
    inlineScripts: Array.from(document.scripts).filter((s) => !s.src || s.textContent.trim()).map(short),
    pwned: window.__pwned,
    alerts: window.__alerts,
    csp: window.__csp,
  };
}
"""

ANY_COUNT = re.compile(r"^[1-9][0-9]*$")  # websocket messages swapped in so far
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- HTTP helpers -------------------------------------------------------------------------------------------


def http(server: LiveServer, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(server.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
    try:
        with NO_PROXY.open(request, timeout=API_TIMEOUT) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode(errors="replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def dispatch(server: LiveServer, body: Mapping[str, Any]) -> str:
    status, answer = http(server, "POST", "/api/dispatch", body)
    assert status == 202, f"POST /api/dispatch answered {status}: {answer}"
    return str(answer["task_id"])


def wait_until(what: str, check: Any, timeout: float = SEED_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}", pytrace=False)
        time.sleep(POLL)


def task_state(server: LiveServer, task_id: str) -> str | None:
    status, body = http(server, "GET", f"/api/tasks/{task_id}")
    return body.get("state") if status == 200 and isinstance(body, dict) else None


# --- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xss_server(start_dashboard: StartDashboard, dashboard_config_for: ConfigFactory) -> LiveServer:
    server = start_dashboard(dashboard_config_for(), name="xss")
    # The event stream starts with the first request and subscribes lazily: events sent before are lost.
    wait_until("the event stream to be live", lambda: http(server, "GET", "/api/status")[1].get("broker") == "live")
    return server


@pytest.fixture(scope="module")
def sender(broker_url: str) -> Iterator[Celery]:
    """A plain Celery client that sends any name (with task-sent events), as a misbehaving API client could."""
    app = Celery("xss-sender", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_send_sent_event=True,
        broker_connection_timeout=2,
        broker_connection_retry_on_startup=False,
        broker_transport_options={"max_retries": 0, "socket_connect_timeout": 2, "socket_timeout": 2},
    )
    try:
        yield app
    finally:
        app.close()


@pytest.fixture(scope="module")
def payload_queue(broker_url: str) -> Iterator[str]:
    """The payload queue; its lists and bindings are deleted afterwards, so its alert clears for later tests."""
    try:
        yield P_QUEUE
    finally:
        conn = redis.Redis.from_url(broker_url, socket_timeout=2, socket_connect_timeout=2)
        try:
            keys = [P_QUEUE if step == 0 else f"{P_QUEUE}\x06\x16{step}" for step in (0, 3, 6, 9)]
            conn.delete(*keys, f"_kombu.binding.{P_QUEUE}", f"_kombu.binding_permanent.{P_QUEUE}")
        finally:
            conn.close()


@dataclass(frozen=True)
class Seeded:
    probe: str  # args/kwargs payloads, in the payload queue
    failed: str  # demo.fail: exception and traceback payload
    unfurled: str  # link.unfurl: result payload
    misnamed: str  # the payload name, NotRegistered on the stub worker
    backend_only: str  # known to the result backend only (a failure stored there, no event): its own traceback


@pytest.fixture(scope="module")
def seeded(xss_server: LiveServer, sender: Celery, payload_queue: str, broker_url: str, backend_url: str) -> Seeded:
    probe = dispatch(xss_server, {"name": PROBE, "args": [P_SCRIPT, P_IMG], "kwargs": {"note": P_IMG},
                                  "options": {"queue": payload_queue}, "force": True})
    failed = dispatch(xss_server, {"name": FAIL, "kwargs": {"message": P_IMG}})
    unfurled = dispatch(xss_server, {"name": UNFURL, "kwargs": {"url": P_URL}})
    misnamed = str(sender.send_task(P_NAME, args=[P_SCRIPT], kwargs={"x": P_IMG}, queue="default").id)
    status, _ = http(xss_server, "POST", "/api/dispatch", {"name": P_NAME, "args": [P_SCRIPT]})
    assert status == 400, "the API refuses the payload name (and the audit log records the attempt)"

    wait_until("the failing task's FAILURE", lambda: task_state(xss_server, failed) == "FAILURE")
    wait_until("the unfurl task's SUCCESS", lambda: task_state(xss_server, unfurled) == "SUCCESS")
    wait_until("the misnamed task's rejection", lambda: task_state(xss_server, misnamed) == "FAILURE")
    wait_until("the probe task", lambda: task_state(xss_server, probe) is not None)
    wait_until("the orphaned payload queue alert",
               lambda: any(a.get("queue") == payload_queue for a in http(xss_server, "GET", "/api/alerts")[1]),
               timeout=RUN_MS / 1000)
    # The task page shows the backend's traceback only when the live events have none (once it showed it twice).
    backend_only = str(uuid.uuid4())
    backend = Celery("xss-backend", broker=broker_url, backend=backend_url, set_as_current=False)
    try:
        backend.backend.store_result(backend_only, RuntimeError(P_IMG), "FAILURE",
                                     traceback=f"Traceback (most recent call last):\nRuntimeError: {P_IMG}\n")
    finally:
        backend.close()
    return Seeded(probe, failed, unfurled, misnamed, backend_only)


@pytest.fixture(params=["csp", "no-csp"])
def xss_page(request: pytest.FixtureRequest, browser: Browser) -> Iterator[tuple[Page, BrowserErrors]]:
    """A fresh context with the hook installed; "no-csp" bypasses the page's CSP, so escaping alone is tested."""
    context = browser.new_context(bypass_csp=request.param == "no-csp")
    try:
        page = context.new_page()
        page.set_default_timeout(ACTION_TIMEOUT_MS)
        page.set_default_navigation_timeout(ACTION_TIMEOUT_MS)
        page.add_init_script(HOOK_JS)
        yield page, BrowserErrors().attach(page)
    finally:
        context.close()


# --- checks -------------------------------------------------------------------------------------------------


def open_page(page: Page, url: str, *, live: bool = True) -> None:
    page.goto(url)
    if live:
        expect(page.locator("html"), "the page's websocket did not open").to_have_attribute(
            "data-xss-ws", "open", timeout=EXPECT_MS
        )


def assert_nothing_ran(page: Page, errors: BrowserErrors, *, allow_status: tuple[int, ...] = ()) -> None:
    found = page.evaluate(INSPECT_JS)
    assert found["pwned"] == 0, f"a payload ran: window.__pwned = {found['pwned']}"
    assert found["alerts"] == [], f"a payload called: {found['alerts']}"
    assert found["handlers"] == [], f"elements with inline event handlers: {found['handlers']}"
    assert found["embeds"] == [], f"embedded elements beyond the dashboard's own charts: {found['embeds']}"
    assert found["inlineScripts"] == [], f"inline scripts: {found['inlineScripts']}"
    assert found["csp"] == [], f"CSP violations (an injection the CSP caught): {found['csp']}"
    errors.assert_clean(allow_status=allow_status)


def expect_literal(page: Page, selector: str, texts: list[str], timeout: int = EXPECT_MS) -> None:
    for text in texts:
        expect(page.locator(selector).first, f"{text!r} not shown literally in {selector}").to_contain_text(
            text, timeout=timeout
        )


# --- tests --------------------------------------------------------------------------------------------------


def test_the_api_refuses_a_payload_task_name(xss_server: LiveServer) -> None:
    status, body = http(xss_server, "POST", "/api/dispatch", {"name": P_NAME})

    assert status == 400 and "name" in body["fields"], body


def page_cases() -> list[Any]:
    """(path template, selector, texts that must show literally)."""
    return [
        pytest.param("/tasks", "#task-table", [P_NAME, PROBE], id="tasks"),
        pytest.param("/tasks/{probe}", "#task-detail", [P_SCRIPT, P_IMG, P_QUEUE], id="task-args"),
        pytest.param("/tasks/{failed}", "#task-detail .exception", [P_IMG], id="task-exception"),
        pytest.param("/tasks/{failed}", "#task-detail .traceback", [f"RuntimeError: {P_IMG}"], id="task-traceback"),
        pytest.param("/tasks/{backend_only}", ".backend .traceback", [f"RuntimeError: {P_IMG}"],
                     id="backend-traceback"),
        pytest.param("/tasks/{unfurled}", "#task-detail .result", [P_SCRIPT], id="task-result"),
        pytest.param("/tasks/{unfurled}", ".backend", [P_SCRIPT], id="backend-result"),
        pytest.param("/tasks/{misnamed}", "#task-detail", [P_NAME, P_SCRIPT, P_IMG], id="task-name"),
        pytest.param("/routing", "#routing", [P_QUEUE], id="routing"),
        pytest.param("/routing", "#alerts-panel", [P_QUEUE], id="routing-alerts"),
        pytest.param("/", "#alert-banner", [P_QUEUE], id="index-banner"),
        pytest.param("/workers", "#alert-banner", [P_QUEUE], id="workers-banner"),
        pytest.param("/audit", "#audit-table", [P_NAME, P_SCRIPT, P_IMG, P_QUEUE], id="audit"),
        pytest.param("/stats", "#stats-queues", [P_QUEUE], id="stats-queues"),
    ]


@pytest.mark.parametrize(("path", "selector", "texts"), page_cases())
def test_payloads_show_as_text_and_nothing_runs(
    xss_page: tuple[Page, BrowserErrors], xss_server: LiveServer, seeded: Seeded, path: str, selector: str,
    texts: list[str],
) -> None:
    page, errors = xss_page
    url = xss_server.url + path.format(**vars(seeded))

    open_page(page, url)

    expect_literal(page, selector, texts, timeout=RUN_MS)
    # The page has also taken the websocket's snapshot by now (the same fragments, pushed): wait for one message.
    expect(page.locator("html")).to_have_attribute("data-xss-ws-messages", ANY_COUNT, timeout=EXPECT_MS)
    expect_literal(page, selector, texts)
    assert_nothing_ran(page, errors)


def test_reflected_query_parameters_are_escaped(
    xss_page: tuple[Page, BrowserErrors], xss_server: LiveServer, seeded: Seeded
) -> None:
    page, errors = xss_page
    query = urllib.parse.urlencode({"limit": P_IMG, "name": P_SCRIPT})

    open_page(page, f"{xss_server.url}/tasks?{query}")

    expect(page.locator("main")).to_contain_text(P_IMG)  # "limit: expected a whole number, got '<img ...>'"
    assert_nothing_ran(page, errors, allow_status=(400,))

    open_page(page, f"{xss_server.url}/tasks?{urllib.parse.urlencode({'name': P_SCRIPT, 'queue': P_QUEUE})}")

    expect(page.locator("input[name=name]")).to_have_value(P_SCRIPT)
    expect(page.locator("input[name=queue]")).to_have_value(P_QUEUE)
    assert_nothing_ran(page, errors, allow_status=(400,))

    open_page(page, f"{xss_server.url}/audit?{urllib.parse.urlencode({'name': P_NAME})}", live=True)

    expect(page.locator("input[name=name]")).to_have_value(P_NAME)
    expect_literal(page, "#audit-table", [P_NAME])
    assert_nothing_ran(page, errors, allow_status=(400,))


def test_live_updates_carry_payloads_as_text(
    xss_page: tuple[Page, BrowserErrors], xss_server: LiveServer, seeded: Seeded, sender: Celery
) -> None:
    page, errors = xss_page
    open_page(page, f"{xss_server.url}/tasks")
    name = f"worker.tasks.<img src=x onerror=window.__pwned=1>{uuid.uuid4().hex[:6]}"

    late = str(sender.send_task(name, args=[P_SCRIPT], queue=P_QUEUE).id)  # after the page loaded: pushed live

    row = page.locator(f'#task-table tr[data-task-id="{late}"]')
    expect(row).to_have_count(1, timeout=RUN_MS)
    expect(row.locator(".task-name")).to_have_text(name)
    assert_nothing_ran(page, errors)

    # A failing task held 2 s by the worker (countdown): its page opens first, the FAILURE arrives live.
    message = f"{P_IMG} {P_SCRIPT} {uuid.uuid4().hex[:6]}"
    failing = dispatch(xss_server, {"name": FAIL, "kwargs": {"message": message}, "options": {"countdown": 2}})
    open_page(page, f"{xss_server.url}/tasks/{failing}")
    expect(page.locator("#task-detail .kwargs")).to_contain_text(P_SCRIPT, timeout=EXPECT_MS)
    assert page.locator("#task-detail .exception").count() == 0, "the failure arrived before the page was open"

    expect(page.locator("#task-detail .exception")).to_contain_text(message, timeout=RUN_MS)
    expect(page.locator("#task-detail .traceback")).to_contain_text(f"RuntimeError: {message}")
    assert_nothing_ran(page, errors)
