"""The queue browser and rescue in Chromium, like an operator: the orphaned-queue alert offers browse / move to… /
purge beside "add consumer"; the queue page shows the stranded messages (the typo flagged) without taking them;
move (prefilled target), delete-by-name and purge (typing the queue's name) run through their htmx forms and the
table follows.

The module owns its Redis, one worker consuming only its own target queue and a dashboard on them. Each test
strands messages in a queue of its own with a plain Celery app (the send-only pattern).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from celery import Celery
from playwright.sync_api import Dialog, Locator, Page, expect

from dashboard.model.kombu import KombuRedisLayout
from dashboard.services.processes import CeleryWorker, RedisServer
from tests.conftest import REPO_ROOT
from tests.e2e.browser_errors import BrowserErrors
from tests.support.live_server import LiveServer, StartDashboard, dashboard_config
from tests.support.processes import started
from tests.support.waits import wait_until

EXPECT_MS = 5_000
ALERT_MS = 15_000  # inspection every 0.5 s, alert grace 1 s; generous for a loaded machine
RUN_SECONDS = 15.0
UNFURL = "worker.tasks.link.unfurl"  # registered; the stub worker's own routes send it to "default"
TYPO = "worker.tasks.link.unfurll"  # registered by nobody
LAYOUT = KombuRedisLayout()


@dataclass
class Rig:
    server: LiveServer
    worker: CeleryWorker
    target: str
    client: Celery
    redis: redis.Redis

    def strand(self, name: str, count: int, queue: str) -> list[str]:
        return [self.client.send_task(name, kwargs={"url": f"https://example.com/<b>{i}</b>"}, queue=queue).id
                for i in range(count)]

    def depth(self, queue: str) -> int:
        return sum(int(self.redis.llen(key)) for key in LAYOUT.queue_keys(queue))

    def ran(self, task_id: str) -> int:
        return len(re.findall(rf"\[{re.escape(task_id)}\] succeeded", self.worker.log_path.read_text()))


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, start_dashboard: StartDashboard) -> Iterator[Rig]:
    directory: Path = tmp_path_factory.mktemp("queues-e2e")
    target = f"e2e-target-{uuid.uuid4().hex[:6]}"
    with started(RedisServer(directory=directory, log_path=directory / "redis.log")) as server, started(
        CeleryWorker(server.url(0), backend_url=server.url(1), name=f"rescuer-{uuid.uuid4().hex[:6]}",
                     queues=(target,), log_path=directory / "worker.log", cwd=REPO_ROOT, pythonpath=[REPO_ROOT])
    ) as worker:
        dashboard = start_dashboard(dashboard_config(server.url(0), server.url(1)), name="queues")
        client = Celery("e2e-strander", broker=server.url(0), set_as_current=False)
        connection = redis.Redis.from_url(server.url(0), socket_timeout=2, socket_connect_timeout=2)
        try:
            yield Rig(dashboard, worker, target, client, connection)
        finally:
            client.close()
            connection.close()


@pytest.fixture
def stranded() -> str:
    return f"e2e-stranded-{uuid.uuid4().hex[:8]}"


def accept_confirmations(page: Page) -> None:
    """htmx's hx-confirm asks window.confirm: say yes, as the operator would."""
    def accept(dialog: Dialog) -> None:
        dialog.accept()

    page.on("dialog", accept)


def rows(page: Page) -> Locator:
    return page.locator("#queue-messages tr.message")


def open_queue(page: Page, rig: Rig, queue: str) -> None:
    page.goto(f"{rig.server.url}/queues/{queue}")
    expect(page.locator("#queue-name")).to_have_text(queue)


def test_the_orphan_alert_offers_browse_move_and_purge_and_browsing_takes_nothing(
    page: Page, rig: Rig, stranded: str, browser_errors: BrowserErrors
) -> None:
    ids = rig.strand(UNFURL, 2, stranded) + rig.strand(TYPO, 1, stranded)
    page.goto(f"{rig.server.url}/routing")
    alert = page.locator(f'#alerts-panel li.alert[data-key="orphaned_queue:{stranded}"]')
    expect(alert).to_have_count(1, timeout=ALERT_MS)
    expect(alert.get_by_role("button", name="Add consumer")).to_be_visible()
    expect(alert.get_by_role("link", name="move to…")).to_have_attribute("href", re.compile(r"#move$"))
    expect(alert.get_by_role("link", name="purge")).to_have_attribute("href", re.compile(r"#purge$"))

    alert.get_by_role("link", name="browse").click()

    expect(page).to_have_url(re.compile(rf"/queues/{stranded}$"))
    expect(page.locator("#queue-messages .depth")).to_have_text("3")
    expect(rows(page)).to_have_count(3)
    expect(rows(page).locator("code.task-name")).to_have_text([UNFURL, UNFURL, TYPO])
    unregistered = page.locator("#queue-messages tr.message.unregistered")
    expect(unregistered).to_have_count(1)
    expect(unregistered.locator(".badge")).to_have_text("unregistered")
    expect(unregistered.locator(".did-you-mean")).to_have_text(f"did you mean {UNFURL}?")
    expect(unregistered).to_have_attribute("data-id", ids[2])
    expect(page.locator(".unregistered-warning")).to_contain_text(TYPO)
    expect(rows(page).first.locator("td.kwargs")).to_contain_text("<b>0</b>")  # shown as text, never markup
    assert rig.depth(stranded) == 3  # nothing was taken
    later = rig.strand(TYPO, 1, stranded)
    page.locator("#queue-messages").get_by_role("button", name="Refresh").click()
    expect(page.locator("#queue-messages .depth")).to_have_text("4")
    expect(rows(page).last).to_have_attribute("data-id", later[0])
    page.goto(f"{rig.server.url}/routing")
    page.locator(f'#alerts-panel li.alert[data-key="orphaned_queue:{stranded}"]').get_by_role(
        "link", name="move to…").click()
    expect(page).to_have_url(re.compile(rf"/queues/{stranded}#move$"))
    expect(page.locator("form#move")).to_be_in_viewport()
    browser_errors.assert_clean()


def test_move_with_the_prefilled_target_then_elsewhere_runs_them_once(
    page: Page, rig: Rig, stranded: str, browser_errors: BrowserErrors
) -> None:
    moved = rig.strand(UNFURL, 2, stranded)
    typo = rig.strand(TYPO, 1, stranded)
    accept_confirmations(page)
    open_queue(page, rig, stranded)
    form = page.locator("form#move")
    target = form.get_by_label("Target queue")
    expect(target).to_have_value("default")  # where the worker's own routes send unfurl

    target.fill(rig.target)
    form.get_by_label("Only this task name").fill(UNFURL)
    form.get_by_label("I confirm").check()
    form.get_by_role("button", name="Move").click()

    expect(page.locator("#queue-results .fix-outcome").first).to_contain_text(
        f"moved 2 message(s) of {UNFURL} from {stranded} to {rig.target}")
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_have_attribute("data-id", typo[0])
    expect(page.locator("#queue-messages .depth")).to_have_text("1")
    wait_until(lambda: all(rig.ran(task_id) for task_id in moved), RUN_SECONDS, "each moved task run")
    assert [rig.ran(task_id) for task_id in moved] == [1, 1]  # exactly once each
    browser_errors.assert_clean()


def test_delete_by_name_removes_only_that_name(page: Page, rig: Rig, stranded: str,
                                                browser_errors: BrowserErrors) -> None:
    kept = rig.strand(UNFURL, 1, stranded)
    rig.strand(TYPO, 2, stranded)
    accept_confirmations(page)
    open_queue(page, rig, stranded)
    expect(rows(page)).to_have_count(3)
    form = page.locator("form#delete")

    form.get_by_label("Task name to delete").fill(TYPO)
    form.get_by_label("I confirm").check()
    form.get_by_role("button", name="Delete messages").click()

    expect(page.locator("#queue-results .fix-outcome").first).to_contain_text(
        f"deleted 2 message(s) of {TYPO} from {stranded}")
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_have_attribute("data-id", kept[0])
    assert rig.depth(stranded) == 1
    browser_errors.assert_clean()


def test_purge_needs_the_queue_name_typed(page: Page, rig: Rig, stranded: str, browser_errors: BrowserErrors) -> None:
    rig.strand(UNFURL, 2, stranded)
    rig.strand(TYPO, 1, stranded)
    accept_confirmations(page)
    open_queue(page, rig, stranded)
    form = page.locator("form#purge")
    typed = form.get_by_label("Type the queue's name to purge it")

    typed.fill(stranded[:-1])
    form.get_by_role("button", name="Purge queue").click()
    expect(page.locator("#queue-results .failure").first).to_contain_text("type the queue's name exactly")
    assert rig.depth(stranded) == 3

    typed.fill(stranded)
    form.get_by_role("button", name="Purge queue").click()

    expect(page.locator("#queue-results .sent").first).to_contain_text(f"purged 3 message(s) from {stranded}")
    expect(page.locator("#queue-messages .empty-queue")).to_be_visible()
    expect(page.locator("#queue-messages .depth")).to_have_text("0")
    assert rig.depth(stranded) == 0
    browser_errors.assert_clean(allow_status=[400])  # the wrong name, refused
