"""GET /alerts: active alerts with their fixes and the latest changes, newest first (no broker: the comparison is
run by hand on an app whose broker nobody answers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask

from dashboard import create_app
from dashboard.config import config_from_mapping
from dashboard.web.context import services


@pytest.fixture
def app() -> Iterator[Flask]:
    config = config_from_mapping({"broker_url": "redis://127.0.0.1:1/0", "audit": {"path": ""},
                                  "monitor": {"alert_grace": 0}})
    built = create_app(config, live=False)
    built.testing = True
    yield built
    services(built).close()


def test_the_alerts_page_lists_active_alerts_and_the_latest_changes(app: Flask) -> None:
    svc = services(app)
    client = app.test_client()
    empty = client.get("/alerts")
    assert empty.status_code == 200
    assert b"No alert raised since this process started." in empty.data

    svc.routing.inspected_at = 1.0  # as if the workers had been asked (there are none)
    svc.routing.note_event({"type": "task-sent", "name": "billing.<b>typo</b>", "uuid": "t1"})
    svc.routing.run_comparison()
    page = client.get("/alerts").data.decode()

    assert 'data-status="raised"' in page and "billing.&lt;b&gt;typo&lt;/b&gt;" in page  # escaped
    assert 'id="alerts-panel"' in page and 'aria-current="page">Alerts</a>' in page


def test_the_alert_banner_links_to_the_alerts_page(app: Flask) -> None:
    svc = services(app)
    svc.routing.inspected_at = 1.0
    svc.routing.note_event({"type": "task-sent", "name": "billing.typo", "uuid": "t1"})
    svc.routing.run_comparison()

    page = app.test_client().get("/tasks").data.decode()

    assert '<ul class="alert-list">' in page and 'href="/alerts">Alerts →</a>' in page
