"""Task, bulk and worker actions in Chromium, through the real buttons and forms: revoke, revoke and terminate with a
chosen signal, dispatch again, edit and send, a row's revoke, bulk preview then run, and the worker page's pool
grow/shrink, cancel consumer and rate limit.

The module owns its Redis, one prefork stub worker (two processes: terminate and pool resizing act on processes)
and a dashboard with the sample config. Tests wait for what they need; each leaves the worker as it found it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from playwright.sync_api import Dialog, Page, expect

from dashboard.services.processes import CeleryWorker, RedisServer
from tests.conftest import REPO_ROOT
from tests.e2e.live_helpers import api_dispatch, open_live
from tests.support.http import get
from tests.support.live_server import LiveServer, StartDashboard, dashboard_config
from tests.support.processes import started
from tests.support.waits import wait_until

EXPECT_MS = 10_000
SLEEP = "worker.tasks.demo.sleep"
FAIL = "worker.tasks.demo.fail"
UNFURL = "worker.tasks.link.unfurl"


@pytest.fixture(scope="module")
def actions_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    directory: Path = tmp_path_factory.mktemp("actions-redis")
    with started(RedisServer(directory=directory, log_path=directory / "redis.log")) as server:
        yield server


@pytest.fixture(scope="module")
def prefork_worker(actions_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CeleryWorker]:
    with started(CeleryWorker(
        actions_redis.url(0), backend_url=actions_redis.url(1), name=f"e2e-act-{uuid.uuid4().hex[:6]}",
        queues=("stt", "llm", "default"), pool="prefork", concurrency=2,
        log_path=tmp_path_factory.mktemp("actions-worker") / "worker.log", cwd=REPO_ROOT, pythonpath=[REPO_ROOT],
    )) as worker:
        yield worker


@pytest.fixture(scope="module")
def server(actions_redis: RedisServer, prefork_worker: CeleryWorker, start_dashboard: StartDashboard) -> LiveServer:
    live = start_dashboard(dashboard_config(actions_redis.url(0), actions_redis.url(1)), name="actions")
    wait_until(lambda: any(w["hostname"] == prefork_worker.hostname and w["queues"]
                           for w in get(live, "/api/workers")["workers"]), 20.0, "the worker inspected", live)
    return live


@pytest.fixture
def accept_dialogs(page: Page) -> Page:
    """Accept hx-confirm's confirmation boxes, like a person clicking OK."""

    def accept(dialog: Dialog) -> None:
        dialog.accept()

    page.on("dialog", accept)
    return page


def open_task(page: Page, server: LiveServer, task_id: str, state: str) -> None:
    open_live(page, f"{server.url}/tasks/{task_id}")
    expect(page.locator("#task-detail [data-state]")).to_have_attribute("data-state", state, timeout=EXPECT_MS)
    expect(page.locator("#task-actions")).to_be_visible(timeout=EXPECT_MS)


def test_revoke_and_terminate_with_a_chosen_signal(accept_dialogs: Page, server: LiveServer) -> None:
    page = accept_dialogs
    scheduled = api_dispatch(server, {"name": SLEEP, "kwargs": {"seconds": 60}, "options": {"countdown": 300}})
    open_task(page, server, scheduled["task_id"], "RECEIVED")
    page.locator("#task-actions button.revoke").click()
    expect(page.locator("#task-action-result")).to_contain_text(re.compile(r"revoked: 1 worker\(s\) answered"),
                                                                timeout=EXPECT_MS)

    running = api_dispatch(server, {"name": SLEEP, "kwargs": {"seconds": 60}})
    open_task(page, server, running["task_id"], "STARTED")
    page.locator("#task-actions select[name=signal]").select_option("SIGKILL")
    page.locator("#task-actions button.revoke-terminate").click()

    expect(page.locator("#task-action-result")).to_contain_text("revoked and terminated with SIGKILL",
                                                                timeout=EXPECT_MS)
    expect(page.locator("#task-detail [data-state]")).to_have_attribute("data-state", "REVOKED", timeout=EXPECT_MS)
    expect(page.locator("#task-detail .timeline")).to_contain_text("signum=9")


def test_dispatch_again_links_the_new_task_and_the_original(accept_dialogs: Page, server: LiveServer) -> None:
    page = accept_dialogs
    original = api_dispatch(server, {"name": UNFURL, "kwargs": {"url": f"https://example.com/{uuid.uuid4().hex}"}})
    open_task(page, server, original["task_id"], "SUCCESS")
    expect(page.locator("#task-actions .call-source")).to_contain_text("exact arguments from the audit log")

    page.locator("#task-actions button.redispatch").click()
    result = page.locator("#task-action-result")
    expect(result).to_contain_text("dispatched again as", timeout=EXPECT_MS)
    expect(page.locator("#task-actions .dispatched-again a")).to_have_count(1, timeout=EXPECT_MS)
    result.locator("a.new-task").click()

    expect(page.locator("#task-actions .dispatch-of")).to_contain_text(original["task_id"], timeout=EXPECT_MS)
    expect(page.locator("#task-detail [data-state]")).to_have_attribute("data-state", "SUCCESS", timeout=EXPECT_MS)


def test_edit_and_send_asks_to_check_a_repr_then_sends_a_linked_task(page: Page, server: LiveServer,
                                                                     actions_redis: RedisServer) -> None:
    other_api = Celery("other-api", broker=actions_redis.url(0), set_as_current=False)
    other_api.conf.update(task_send_sent_event=True)
    try:  # sent by another producer, to a queue nobody consumes: only the event's repr is known
        task_id = other_api.send_task(UNFURL, kwargs={"url": "https://example.com/" + "y" * 2000},
                                      queue="e2e-nobody").id
    finally:
        other_api.close()
    open_task(page, server, task_id, "PENDING")
    expect(page.locator("#task-actions button.redispatch")).to_be_disabled()
    expect(page.locator("#task-actions .revoke-unheard")).to_contain_text("no online worker consumes")

    page.locator("#task-actions a.edit-send").click()
    form = page.locator("form#dispatch-raw")
    expect(form.locator(".inexact-args")).to_contain_text("not known")
    expect(form.locator("input[name=name]")).to_have_value(UNFURL)
    form.locator("textarea[name=kwargs]").fill('{"url": "https://example.com/edited"}')
    form.locator("button[type=submit]").click()
    expect(form.locator("[role=alert]").first).to_contain_text("tick the box", timeout=EXPECT_MS)

    form.locator("input[name=checked]").check()
    form.locator("button[type=submit]").click()
    sent = form.locator(".sent[role=status]")
    expect(sent).to_contain_text("Sent", timeout=EXPECT_MS)
    sent.locator("a").click()
    expect(page.locator("#task-actions .dispatch-of")).to_contain_text(task_id, timeout=EXPECT_MS)
    expect(page.locator("#task-detail .kwargs")).to_contain_text("edited", timeout=EXPECT_MS)


def test_a_rows_revoke_button_in_the_tasks_list(accept_dialogs: Page, server: LiveServer) -> None:
    page = accept_dialogs
    task = api_dispatch(server, {"name": SLEEP, "kwargs": {"seconds": 1}, "options": {"countdown": 300}})
    open_live(page, f"{server.url}/tasks?name={SLEEP}")
    row = page.locator(f"tr[data-task-id='{task['task_id']}']")
    expect(row).to_have_attribute("data-state", "RECEIVED", timeout=EXPECT_MS)

    row.locator("button.row-revoke").click()

    expect(page.locator("#row-action-result")).to_contain_text(f"{task['task_id']} revoked", timeout=EXPECT_MS)


def test_a_failed_rows_again_button_in_the_tasks_list(accept_dialogs: Page, server: LiveServer) -> None:
    page = accept_dialogs
    marker = uuid.uuid4().hex[:8]
    failed = api_dispatch(server, {"name": FAIL, "kwargs": {"message": marker}})
    open_live(page, f"{server.url}/tasks?name={FAIL}")
    row = page.locator(f"tr[data-task-id='{failed['task_id']}']")
    expect(row).to_have_attribute("data-state", "FAILURE", timeout=EXPECT_MS)

    row.locator("button.row-redispatch").click()

    result = page.locator("#row-action-result")
    expect(result).to_contain_text("dispatched again as", timeout=EXPECT_MS)
    result.locator("a.new-task").click()
    expect(page.locator("#task-actions .dispatch-of")).to_contain_text(failed["task_id"], timeout=EXPECT_MS)


def test_bulk_preview_then_run(page: Page, server: LiveServer) -> None:
    marker = uuid.uuid4().hex[:8]
    failed = [api_dispatch(server, {"name": FAIL, "kwargs": {"message": f"{marker}-{n}"}}) for n in range(2)]
    def all_failed() -> bool:
        return all(get(server, f"/api/tasks/{task['task_id']}")["state"] == "FAILURE" for task in failed)

    wait_until(all_failed, 20.0, "the failures", server)
    open_live(page, f"{server.url}/tasks?name={FAIL}&state=FAILURE")
    page.locator("#bulk-panel summary").click()
    page.locator("#bulk-panel select[name=action]").select_option("redispatch")
    page.locator("#bulk-panel button.bulk-preview").click()

    count = page.locator("#bulk-result .bulk-count")
    expect(count).to_be_visible(timeout=EXPECT_MS)
    expected = int(count.get_attribute("data-count") or "0")
    assert expected >= 2
    expect(page.locator("#bulk-result .bulk-sample")).to_contain_text(failed[0]["task_id"])
    page.locator("#bulk-result button.bulk-run-button").click()

    status = page.locator("#bulk-result .bulk-progress")
    expect(status).to_have_attribute("data-running", "false", timeout=EXPECT_MS)
    expect(status.locator(".bulk-count-sent")).to_have_text(str(expected))


def settled(page: Page) -> None:
    """htmx has no request in flight and has processed what it swapped in (its buttons work)."""
    expect(page.locator(".htmx-request, .htmx-added, .htmx-settling")).to_have_count(0, timeout=EXPECT_MS)


def open_worker(page: Page, server: LiveServer, worker: CeleryWorker) -> None:
    page.goto(f"{server.url}/workers")
    page.locator(f"a.worker-link:has-text('{worker.hostname}')").click()
    expect(page.locator("h1 .worker-hostname")).to_have_text(worker.hostname)
    expect(page.locator("#worker-detail .pool-kind")).to_have_text("prefork", timeout=EXPECT_MS)


def test_worker_page_grows_and_shrinks_the_pool(page: Page, server: LiveServer, prefork_worker: CeleryWorker) -> None:
    open_worker(page, server, prefork_worker)
    size = page.locator("#worker-detail .pool-size")
    expect(size).to_have_attribute("data-size", "2", timeout=EXPECT_MS)

    page.locator("#worker-detail button.pool-grow").click()
    expect(page.locator("#worker-action-result")).to_contain_text("pool will grow", timeout=EXPECT_MS)
    expect(size).to_have_attribute("data-size", "3", timeout=EXPECT_MS)
    settled(page)
    page.locator("#worker-detail button.pool-shrink").click()
    expect(page.locator("#worker-action-result")).to_contain_text("pool will shrink", timeout=EXPECT_MS)
    expect(size).to_have_attribute("data-size", "2", timeout=EXPECT_MS)
    expect(page.locator("#worker-detail button.autoscale")).to_be_disabled()  # not started with --autoscale


def test_worker_page_cancels_a_consumer_and_sets_a_rate_limit(accept_dialogs: Page, server: LiveServer,
                                                              prefork_worker: CeleryWorker) -> None:
    page = accept_dialogs
    queue = f"e2e-extra-{uuid.uuid4().hex[:6]}"
    open_worker(page, server, prefork_worker)
    page.locator("#worker-detail .add-consumer-form input[name=queue]").fill(queue)
    page.locator("#worker-detail button.add-consumer").click()
    item = page.locator(f"#worker-detail .worker-queues li[data-queue='{queue}']")
    expect(page.locator("#worker-action-result")).to_contain_text(f"add consumer {queue}", timeout=EXPECT_MS)
    expect(item).to_be_visible(timeout=EXPECT_MS)
    settled(page)

    item.locator("button.cancel-consumer").click()
    expect(page.locator("#worker-action-result")).to_contain_text(f"no longer consuming from {queue}",
                                                                  timeout=EXPECT_MS)
    expect(item).to_have_count(0, timeout=EXPECT_MS)
    settled(page)

    row = page.locator(f"#worker-detail table.registered tr[data-task-name='{UNFURL}']")
    row.locator("input[name=rate]").fill("5/m")
    row.locator("button.set-rate").click()
    expect(page.locator("#worker-action-result")).to_contain_text("new rate limit set", timeout=EXPECT_MS)
    expect(page.locator(f"#worker-detail table.registered tr[data-task-name='{UNFURL}'] input[name=rate]")) \
        .to_have_value("5/m", timeout=EXPECT_MS)
    settled(page)

    row = page.locator(f"#worker-detail table.registered tr[data-task-name='{UNFURL}']")
    row.locator("input[name=soft]").fill("50")
    row.locator("input[name=hard]").fill("60")
    row.locator("button.set-time").click()
    expect(page.locator("#worker-action-result")).to_contain_text("time limits set successfully", timeout=EXPECT_MS)
    expect(page.locator(f"#worker-detail table.registered tr[data-task-name='{UNFURL}'] input[name=hard]")) \
        .to_have_value("60.0", timeout=EXPECT_MS)


def test_worker_page_terminates_an_active_task(accept_dialogs: Page, server: LiveServer,
                                               prefork_worker: CeleryWorker) -> None:
    page = accept_dialogs
    running = api_dispatch(server, {"name": SLEEP, "kwargs": {"seconds": 60}})
    wait_until(lambda: get(server, f"/api/tasks/{running['task_id']}")["state"] == "STARTED", 20.0, "STARTED",
               server)
    open_worker(page, server, prefork_worker)
    row = page.locator(f"#worker-detail table.active-tasks tr[data-task-id='{running['task_id']}']")
    expect(row).to_be_visible(timeout=EXPECT_MS)

    row.locator("select[name=signal]").select_option("SIGTERM")
    row.locator("button.worker-terminate").click()

    expect(page.locator("#worker-action-result")).to_contain_text("revoked and terminated with SIGTERM",
                                                                  timeout=EXPECT_MS)
    expect(row).to_have_count(0, timeout=EXPECT_MS)  # the panel is asked again: the task no longer runs
    wait_until(lambda: get(server, f"/api/tasks/{running['task_id']}")["state"] == "REVOKED", 20.0, "REVOKED",
               server)
