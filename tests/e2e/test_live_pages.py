"""The live pages in Chromium: rows and task details update over the websocket, the connection indicator follows
the broker, the workers panel shows the stub worker, and task data is rendered as text, never as markup.

Every test opens a page first, waits until the page's own websocket is open, and only then makes something
happen from another client (a plain HTTP POST to /api/dispatch, or killing Redis), so what the page shows
can only have arrived live. A window marker set after the load proves that no reload happened in between.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from dashboard.services.processes import CeleryWorker, RedisServer
from tests.e2e.browser_errors import BrowserErrors
from tests.e2e.live_helpers import api_dispatch, assert_not_reloaded, open_live
from tests.support.http import get_json
from tests.support.live_server import LiveServer, StartDashboard, dashboard_config
from tests.support.processes import started
from tests.support.waits import wait_until

pytestmark = pytest.mark.usefixtures("stub_worker")  # dispatched tasks really run

EXPECT_MS = 5_000
RUN_MS = 10_000  # a dispatched task reaching its final state on the stub worker
OUTAGE_MS = 5_000  # the indicator leaving "live" after Redis dies
RECOVERY_MS = 10_000  # the indicator back to "live" after Redis is back
API_TIMEOUT = 5.0
UNFURL = "worker.tasks.link.unfurl"
FAIL = "worker.tasks.demo.fail"
FAIL_COUNTDOWN = 3.0  # seconds the worker holds the failing task, so its page opens before it fails
XSS = "<img src=x onerror=window.__pwned=1>"
DOWN_STATUS = re.compile(r"^(reconnecting|unreachable)$")

# Mirror the page's own websocket into an attribute, so expect() can wait for it: the CSP (script-src 'self')
# forbids the eval that page.wait_for_function needs. Init scripts run before the page's scripts, CSP or not.




def task_row(page: Page, task_id: str) -> Locator:
    return page.locator(f'#task-table tr[data-task-id="{task_id}"]')


def test_dispatched_task_appears_and_succeeds_without_reload(
    page: Page, dashboard_server: LiveServer, browser_errors: BrowserErrors
) -> None:
    marker = open_live(page, f"{dashboard_server.url}/tasks")
    url = f"https://example.com/e2e-live-{uuid.uuid4().hex[:8]}"

    sent = api_dispatch(dashboard_server, {"name": UNFURL, "kwargs": {"url": url}})

    row = task_row(page, sent["task_id"])
    expect(row).to_have_count(1, timeout=EXPECT_MS)
    expect(row).to_have_attribute("data-state", "SUCCESS", timeout=RUN_MS)
    expect(row.locator(".task-name")).to_have_text(UNFURL, timeout=EXPECT_MS)
    expect(row.locator(".queue")).to_have_text("default", timeout=EXPECT_MS)
    assert_not_reloaded(page, marker)
    browser_errors.assert_clean()


def test_the_per_state_counts_follow_the_rows_live(
    page: Page, dashboard_server: LiveServer, browser_errors: BrowserErrors
) -> None:
    # Once a finished task's row said SUCCESS while the counts above still said "PENDING 1" until a reload.
    marker = open_live(page, f"{dashboard_server.url}/tasks")
    sent = api_dispatch(dashboard_server, {"name": UNFURL, "kwargs": {"url": f"https://example.com/c{uuid.uuid4()}"}})
    expect(task_row(page, sent["task_id"])).to_have_attribute("data-state", "SUCCESS", timeout=RUN_MS)

    def shown_equals_served() -> bool:
        by_state = get_json(dashboard_server, "/api/status")["counts"]["by_state"]
        served = " · ".join(f"{state} {n}" for state, n in by_state.items() if n)
        return " ".join(page.locator("#task-counts .by-state").inner_text().split()) == served

    wait_until(shown_equals_served, EXPECT_MS / 1000, "the page's counts equal to the server's")
    assert_not_reloaded(page, marker)
    browser_errors.assert_clean()


def test_failing_task_shows_failure_and_traceback_live(
    page: Page, dashboard_server: LiveServer, browser_errors: BrowserErrors
) -> None:
    message = f"e2e failure {uuid.uuid4().hex[:8]}"
    sent = api_dispatch(
        dashboard_server, {"name": FAIL, "kwargs": {"message": message}, "options": {"countdown": FAIL_COUNTDOWN}}
    )

    marker = open_live(page, f"{dashboard_server.url}/tasks/{sent['task_id']}")
    detail = page.locator("#task-detail")
    # The worker holds the task for FAIL_COUNTDOWN seconds: the page opened before it could fail.
    expect(detail.locator(".traceback")).to_have_count(0, timeout=EXPECT_MS)

    expect(detail.locator(".state")).to_have_attribute("data-state", "FAILURE", timeout=RUN_MS)
    traceback = detail.locator(".traceback")
    expect(traceback).to_contain_text("RuntimeError", timeout=EXPECT_MS)
    expect(traceback).to_contain_text(message, timeout=EXPECT_MS)
    expect(detail.locator(".task-name")).to_contain_text(FAIL, timeout=EXPECT_MS)
    # The result backend's panel follows (once it said what it knew at load), without a second traceback or the
    # PENDING note; the timeline says why the task failed.
    backend = page.locator("#task-backend")
    expect(backend.locator(".state")).to_have_attribute("data-state", "FAILURE", timeout=EXPECT_MS)
    expect(page.locator(".traceback")).to_have_count(1)
    expect(backend).not_to_contain_text("PENDING here also means")
    expect(detail.locator("tr.event-task-failed td").last).to_contain_text(message, timeout=EXPECT_MS)
    assert_not_reloaded(page, marker)
    browser_errors.assert_clean()


def test_workers_panel_shows_the_stub_worker_online(
    page: Page, dashboard_server: LiveServer, browser_errors: BrowserErrors, stub_worker: CeleryWorker
) -> None:
    open_live(page, f"{dashboard_server.url}/workers")
    row = page.locator(f'#workers-panel tr[data-hostname="{stub_worker.hostname}"]')
    expect(row).to_have_count(1, timeout=EXPECT_MS)
    expect(row).to_have_attribute("data-status", "online", timeout=EXPECT_MS)
    expect(row.locator(".badge")).to_have_text("online", timeout=EXPECT_MS)
    # Filled in by the periodic worker inspection, pushed live if it had not run yet when the page loaded.
    expect(row.locator("code.queue")).to_have_text(sorted(stub_worker.queues), timeout=EXPECT_MS)
    browser_errors.assert_clean()


def test_task_data_is_shown_as_text_not_markup(
    page: Page, dashboard_server: LiveServer, browser_errors: BrowserErrors
) -> None:
    marker = open_live(page, f"{dashboard_server.url}/tasks")
    name = f"e2e.xss.probe_{uuid.uuid4().hex[:8]}"  # outside the catalog: sent by name, unchecked
    queue = f"e2e-nobody-{uuid.uuid4().hex[:10]}"  # nobody consumes it: only the task-sent event is seen
    sent = api_dispatch(
        dashboard_server,
        {"name": name, "args": [XSS], "kwargs": {"note": XSS}, "options": {"queue": queue}, "force": True},
    )

    row = task_row(page, sent["task_id"])  # the row arrives over the websocket
    expect(row.locator(".task-name")).to_have_text(name, timeout=EXPECT_MS)
    expect(row.locator(".queue")).to_have_text(queue, timeout=EXPECT_MS)
    expect(page.locator("#task-table img")).to_have_count(0, timeout=EXPECT_MS)
    assert_not_reloaded(page, marker)

    # The tasks table shows no arguments: the task page does (rendered, then pushed again on connect).
    open_live(page, f"{dashboard_server.url}/tasks/{sent['task_id']}")
    detail = page.locator("#task-detail")
    expect(detail.locator(".args")).to_contain_text(XSS, timeout=EXPECT_MS)
    expect(detail.locator(".kwargs")).to_contain_text(XSS, timeout=EXPECT_MS)
    expect(page.locator("main img")).to_have_count(0, timeout=EXPECT_MS)
    assert page.evaluate("typeof window.__pwned") == "undefined"
    browser_errors.assert_clean()  # an escaping slip would also show as a CSP violation or a 404 for "x"


# -- the connection indicator through a broker outage --------------------------------------------------------


@pytest.fixture(scope="module")
def outage_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this module's own, so killing it disturbs no other test."""
    directory: Path = tmp_path_factory.mktemp("outage-redis")
    with started(RedisServer(directory=directory, log_path=directory / "redis.log")) as server:
        yield server


@pytest.fixture(scope="module")
def outage_dashboard(outage_redis: RedisServer, start_dashboard: StartDashboard) -> LiveServer:
    """A dashboard whose broker (and result backend) is `outage_redis`."""
    return start_dashboard(dashboard_config(outage_redis.url(0), outage_redis.url(1)), name="outage")


def test_indicator_shows_reconnecting_while_broker_is_down_and_live_after(
    page: Page, outage_dashboard: LiveServer, outage_redis: RedisServer, browser_errors: BrowserErrors
) -> None:
    marker = open_live(page, f"{outage_dashboard.url}/")
    indicator = page.locator("#conn-status")
    expect(indicator).to_have_attribute("data-status", "live", timeout=EXPECT_MS)
    expect(indicator).to_have_text("live", timeout=EXPECT_MS)

    killed = time.monotonic()
    outage_redis.kill()
    # "reconnecting" right after losing the stream, "unreachable" once retries fail: both say reconnecting.
    expect(indicator).to_have_attribute("data-status", DOWN_STATUS, timeout=OUTAGE_MS)
    expect(indicator).to_contain_text("reconnecting", timeout=EXPECT_MS)
    noticed = time.monotonic() - killed

    restarted = time.monotonic()
    outage_redis.start()  # same port, empty dataset
    started = time.monotonic() - restarted
    expect(indicator).to_have_attribute("data-status", "live", timeout=RECOVERY_MS)
    recovered = time.monotonic() - restarted
    expect(indicator).to_contain_text("live", timeout=EXPECT_MS)
    expect(indicator).not_to_contain_text("reconnecting", timeout=EXPECT_MS)

    print(
        f"\nindicator: not live {noticed:.2f} s after Redis was killed; live again {recovered:.2f} s after "
        f"the restart began (Redis itself took {started:.2f} s)"
    )
    assert page.locator("html").get_attribute("data-e2e-ws") == "open", "the page's own websocket dropped"
    assert_not_reloaded(page, marker)
    browser_errors.assert_clean()


def test_times_show_dates_ages_and_switch_to_local_time(browser: Browser, dashboard_server: LiveServer) -> None:
    # Once times were clock-only (HH:MM:SS.mmm UTC): no date, no age, no local time.
    sent = api_dispatch(dashboard_server, {"name": UNFURL, "kwargs": {"url": f"https://example.com/t{uuid.uuid4()}"}})
    context = browser.new_context(timezone_id="Asia/Tokyo")  # UTC+9, no daylight saving
    try:
        page = context.new_page()
        page.set_default_timeout(EXPECT_MS)
        page.goto(f"{dashboard_server.url}/tasks")
        first_seen = task_row(page, sent["task_id"]).locator("time")
        expect(first_seen).to_have_text(re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC$"))
        expect(first_seen).to_have_attribute("title", re.compile(r" · \d+ s ago$"))  # the age, on hover
        utc_hour = int(first_seen.inner_text()[11:13])

        page.get_by_role("button", name="Times: UTC").click()
        expect(page.get_by_role("button", name="Times: local")).to_have_attribute("aria-pressed", "true")
        expect(first_seen).to_have_text(re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$"))
        assert int(first_seen.inner_text()[11:13]) == (utc_hour + 9) % 24

        page.goto(f"{dashboard_server.url}/tasks/{sent['task_id']}")  # the choice is kept
        timeline = page.locator("#task-detail .timeline time").first
        expect(timeline).to_have_text(re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3}$"))
    finally:
        context.close()


def test_a_part_of_a_name_filters_and_rows_show_args_and_results(
    page: Page, dashboard_server: LiveServer, browser_errors: BrowserErrors
) -> None:
    url = f"https://example.com/cols-{uuid.uuid4().hex[:8]}"
    sent = api_dispatch(dashboard_server, {"name": UNFURL, "kwargs": {"url": url}})
    page.goto(f"{dashboard_server.url}/tasks")
    page.get_by_label("Name").fill("link.unf")  # a part of worker.tasks.link.unfurl
    page.get_by_label("Name").press("Enter")

    row = task_row(page, sent["task_id"])
    expect(row).to_have_attribute("data-state", "SUCCESS", timeout=RUN_MS)
    expect(row.locator("td.args")).to_contain_text(url[:40], timeout=EXPECT_MS)
    expect(row.locator("td.result")).not_to_have_text("–", timeout=EXPECT_MS)
    expect(page.locator("#task-table tr.task")).to_have_count(
        page.locator(f'#task-table tr.task:has(.task-name:text-is("{UNFURL}"))').count())
    browser_errors.assert_clean()


def test_a_chain_shows_as_a_workflow_tree_and_its_next_step_appears_live(
    page: Page, dashboard_server: LiveServer, browser_errors: BrowserErrors, celery_client: Any
) -> None:
    from celery import chain

    slow = celery_client.signature("worker.tasks.demo.slow", kwargs={"seconds": 2, "steps": 2}, immutable=True,
                                   queue="default")
    unfurl = celery_client.signature(UNFURL, kwargs={"url": "https://example.com/chain"}, immutable=True,
                                     queue="default")
    last = chain(slow, unfurl).apply_async()
    first_id = str(last.parent.id)

    marker = open_live(page, f"{dashboard_server.url}/tasks/{first_id}")
    tree = page.locator("#task-family")
    expect(tree.locator(f'.node[data-task-id="{first_id}"]')).to_have_attribute("data-depth", "0", timeout=RUN_MS)
    child = tree.locator(f'.node[data-task-id="{last.id}"]')
    expect(child).to_have_attribute("data-depth", "1", timeout=RUN_MS)  # published by the worker, seen live
    expect(child.locator(".state")).to_have_text("SUCCESS", timeout=RUN_MS)
    expect(child.get_by_role("link", name=str(last.id))).to_be_visible()
    assert_not_reloaded(page, marker)
    browser_errors.assert_clean()


def test_columns_sort_by_a_click(page: Page, dashboard_server: LiveServer, browser_errors: BrowserErrors) -> None:
    for seconds in (0.3, 0.1):
        api_dispatch(dashboard_server, {"name": "worker.tasks.demo.slow", "kwargs": {"seconds": seconds, "steps": 1}})
    page.goto(f"{dashboard_server.url}/tasks")
    page.get_by_role("link", name="Runtime").click()
    header = page.locator('th.sortable:has-text("Runtime")')
    expect(header).to_have_attribute("aria-sort", "descending", timeout=EXPECT_MS)
    expect(page).to_have_url(re.compile(r"sort=-runtime"))

    def runtimes() -> list[float]:
        texts = page.locator("#task-table td.runtime").all_inner_texts()
        return [float(text.split()[0]) for text in texts if text.strip() != "–"]

    wait_until(lambda: len(runtimes()) >= 2, RUN_MS / 1000, "two runtimes in the table")
    shown = runtimes()
    assert shown == sorted(shown, reverse=True), shown
    page.get_by_role("link", name="Runtime ↓").click()
    expect(header).to_have_attribute("aria-sort", "ascending", timeout=EXPECT_MS)
    browser_errors.assert_clean()
