"""History in Chromium, as a person uses it: the search box on the tasks page (a new match appears live, a bad
search says why), export links, the tasks page after a restart, and the stats and status pages."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.browser_errors import BrowserErrors
from tests.e2e.live_helpers import api_dispatch, assert_not_reloaded, open_live
from tests.support.http import request
from tests.support.live_server import ConfigFactory, LiveServer, StartDashboard
from tests.support.waits import wait_until

pytestmark = pytest.mark.usefixtures("stub_worker")  # dispatched tasks really run

EXPECT_MS = 5_000
RUN_MS = 10_000
UNFURL = "worker.tasks.link.unfurl"
FAIL = "worker.tasks.demo.fail"


def written(server: LiveServer, task_id: str) -> bool:
    """The task's final state is in history: nothing waits for a group commit, and the store has it."""
    history = request(server, "GET", "/api/status").json()["history"]
    return bool(history["pending"] == 0 and history["written"] and
                request(server, "GET", f"/api/tasks?q=id:{task_id}").json()["total"] == 1)


def ready(server: LiveServer) -> None:
    wait_until(lambda: request(server, "GET", "/readyz").status == 200, 10.0, "/readyz 200", server)


def test_the_search_box_finds_tasks_and_a_new_match_appears_live(
    page: Page, dashboard_server: LiveServer, browser_errors: BrowserErrors
) -> None:
    word = f"needle{uuid.uuid4().hex[:8]}"
    first = api_dispatch(dashboard_server, {"name": UNFURL, "kwargs": {"url": f"https://example.com/{word}/a"}})
    other = api_dispatch(dashboard_server, {"name": UNFURL, "kwargs": {"url": "https://example.com/haystack"}})
    page.goto(f"{dashboard_server.url}/tasks")
    page.get_by_label("Search").fill(f"name:worker.tasks.link.* {word}")
    page.get_by_label("Search").press("Enter")

    expect(page.locator(f'#task-table tr[data-task-id="{first["task_id"]}"]')).to_have_count(1, timeout=RUN_MS)
    expect(page.locator(f'#task-table tr[data-task-id="{other["task_id"]}"]')).to_have_count(0)
    expect(page.locator("#task-table tr.task")).to_have_count(1)
    expect(page.get_by_role("link", name="CSV")).to_be_visible()
    marker = open_live(page, page.url)  # the same search, its websocket open

    later = api_dispatch(dashboard_server, {"name": UNFURL, "kwargs": {"url": f"https://example.com/{word}/b"}})
    api_dispatch(dashboard_server, {"name": UNFURL, "kwargs": {"url": "https://example.com/haystack-2"}})

    new_row = page.locator(f'#task-table tr[data-task-id="{later["task_id"]}"]')
    expect(new_row).to_have_count(1, timeout=EXPECT_MS)
    expect(new_row).to_have_attribute("data-state", "SUCCESS", timeout=RUN_MS)
    expect(page.locator("#task-table tr.task")).to_have_count(2)
    assert_not_reloaded(page, marker)
    with page.expect_download() as download:
        page.get_by_role("link", name="CSV").click()
    text = Path(download.value.path()).read_text(encoding="utf-8")
    assert first["task_id"] in text and later["task_id"] in text and other["task_id"] not in text
    browser_errors.assert_clean()


def test_a_malformed_search_says_what_is_wrong(page: Page, dashboard_server: LiveServer) -> None:
    page.goto(f"{dashboard_server.url}/tasks")
    page.get_by_label("Search").fill("state:DONE")
    page.get_by_label("Search").press("Enter")

    expect(page.locator("#filter-error")).to_contain_text("'DONE' is not a state")
    expect(page.get_by_label("Search")).to_have_value("state:DONE")


def test_the_tasks_page_shows_the_same_tasks_after_a_restart(
    page: Page, start_dashboard: StartDashboard, dashboard_config_for: ConfigFactory, tmp_path: Path,
    browser_errors: BrowserErrors,
) -> None:
    env = {"DASHBOARD_HISTORY_URL": str(tmp_path / "kept.sqlite3")}
    before = start_dashboard(dashboard_config_for(), name="before-restart", env=env)
    ready(before)  # subscribed to events: the worker's events about the task are not sent before anyone listens
    sent = api_dispatch(before, {"name": FAIL, "kwargs": {"message": "kept across restarts"}})
    open_live(page, f"{before.url}/tasks")
    expect(page.locator(f'#task-table tr[data-task-id="{sent["task_id"]}"]')).to_have_attribute(
        "data-state", "FAILURE", timeout=RUN_MS)
    wait_until(lambda: written(before, sent["task_id"]), 10.0, "the failure written to history", before)
    before.stop()

    after = start_dashboard(dashboard_config_for(), name="after-restart", env=env)
    page.goto(f"{after.url}/tasks")

    restored = page.locator(f'#task-table tr[data-task-id="{sent["task_id"]}"]')
    expect(restored).to_have_attribute("data-state", "FAILURE", timeout=EXPECT_MS)
    restored.locator("a.task-id, a").first.click()
    expect(page.locator("#task-detail")).to_contain_text("kept across restarts", timeout=EXPECT_MS)
    browser_errors.assert_clean()


def test_stats_and_status_pages_through_the_navigation(
    page: Page, dashboard_server: LiveServer, browser_errors: BrowserErrors
) -> None:
    sent = api_dispatch(dashboard_server, {"name": UNFURL, "kwargs": {"url": "https://example.com/stats"}})
    page.goto(f"{dashboard_server.url}/tasks/{sent['task_id']}")
    expect(page.locator("#task-detail")).to_contain_text("SUCCESS", timeout=RUN_MS)

    page.get_by_role("link", name="Stats", exact=True).click()
    article = page.locator(f'#stats-tasks article[data-name="{UNFURL}"]')
    expect(article).to_have_count(1, timeout=EXPECT_MS)
    expect(article.locator("svg.chart").first).to_be_visible()
    page.get_by_role("link", name="last day").click()
    expect(page.locator(f'#stats-tasks article[data-name="{UNFURL}"]')).to_have_count(1)

    page.get_by_role("link", name="Status", exact=True).click()
    expect(page.locator("#history-role")).to_contain_text("writer")
    expect(page.locator("#history-dropped")).to_have_text("0")
    browser_errors.assert_clean()


def test_a_bulk_action_over_a_search_previews_and_runs_on_its_matches(
    page: Page, dashboard_server: LiveServer, browser_errors: BrowserErrors
) -> None:
    word = f"bulk{uuid.uuid4().hex[:8]}"
    failed = [api_dispatch(dashboard_server, {"name": FAIL, "kwargs": {"message": f"{word} {n}"}}) for n in range(2)]
    page.goto(f"{dashboard_server.url}/tasks")
    page.get_by_label("Search").fill(f"kwargs:{word}")
    page.get_by_label("Search").press("Enter")
    for sent in failed:
        expect(page.locator(f'#task-table tr[data-task-id="{sent["task_id"]}"]')).to_have_attribute(
            "data-state", "FAILURE", timeout=RUN_MS)

    page.locator("#bulk-panel summary").click()
    expect(page.locator("#bulk-panel")).to_contain_text(f"kwargs:{word}")
    page.locator("#bulk-panel select[name=action]").select_option("redispatch")
    page.locator("#bulk-panel button.bulk-preview").click()

    count = page.locator("#bulk-result .bulk-count")
    expect(count).to_have_attribute("data-count", "2", timeout=EXPECT_MS)
    page.locator("#bulk-result button.bulk-run-button").click()
    status = page.locator("#bulk-result .bulk-progress")
    expect(status).to_have_attribute("data-running", "false", timeout=RUN_MS)
    expect(status.locator(".bulk-count-sent")).to_have_text("2")
    browser_errors.assert_clean()
