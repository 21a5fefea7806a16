"""The dispatch page in Chromium: catalog forms, live route preview, htmx submission, inline errors, send by name.

A user types, pauses, sees the route preview update, then sends. The tests do the same: after each edit,
`type_into` waits until htmx has swapped in the refreshed preview *and settled it* (htmx wires up swapped-in
elements only at settle, ~20 ms later; an edit before that refreshes nothing), so no step races the 300 ms
debounce or a swap in flight.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from playwright.sync_api import Locator, Page, Response, expect

from tests.e2e.browser_errors import BrowserErrors
from tests.support.http import get_json
from tests.support.live_server import ConfigFactory, LiveServer, StartDashboard
from tests.support.waits import wait_until

pytestmark = pytest.mark.usefixtures("stub_worker")  # sent tasks really run

EXPECT_MS = 5_000
RESULT_TIMEOUT = 10.0  # seconds for the stub worker's result to reach the backend
SUMMARIZE = "worker.tasks.llm.summarize_note"
UNFURL = "worker.tasks.link.unfurl"
TASK_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MARKER = "window.__e2eNoReload"  # set before a submission; a full page load would wipe it

@pytest.fixture
def broker_redis(broker_url: str) -> Iterator[redis.Redis]:
    """A client on the broker database, to see which queues hold messages."""
    client = redis.Redis.from_url(broker_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        yield client
    finally:
        client.close()


def unconsumed_queue() -> str:
    """A fresh queue name no worker consumes: a message sent there stays put, so an empty queue is proof."""
    return f"e2e-nobody-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def dead_end_dashboard(
    start_dashboard: StartDashboard, dashboard_config_for: ConfigFactory
) -> tuple[LiveServer, str]:
    """A second dashboard whose routes send llm tasks to a queue nobody consumes, and that queue's name."""
    queue = unconsumed_queue()
    routes = {**dashboard_config_for()["routes"], "worker.tasks.llm.*": queue}
    return start_dashboard(dashboard_config_for(routes=routes), name="dead-end"), queue


def open_dispatch_page(page: Page, server: LiveServer) -> str:
    """Load the index page and set a window marker that only survives if no full page load follows."""
    page.goto(f"{server.url}/")
    page.evaluate(SETTLE_COUNTER_JS)
    marker = uuid.uuid4().hex
    page.evaluate(f"{MARKER} = {marker!r}")
    return marker


def assert_not_reloaded(page: Page, marker: str) -> None:
    assert page.evaluate(MARKER) == marker, "the page was reloaded; htmx should have swapped the form in place"


def catalog_form(page: Page, task_name: str) -> Locator:
    """The catalog form of `task_name` (found by its heading, so it survives the form being swapped)."""
    heading = page.locator("h2 code.task-name", has_text=re.compile(rf"^{re.escape(task_name)}$"))
    return page.locator(".catalog form.dispatch-form", has=heading)


def raw_form(page: Page) -> Locator:
    return page.locator("form.dispatch-form.raw-form")


# Counts htmx:afterSettle per element id; installed once per page load (htmx swaps never reload the page).
SETTLE_COUNTER_JS = """() => {
  window.__e2eSettled = {};
  document.addEventListener("htmx:afterSettle", (event) => {
    const id = event.target && event.target.id;
    if (id) { window.__e2eSettled[id] = (window.__e2eSettled[id] || 0) + 1; }
  });
}"""


def settled_count(page: Page, element_id: str) -> int:
    """How many times htmx has swapped in and settled an element with this id since the page loaded."""
    count: int = page.evaluate(f"window.__e2eSettled[{element_id!r}] || 0")
    return count


def wait_settled(page: Page, element_id: str, more_than: int) -> None:
    """Poll with page.evaluate: wait_for_function compiles its predicate in the page, which our CSP forbids."""
    deadline = time.monotonic() + EXPECT_MS / 1000
    while settled_count(page, element_id) <= more_than:
        assert time.monotonic() < deadline, f"#{element_id} did not settle again within {EXPECT_MS} ms"
        page.wait_for_timeout(25)


def type_into(page: Page, form: Locator, name: str, value: str) -> None:
    """Fill the form's field `name` (the value must change) and wait for its route preview to refresh and settle."""
    preview_id = f"{form.get_attribute('id')}-preview"
    before = settled_count(page, preview_id)
    form.locator(f'[name="{name}"]').fill(value)
    wait_settled(page, preview_id, before)
    expect(form.locator(f"#{preview_id}"), "the refreshed preview should still sit inside its form").to_have_count(
        1, timeout=EXPECT_MS
    )


def submit(page: Page, form: Locator) -> Response:
    """Click Send, return the POST /dispatch response, and wait until htmx has swapped in and settled the form."""
    form_id = form.get_attribute("id")
    assert form_id is not None
    before = settled_count(page, form_id)
    with page.expect_response(
        lambda r: r.request.method == "POST" and r.url.endswith("/dispatch"), timeout=EXPECT_MS
    ) as info:
        form.locator("button[type=submit]").click()
    response = info.value
    assert response.request.headers.get("hx-request") == "true", "the form was posted without htmx"
    wait_settled(page, form_id, before)
    return response


def open_options(form: Locator) -> None:
    form.locator("details.options > summary").click()
    expect(form.locator('[name="opt.queue"]')).to_be_visible(timeout=EXPECT_MS)


def test_catalog_has_one_form_per_task_with_its_fields_and_route(
    page: Page, dashboard_server: LiveServer, browser_errors: BrowserErrors
) -> None:
    tasks: dict[str, Any] = dict(dashboard_server.config["tasks"])
    open_dispatch_page(page, dashboard_server)

    expect(page.locator(".catalog form.dispatch-form h2 code.task-name")).to_have_text(
        list(tasks), timeout=EXPECT_MS
    )
    for name, spec in tasks.items():
        form = catalog_form(page, name)
        expect(form).to_have_count(1, timeout=EXPECT_MS)
        for param in spec["params"]:
            expect(form.locator(f'[name="arg.{param["name"]}"]')).to_have_count(1, timeout=EXPECT_MS)
        expect(form.locator(".route-preview .queue")).to_have_count(1, timeout=EXPECT_MS)
    preview = catalog_form(page, SUMMARIZE).locator(".route-preview")
    expect(preview.locator(".queue")).to_have_text("llm", timeout=EXPECT_MS)
    expect(preview).to_contain_text("via route worker.tasks.llm.*", timeout=EXPECT_MS)
    browser_errors.assert_clean()


def test_send_by_name_says_how_names_are_checked_and_suggests_the_name_a_typo_meant(
    page: Page, dashboard_server: LiveServer, browser_errors: BrowserErrors
) -> None:
    # Once the form said names "are not checked against anything", then refused one nobody registers, with no hint.
    wait_until(lambda: get_json(dashboard_server, "/api/routing")["consistent"] is not None,
               RESULT_TIMEOUT, "the first routing comparison (the guard has nothing to go by before it)")
    open_dispatch_page(page, dashboard_server)
    form = raw_form(page)
    warning = form.locator(".warning")
    expect(warning).to_be_visible(timeout=EXPECT_MS)
    expect(warning).to_contain_text("checked against what the online workers register", timeout=EXPECT_MS)
    expect(form.locator(".route-preview")).to_contain_text("Enter a task name", timeout=EXPECT_MS)

    type_into(page, form, "name", UNFURL.replace("unfurl", "unfrl"))  # one letter missing
    type_into(page, form, "kwargs", '{"url": "https://example.com/typo"}')
    response = submit(page, form)

    assert response.status == 409
    expect(form).to_contain_text(f"did you mean '{UNFURL}'?", timeout=EXPECT_MS)
    # "Send anyway" sits beside its checkbox, left-aligned (once the box sat alone, centred above its words).
    confirm = form.locator("label.confirm")
    expect(confirm).to_contain_text("Send anyway", timeout=EXPECT_MS)
    box, label = confirm.locator("input[type=checkbox]").bounding_box(), confirm.bounding_box()
    assert box is not None and label is not None
    assert label["height"] < 2.5 * box["height"], "the checkbox and its words are on one line"
    assert box["x"] - label["x"] < 5, "the checkbox starts the line"
    browser_errors.assert_clean(allow_status=[409])


def test_summarize_note_previews_route_sends_in_place_and_links_to_task(
    page: Page, dashboard_server: LiveServer, browser_errors: BrowserErrors, celery_client: Any
) -> None:
    marker = open_dispatch_page(page, dashboard_server)
    form = catalog_form(page, SUMMARIZE)
    preview = form.locator(".route-preview")
    note_id = f"e2e-note-{uuid.uuid4().hex[:8]}"
    type_into(page, form, "arg.note_id", note_id)
    type_into(page, form, "arg.max_words", "7")
    expect(preview.locator(".queue")).to_have_attribute("data-queue", "llm", timeout=EXPECT_MS)
    expect(preview).to_contain_text("via route worker.tasks.llm.*", timeout=EXPECT_MS)

    response = submit(page, form)
    assert response.status == 200
    task_id_element = form.locator(".sent .task-id")
    expect(task_id_element).to_have_text(TASK_ID_RE, timeout=EXPECT_MS)
    expect(form.locator(".sent strong")).to_have_text("llm", timeout=EXPECT_MS)
    expect(form.locator(".field-error")).to_have_count(0, timeout=EXPECT_MS)
    assert_not_reloaded(page, marker)
    task_id = task_id_element.inner_text()

    result = celery_client.AsyncResult(task_id).get(timeout=RESULT_TIMEOUT)  # the stub worker really ran it
    assert result["note_id"] == note_id
    assert 1 <= result["words"] <= 7

    form.get_by_role("link", name="view task").click()
    expect(page).to_have_url(f"{dashboard_server.url}/tasks/{task_id}", timeout=EXPECT_MS)
    expect(page.locator("h1 .task-id")).to_have_text(task_id, timeout=EXPECT_MS)
    backend = page.get_by_role("region", name="Result backend")
    expect(backend.locator(".state")).to_have_text("SUCCESS", timeout=EXPECT_MS)
    expect(backend).to_contain_text(note_id, timeout=EXPECT_MS)
    browser_errors.assert_clean()


@pytest.mark.parametrize(
    ("param", "value", "message"),
    [
        pytest.param("max_words", "many", "must be a whole number", id="non-integer-int"),
        pytest.param("note_id", "", "is required", id="required-left-empty"),
    ],
)
def test_bad_field_shows_inline_error_and_sends_nothing(
    page: Page,
    dead_end_dashboard: tuple[LiveServer, str],
    browser_errors: BrowserErrors,
    broker_redis: redis.Redis,
    param: str,
    value: str,
    message: str,
) -> None:
    server, queue = dead_end_dashboard  # had anything been published, it would wait in `queue`
    broker_redis.delete(queue)
    marker = open_dispatch_page(page, server)
    form = catalog_form(page, SUMMARIZE)
    expect(form.locator(".route-preview .queue")).to_have_text(queue, timeout=EXPECT_MS)
    if param != "note_id":
        type_into(page, form, "arg.note_id", "e2e-note")
    if value != form.locator(f'[name="arg.{param}"]').input_value():
        type_into(page, form, f"arg.{param}", value)
        expect(form.locator(".route-preview .queue")).to_have_text(queue, timeout=EXPECT_MS)

    response = submit(page, form)
    assert response.status == 422
    name = f"arg.{param}"
    error = form.locator(f'[name="{name}"] ~ .field-error[data-field="{name}"]')  # after its own field
    expect(error).to_contain_text(message, timeout=EXPECT_MS)
    expect(form.locator(".field-error")).to_have_count(1, timeout=EXPECT_MS)
    expect(form.locator(f'[name="{name}"]')).to_have_value(value, timeout=EXPECT_MS)  # kept, to correct it
    expect(form.locator(f'[name="{name}"]')).to_have_attribute("aria-invalid", "true", timeout=EXPECT_MS)
    expect(form.locator(".sent")).to_have_count(0, timeout=EXPECT_MS)
    assert_not_reloaded(page, marker)
    assert broker_redis.exists(queue) == 0, f"a message was published to {queue} despite the error"
    browser_errors.assert_clean(allow_status=[422])


def test_send_by_name_rejects_bad_json_inline_then_sends(
    page: Page,
    dashboard_server: LiveServer,
    browser_errors: BrowserErrors,
    celery_client: Any,
) -> None:
    marker = open_dispatch_page(page, dashboard_server)
    form = raw_form(page)
    type_into(page, form, "name", UNFURL)
    preview = form.locator(".route-preview")
    expect(preview.locator(".queue")).to_have_text("default", timeout=EXPECT_MS)
    type_into(page, form, "args", "[1,")
    type_into(page, form, "kwargs", '{"url": "https://example.com/e2e-post"}')
    expect(preview.locator(".queue")).to_have_text("default", timeout=EXPECT_MS)
    expect(preview).to_contain_text("via route worker.tasks.link.*", timeout=EXPECT_MS)

    response = submit(page, form)
    assert response.status == 422
    expect(form.locator('[name="args"] ~ .field-error[data-field="args"]')).to_contain_text(
        "is not valid JSON", timeout=EXPECT_MS
    )
    expect(form.locator(".sent")).to_have_count(0, timeout=EXPECT_MS)
    expect(form.locator('[name="args"]')).to_have_value("[1,", timeout=EXPECT_MS)
    expect(form.locator(".warning")).to_be_visible(timeout=EXPECT_MS)
    assert_not_reloaded(page, marker)

    type_into(page, form, "args", "[]")
    response = submit(page, form)
    assert response.status == 200
    task_id_element = form.locator(".sent .task-id")
    expect(task_id_element).to_have_text(TASK_ID_RE, timeout=EXPECT_MS)
    expect(form.locator(".sent strong")).to_have_text("default", timeout=EXPECT_MS)
    expect(form.locator(".field-error")).to_have_count(0, timeout=EXPECT_MS)
    expect(form.locator('[name="name"]')).to_have_value(UNFURL, timeout=EXPECT_MS)  # ready to send again
    assert_not_reloaded(page, marker)

    result = celery_client.AsyncResult(task_id_element.inner_text()).get(timeout=RESULT_TIMEOUT)
    assert result == {"url": "https://example.com/e2e-post", "host": "example.com", "title": "E2e post"}
    browser_errors.assert_clean(allow_status=[422])


def test_queue_override_changes_route_preview_and_destination(
    page: Page, dashboard_server: LiveServer, browser_errors: BrowserErrors, celery_client: Any
) -> None:
    marker = open_dispatch_page(page, dashboard_server)
    form = catalog_form(page, SUMMARIZE)
    preview = form.locator(".route-preview")
    expect(preview.locator(".queue")).to_have_text("llm", timeout=EXPECT_MS)

    elsewhere = unconsumed_queue()
    open_options(form)
    type_into(page, form, "opt.queue", elsewhere)
    expect(preview.locator(".queue")).to_have_text(elsewhere, timeout=EXPECT_MS)
    expect(preview).to_contain_text("(queue set on this form)", timeout=EXPECT_MS)
    expect(preview).not_to_contain_text("via route", timeout=EXPECT_MS)

    type_into(page, form, "opt.queue", "")
    expect(preview.locator(".queue")).to_have_text("llm", timeout=EXPECT_MS)
    expect(preview).to_contain_text("via route worker.tasks.llm.*", timeout=EXPECT_MS)

    # Send through the override to "default", which the stub worker also consumes: the task runs, and the
    # result backend records the queue it really came from.
    note_id = f"e2e-override-{uuid.uuid4().hex[:8]}"
    type_into(page, form, "arg.note_id", note_id)
    type_into(page, form, "opt.queue", "default")
    expect(preview.locator(".queue")).to_have_text("default", timeout=EXPECT_MS)
    response = submit(page, form)
    assert response.status == 200
    expect(form.locator(".sent strong")).to_have_text("default", timeout=EXPECT_MS)
    assert_not_reloaded(page, marker)
    result = celery_client.AsyncResult(form.locator(".sent .task-id").inner_text())
    assert result.get(timeout=RESULT_TIMEOUT)["note_id"] == note_id
    assert result.queue == "default"
    browser_errors.assert_clean()
