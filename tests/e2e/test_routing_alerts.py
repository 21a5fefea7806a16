"""Routing alerts in Chromium: a forced dispatch to an orphaned queue raises the banner live, the one-click fix
clears it, and the dispatch form warns before sending there.

The module owns its Redis, one worker consuming only "stt" and "default" (so "llm", where summarize_note goes,
has no consumer) and a dashboard on them with the sample config minus its deliberate translate mismatch, so
that the only alert that can appear is the one a test causes. The tests run in file order and each leaves no
message behind: the guard test drains "llm" again, the fix-form test deletes its throwaway queue, and the alert
test, last, ends with the worker consuming "llm".
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Locator, Page, Response, expect

from dashboard.services.processes import CeleryWorker, RedisServer
from tests.conftest import REPO_ROOT
from tests.e2e.browser_errors import BrowserErrors
from tests.e2e.live_helpers import api_dispatch, assert_not_reloaded, open_live
from tests.support.live_server import LiveServer, StartDashboard, dashboard_config
from tests.support.processes import started

EXPECT_MS = 5_000
ALERT_MS = 15_000  # inspection every 0.5 s, alert grace 1 s; generous for a loaded machine
API_TIMEOUT = 5.0
SUMMARIZE = "worker.tasks.llm.summarize_note"
TRANSLATE = "worker.tasks.llm.translate"  # the sample config's deliberate mismatch, left out here
ORPHAN = "llm"
ORPHAN_KEY = f"orphaned_queue:{ORPHAN}"
WORKER_QUEUES = ("stt", "default")
FIX_ATTEMPTS = 5
FIX_ATTEMPT_MS = 1_500





@pytest.fixture(scope="module")
def alerts_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    directory: Path = tmp_path_factory.mktemp("alerts-redis")
    with started(RedisServer(directory=directory, log_path=directory / "redis.log")) as server:
        yield server


@pytest.fixture(scope="module")
def partial_worker(alerts_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CeleryWorker]:
    """A stub worker (every task registered, the stub's own routes) that consumes stt and default, not llm."""
    with started(CeleryWorker(
        alerts_redis.url(0),
        backend_url=alerts_redis.url(1),
        name=f"alerts-{uuid.uuid4().hex[:6]}",
        queues=WORKER_QUEUES,
        log_path=tmp_path_factory.mktemp("alerts-worker") / "worker.log",
        cwd=REPO_ROOT,
        pythonpath=[REPO_ROOT],
    )) as worker:
        yield worker


@pytest.fixture(scope="module")
def alerts_dashboard(
    alerts_redis: RedisServer, partial_worker: CeleryWorker, start_dashboard: StartDashboard
) -> LiveServer:
    """The sample config on `alerts_redis` without translate, with [monitor] inspect_interval 0.5, grace 1."""
    base = dashboard_config(alerts_redis.url(0), alerts_redis.url(1))
    routes = {k: v for k, v in base["routes"].items() if k != TRANSLATE}
    tasks = {k: v for k, v in base["tasks"].items() if k != TRANSLATE}
    config = {**base, "routes": routes, "tasks": tasks, "monitor": {"inspect_interval": 0.5, "alert_grace": 1.0}}
    return start_dashboard(config, name="alerts")


@pytest.fixture
def throwaway_queue(broker_redis: redis.Redis) -> Iterator[str]:
    """A queue name nobody consumes; whatever waits there is deleted afterwards, which clears its alert."""
    queue = f"e2e-orphan-{uuid.uuid4().hex[:8]}"
    try:
        yield queue
    finally:
        broker_redis.delete(queue)


@pytest.fixture
def broker_redis(alerts_redis: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(alerts_redis.url(0), socket_timeout=2, socket_connect_timeout=2)
    try:
        yield client
    finally:
        client.close()


def banner(page: Page) -> Locator:
    return page.locator("#alert-banner")


def expect_no_alert(page: Page, timeout: float = ALERT_MS) -> None:
    expect(banner(page)).to_have_attribute("data-count", "0", timeout=timeout)
    expect(banner(page)).to_be_hidden(timeout=EXPECT_MS)


def catalog_form(page: Page, task_name: str) -> Locator:
    heading = page.locator("h2 code.task-name", has_text=re.compile(rf"^{re.escape(task_name)}$"))
    return page.locator(".catalog form.dispatch-form", has=heading)


def submit(page: Page, form: Locator) -> Response:
    """Click Send and return the POST /dispatch response (htmx then swaps the form in place)."""
    with page.expect_response(
        lambda r: r.request.method == "POST" and r.url.endswith("/dispatch"), timeout=EXPECT_MS
    ) as info:
        form.locator("button[type=submit]").click()
    response = info.value
    assert response.request.headers.get("hx-request") == "true", "the form was posted without htmx"
    return response


def test_dispatch_form_warns_about_the_orphaned_queue_and_sends_only_when_confirmed(
    page: Page,
    alerts_dashboard: LiveServer,
    browser_errors: BrowserErrors,
    broker_redis: redis.Redis,
) -> None:
    # The guard judges from the latest inspection: load the page once the routing report has the worker.
    routing_row = f'#routing tr[data-task="{SUMMARIZE}"][data-status="orphaned"]'
    open_live(page, f"{alerts_dashboard.url}/routing")
    expect(page.locator(routing_row)).to_have_count(1, timeout=ALERT_MS)
    broker_redis.delete(ORPHAN)

    marker = open_live(page, f"{alerts_dashboard.url}/")
    form = catalog_form(page, SUMMARIZE)
    warning = form.locator(".route-preview .guard-warning")
    expect(warning).to_be_visible(timeout=EXPECT_MS)
    expect(warning).to_contain_text(f"no online worker consumes queue '{ORPHAN}'", timeout=EXPECT_MS)
    with page.expect_response(lambda r: "/dispatch/preview" in r.url, timeout=EXPECT_MS):
        form.locator('[name="arg.note_id"]').fill(f"e2e-guard-{uuid.uuid4().hex[:8]}")

    response = submit(page, form)
    assert response.status == 409
    force = form.locator('.refused input[type=checkbox][name="force"]')
    expect(force).to_be_visible(timeout=EXPECT_MS)
    expect(form.locator(".refused")).to_contain_text("Send anyway", timeout=EXPECT_MS)
    expect(form.locator(".sent")).to_have_count(0, timeout=EXPECT_MS)
    assert broker_redis.llen(ORPHAN) == 0, "a refused dispatch was published anyway"

    force.check()
    response = submit(page, form)
    assert response.status == 200
    expect(form.locator(".sent .task-id")).to_have_count(1, timeout=EXPECT_MS)
    expect(form.locator(".sent strong")).to_have_text(ORPHAN, timeout=EXPECT_MS)
    expect(form.locator(".refused")).to_have_count(0, timeout=EXPECT_MS)
    assert broker_redis.llen(ORPHAN) == 1, "the confirmed dispatch did not reach the llm queue"
    assert_not_reloaded(page, marker)

    broker_redis.delete(ORPHAN)  # leave no orphaned message behind for the alert test
    browser_errors.assert_clean(allow_status=[409])


def raise_orphan_alert(server: LiveServer, queue: str | None = None) -> None:
    """Force-send summarize_note (to its routed queue, or to `queue`), where no online worker consumes."""
    body: dict[str, Any] = {"name": SUMMARIZE, "kwargs": {"note_id": "e2e-orphan"}, "force": True}
    if queue is not None:
        body["options"] = {"queue": queue}
    api_dispatch(server, body)


def orphan_alert(page: Page, queue: str) -> Locator:
    return page.locator(f'#alerts-panel li.alert[data-kind="orphaned_queue"][data-key="orphaned_queue:{queue}"]')


def request_fix(page: Page, alert: Locator, worker: str) -> tuple[Response, int]:
    """Pick `worker`, tick "I confirm" and click "Add consumer" like a user; return the response and attempts.

    Retried because of the bug pinned by test_fix_form_input_survives_live_updates: a live push that lands
    between the tick and the click replaces the form, and the browser then refuses to submit the fresh form
    with its required box unticked.
    """
    for attempt in range(1, FIX_ATTEMPTS + 1):
        fix = alert.locator("form.fix-form")
        try:
            fix.locator('select[name="worker"]').select_option(worker)
            fix.locator('input[type=checkbox][name="confirm"]').check()
            with page.expect_response(
                lambda r: r.url.endswith("/routing/add-consumer"), timeout=FIX_ATTEMPT_MS
            ) as info:
                fix.get_by_role("button", name="Add consumer").click()
        except PlaywrightError:
            continue  # the form was replaced under us: fill in the fresh one
        return info.value, attempt
    pytest.fail(f"no add-consumer request went out in {FIX_ATTEMPTS} attempts", pytrace=False)


def test_fix_form_input_survives_live_updates(
    page: Page,
    alerts_dashboard: LiveServer,
    partial_worker: CeleryWorker,
    browser_errors: BrowserErrors,
    throwaway_queue: str,
) -> None:
    open_live(page, f"{alerts_dashboard.url}/routing")
    raise_orphan_alert(alerts_dashboard, throwaway_queue)
    alert = orphan_alert(page, throwaway_queue)
    expect(alert).to_have_count(1, timeout=ALERT_MS)
    fix = alert.locator("form.fix-form")
    fix.locator('select[name="worker"]').select_option(partial_worker.hostname)
    confirm = fix.locator('input[type=checkbox][name="confirm"]')
    confirm.check()

    # Tag the panel the user is filling in; the tag would disappear if a live push replaced the element.
    page.locator("#alerts-panel").evaluate("panel => { panel.dataset.e2eFilledIn = 'yes'; }")
    page.wait_for_timeout(3_000)  # several inspections (0.5 s) and worker heartbeats go by
    expect(page.locator("#alerts-panel[data-e2e-filled-in]")).to_have_count(1)
    expect(alert).to_have_count(1, timeout=EXPECT_MS)

    assert confirm.is_checked(), "a live update of #alerts-panel unticked the user's confirm box"
    browser_errors.assert_clean()


ONE_LINE_PX = 30  # a name or badge on one line is ~18-22 px high here; two lines would be ~36 or more


def test_names_and_badges_never_wrap_mid_word(page: Page, alerts_dashboard: LiveServer) -> None:
    # Once "worker.tasks.dem / o.fail" and "unavailab / le" broke across lines, content capped at 1200 px.
    page.set_viewport_size({"width": 1600, "height": 900})
    open_live(page, f"{alerts_dashboard.url}/routing")
    expect(page.locator("#routing code.task-name").first).to_be_visible(timeout=ALERT_MS)
    # One read of every box at once: the routing tables are redrawn live, so element handles go stale.
    boxes = page.evaluate(
        "() => Array.from(document.querySelectorAll('#routing code.task-name, #routing .badge'))"
        ".map(e => [e.textContent, e.getBoundingClientRect().height])"
    )
    assert boxes, "no names or badges on the routing page"
    wrapped = [(text, height) for text, height in boxes if height >= ONE_LINE_PX]
    assert wrapped == [], f"these wrap: {wrapped}"


def test_forced_dispatch_raises_orphaned_alert_live_and_the_fix_clears_it(
    page: Page,
    alerts_dashboard: LiveServer,
    partial_worker: CeleryWorker,
    browser_errors: BrowserErrors,
) -> None:
    marker = open_live(page, f"{alerts_dashboard.url}/routing")
    task_row = page.locator(f'#routing tr[data-task="{SUMMARIZE}"]')
    expect(task_row).to_have_attribute("data-status", "orphaned", timeout=ALERT_MS)
    expect(task_row.locator(".explanation[data-problem=orphaned]")).to_contain_text(
        f"No online worker consumes queue '{ORPHAN}'", timeout=EXPECT_MS
    )
    expect_no_alert(page)
    # Nothing waits there yet, but nobody consumes it either: once a green "ok" sat beside a red "nobody".
    queue_badge = page.locator(f'#routing tr[data-queue="{ORPHAN}"] .badge')
    expect(queue_badge).to_have_text("no consumer", timeout=EXPECT_MS)
    expect(queue_badge).to_have_class(re.compile(r"\bwarn\b"))

    sent_at = time.monotonic()
    raise_orphan_alert(alerts_dashboard)

    item = banner(page).locator(f'.alert-item[data-kind="orphaned_queue"][data-key="{ORPHAN_KEY}"]')
    expect(banner(page)).to_be_visible(timeout=ALERT_MS)
    expect(item).to_contain_text(f"waiting in '{ORPHAN}'", timeout=ALERT_MS)
    raised = time.monotonic() - sent_at
    expect(banner(page)).to_have_attribute("data-count", "1", timeout=EXPECT_MS)
    expect(page.locator(f'#routing tr[data-queue="{ORPHAN}"]')).to_have_attribute(
        "data-status", "orphaned", timeout=EXPECT_MS
    )
    alert = orphan_alert(page, ORPHAN)
    expect(alert).to_have_count(1, timeout=EXPECT_MS)
    assert_not_reloaded(page, marker)

    fixed_at = time.monotonic()
    response, attempts = request_fix(page, alert, partial_worker.hostname)
    assert response.status == 200, response.text()
    assert 'class="sent fix-outcome"' in response.text()
    outcome = page.locator("#fix-results .fix-outcome").first
    expect(outcome).to_contain_text(f"{partial_worker.hostname}: add consumer {ORPHAN}", timeout=EXPECT_MS)

    # The worker now consumes llm, runs the waiting task, the queue drains and the alert clears.
    expect(alert).to_have_count(0, timeout=ALERT_MS)
    expect_no_alert(page)
    cleared = time.monotonic() - fixed_at
    expect(page.locator("#alerts-panel .no-alerts")).to_be_visible(timeout=EXPECT_MS)
    # Once the live panel took the outcome away with the alert, before anyone could read it: it stays now.
    expect(outcome).to_be_visible()
    expect(outcome).to_contain_text(ORPHAN)
    expect(task_row).to_have_attribute("data-status", "ok", timeout=ALERT_MS)
    expect(page.locator(f'#routing tr[data-queue="{ORPHAN}"] .depth')).to_have_text("0", timeout=EXPECT_MS)
    print(
        f"\norphaned_queue alert: raised {raised:.2f} s after the dispatch, cleared {cleared:.2f} s after the fix "
        f"(the fix form took {attempts} attempt(s))"
    )
    assert_not_reloaded(page, marker)
    browser_errors.assert_clean()
