"""The /ws/ui messages of the tasks page, parsed by Chromium exactly as htmx parses a websocket message.

htmx's ws extension turns each message into a fragment (a <template> wrapper, htmx's makeFragment) and swaps
every top-level element by its id. The HTML parser drops a <tr> that follows any other element, and its cells'
contents then spill out as id-less elements: the row never updates (htmx:oobErrorNoTarget "#null"). Here the
frames are composed by the real `tasks_update` from a real app's state, with everything changing at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from flask import Flask
from playwright.sync_api import Page

from dashboard import create_app
from dashboard.config import config_from_mapping
from dashboard.services.events.hub import Batch
from dashboard.web import views
from dashboard.web.context import services
from dashboard.web.live import tasks_update

WORKER = "celery@fragments"
TASK_IDS = [f"frag-{i}" for i in range(3)]

# htmx 2's makeFragment for a message that is neither a whole document nor a <body>.
PARSE_LIKE_HTMX = """message => {
  const doc = new DOMParser().parseFromString(
    '<body><template class="internal-htmx-wrapper">' + message + '</template></body>', 'text/html');
  return Array.from(doc.querySelector('template').content.children).map(e => e.tagName.toLowerCase() + '#' + e.id);
}"""


@pytest.fixture
def app() -> Iterator[Flask]:
    config = config_from_mapping({"broker_url": "redis://127.0.0.1:1/0", "broker_timeout": 1, "audit": {"path": ""},
                                  "secret_key": "test-secret-key-0123456789abcdef"})
    built = create_app(config, live=False)
    yield built
    rt = services(built)
    rt.monitor.stop()
    rt.client.close()


def feed(app: Flask) -> None:
    state = services(app).monitor.state
    now = time.time()
    state.apply({"type": "worker-heartbeat", "hostname": WORKER, "timestamp": now, "local_received": now,
                 "freq": 2.0, "active": 1, "processed": 0, "loadavg": [0.1, 0.1, 0.1], "sw_ident": "py-celery"})
    for offset, task_id in enumerate(TASK_IDS):
        state.apply({"type": "task-sent", "uuid": task_id, "name": "worker.tasks.link.unfurl", "args": "[]",
                     "kwargs": "{}", "queue": "default", "timestamp": now + offset, "local_received": now + offset})


def test_row_updates_survive_a_frame_where_everything_else_changed_too(app: Flask, page: Page) -> None:
    feed(app)
    rt = services(app)
    with app.test_request_context("/ws/ui?view=tasks"):
        filters = views.TaskFilters()
        shown = set(TASK_IDS)  # the table already shows them: a change to them is a row update
        for task_id in TASK_IDS:
            rt.monitor.state.apply({"type": "task-started", "uuid": task_id, "hostname": WORKER,
                                    "timestamp": time.time(), "local_received": time.time()})
        batch = Batch(keys={"status": ["live"], "alert": ["x"], "worker": [WORKER], "task": list(TASK_IDS)})
        chrome = views.status_fragment(rt) + views.alert_banner_fragment(rt)
        messages = [message for message in tasks_update(rt, filters, shown, batch, chrome) if message]

    swapped = [element for message in messages for element in page.evaluate(PARSE_LIKE_HTMX, message)]

    assert all(not element.endswith("#") for element in swapped), f"id-less top-level elements: {swapped}"
    for task_id in TASK_IDS:
        assert f"tr#{views.dom_id('t-', task_id)}" in swapped, swapped
    assert {"span#conn-status", "div#alert-banner", "section#workers-panel"} <= set(swapped), swapped
