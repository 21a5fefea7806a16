"""History on a real SQLite file, fed by real events from the stub worker on the test Redis: tasks persisted as
they run, found by search, exported, read back after a restart (warm), and the tasks page's search over them."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from dashboard import create_app
from dashboard.config import Config, HistorySettings, load_config
from dashboard.resources import sample_config
from dashboard.services.processes import CeleryWorker
from dashboard.web.context import services
from tests.support.waits import wait_until

UNFURL = "worker.tasks.link.unfurl"
FAIL = "worker.tasks.demo.fail"
DEADLINE = 30.0


def history_config(broker_url: str, backend_url: str, path: Path, **history: Any) -> Config:
    config = load_config(sample_config(), {"CELERY_BROKER_URL": broker_url, "CELERY_RESULT_BACKEND": backend_url})
    settings = dataclasses.replace(HistorySettings(url=str(path)), flush_interval=0.05, **history)
    monitor = dataclasses.replace(config.monitor, inspect_interval=0.5)
    return dataclasses.replace(config, history=settings, monitor=monitor)


def start(config: Config) -> Flask:
    app = create_app(config, live=True)
    app.testing = True
    svc = services(app)
    svc.ensure_started()
    assert svc.monitor.wait_connected(10), "the event stream did not connect"
    return app


def stop(app: Flask) -> None:
    services(app).close()


@pytest.fixture
def history_path(tmp_path: Path) -> Path:
    return tmp_path / "history.sqlite3"


@pytest.fixture
def app(broker_url: str, backend_url: str, history_path: Path) -> Iterator[Flask]:
    found = start(history_config(broker_url, backend_url, history_path))
    yield found
    stop(found)


def dispatch(client: FlaskClient, name: str, **kwargs: Any) -> str:
    response = client.post("/api/dispatch", json={"name": name, "kwargs": kwargs})
    assert response.status_code == 202, response.get_json()
    task_id: str = response.get_json()["task_id"]
    return task_id


def history_status(client: FlaskClient) -> dict[str, Any]:
    body: dict[str, Any] = client.get("/api/status").get_json()["history"]
    return body


def finished_and_written(client: FlaskClient, ids: list[str]) -> bool:
    found = {task["id"]: task["state"] for task in client.get("/api/tasks?limit=1000").get_json()["tasks"]}
    done = all(found.get(task_id) in ("SUCCESS", "FAILURE") for task_id in ids)
    return done and history_status(client)["pending"] == 0


def test_tasks_are_persisted_searched_exported_and_survive_a_restart(
    stub_worker: CeleryWorker, broker_url: str, backend_url: str, history_path: Path
) -> None:
    first = start(history_config(broker_url, backend_url, history_path))
    client = first.test_client()
    word = f"kept{uuid.uuid4().hex[:8]}"  # a word no path or traceback holds
    ok = [dispatch(client, UNFURL, url=f"https://example.com/{word}-{i}") for i in range(3)]
    failed = dispatch(client, FAIL, message="history-boom")
    wait_until(lambda: finished_and_written(client, [*ok, failed]), DEADLINE, "the tasks finished and written")

    status = history_status(client)
    assert status["enabled"] and status["role"] == "writer" and status["degraded"] is None
    search = client.get("/api/tasks?q=state:FAILURE exception:history").get_json()
    assert [task["id"] for task in search["tasks"]] == [failed] and search["source"] == "history"
    by_name = client.get(f"/api/tasks?q=name:{UNFURL}").get_json()
    assert [task["id"] for task in by_name["tasks"]] == list(reversed(ok)) and by_name["total"] == 3
    assert client.get(f"/api/tasks?q={word} 1").get_json()["total"] == 1  # free text over args and kwargs
    stop(first)

    second = start(history_config(broker_url, backend_url, history_path))
    try:
        client = second.test_client()
        # The writer thread restores the newest tasks into memory as it starts; the event stream (read directly
        # on Redis) can connect before that first chunk is in, so wait for the restore, not for the stream.
        wait_until(lambda: not history_status(client)["restoring"], DEADLINE, "the newest tasks restored")
        restored = client.get("/api/tasks?limit=10").get_json()  # memory: warmed from the store
        assert {task["id"] for task in restored["tasks"]} >= {*ok, failed}
        page = client.get(f"/tasks/{failed}").get_data(as_text=True)
        assert "history-boom" in page
        ndjson = client.get("/api/tasks/export?q=name:worker.tasks.*&format=ndjson")
        rows = [json.loads(line) for line in ndjson.get_data(as_text=True).splitlines()]
        assert {row["id"] for row in rows} == {*ok, failed} and ndjson.mimetype == "application/x-ndjson"
        exported = client.get(f"/api/tasks/export?q=name:{UNFURL}&format=csv").get_data(as_text=True)
        table = list(csv.DictReader(io.StringIO(exported)))
        assert [row["id"] for row in table] == list(reversed(ok)) and {row["state"] for row in table} == {"SUCCESS"}
    finally:
        stop(second)


def test_a_task_no_longer_in_memory_is_read_from_history(
    stub_worker: CeleryWorker, broker_url: str, backend_url: str, history_path: Path
) -> None:
    config = history_config(broker_url, backend_url, history_path)
    app = start(dataclasses.replace(config, monitor=dataclasses.replace(config.monitor, max_tasks=2)))
    try:
        client = app.test_client()
        history = services(app).history
        assert history is not None
        ids: list[str] = []
        for i in range(4):  # one by one: a task evicted from memory before its write would be dropped (counted)
            ids.append(dispatch(client, UNFURL, url=f"https://example.com/evicted-{i}"))
            wait_until(lambda: (found := history.task(ids[-1])) is not None and found.state == "SUCCESS",
                       DEADLINE, "the task written to history, finished")
        assert services(app).state.task(ids[0]) is None  # evicted from memory
        assert client.get(f"/api/tasks/{ids[0]}").get_json()["id"] == ids[0]
        assert client.get(f"/api/tasks?q=id:{ids[0][:8]}").get_json()["total"] == 1
    finally:
        stop(app)


@pytest.mark.parametrize(("query", "says"), [
    ("colour:red", "unknown key 'colour'"),
    ("state:DONE", "'DONE' is not a state"),
    ('"open', "not closed"),
    ("since:soon", "neither a duration"),
])
def test_a_malformed_search_is_a_400_naming_the_problem(app: Flask, query: str, says: str) -> None:
    client = app.test_client()
    response = client.get("/api/tasks", query_string={"q": query})
    assert response.status_code == 400 and says in response.get_json()["error"]
    page = client.get("/tasks", query_string={"q": query})
    assert page.status_code == 400 and says.replace("'", "&#39;") in page.get_data(as_text=True)
    export = client.get("/api/tasks/export", query_string={"q": query})
    assert export.status_code == 400


def test_stats_and_status_pages_show_history(stub_worker: CeleryWorker, app: Flask) -> None:
    client = app.test_client()
    ids = [dispatch(client, UNFURL, url="https://example.com/stats"), dispatch(client, FAIL, message="x")]
    wait_until(lambda: finished_and_written(client, ids), DEADLINE, "the tasks finished and written")
    wait_until(lambda: any(t["name"] == UNFURL for t in client.get("/api/stats").get_json()["tasks"]), DEADLINE,
               "the minute buckets written")

    stats = client.get("/api/stats?window=hour").get_json()
    unfurl = next(t for t in stats["tasks"] if t["name"] == UNFURL)
    assert unfurl["totals"]["finished"] >= 1 and stats["points"] == 60
    fail = next(t for t in stats["tasks"] if t["name"] == FAIL)
    assert fail["totals"]["failed"] >= 1 and fail["totals"]["failure_rate"] == 1.0
    assert client.get("/api/stats?window=year").status_code == 400
    page = client.get("/stats?window=day").get_data(as_text=True)
    assert UNFURL in page and "<polyline" in page
    status_page = client.get("/status").get_data(as_text=True)
    assert "history-role" in status_page and "writer" in status_page
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "dispatch_dashboard_history_writer 1.0" in metrics and "dispatch_dashboard_history_dropped_total 0.0" \
        in metrics


def test_history_off_keeps_the_dashboard_as_it_was(broker_url: str, backend_url: str) -> None:
    config = load_config(sample_config(), {"CELERY_BROKER_URL": broker_url, "CELERY_RESULT_BACKEND": backend_url,
                                           "DASHBOARD_HISTORY_URL": ""})
    app = create_app(config, live=False)
    client = app.test_client()
    try:
        assert services(app).history is None
        assert client.get("/api/status").get_json()["history"] == {"enabled": False}
        assert client.get("/api/stats").status_code == 404
        searched = client.get("/api/tasks?q=state:FAILURE").get_json()
        assert searched["source"] == "memory" and searched["total"] == 0
        assert "History is off" in client.get("/status").get_data(as_text=True)
    finally:
        services(app).close()


SLOW = "worker.tasks.demo.slow"


def test_a_task_that_finished_while_the_dashboard_was_down_is_resynced_after_the_restart(
    stub_worker: CeleryWorker, broker_url: str, backend_url: str, history_path: Path
) -> None:
    first = start(history_config(broker_url, backend_url, history_path))
    client = first.test_client()
    task_id = dispatch(client, SLOW, seconds=2.0, steps=2)
    history = services(first).history
    assert history is not None
    wait_until(lambda: (found := history.task(task_id)) is not None and found.state == "STARTED", DEADLINE,
               "the running task written to history")
    stop(first)  # the dashboard goes down while the task runs; its task-succeeded event is lost to it

    wait_until(lambda: services_result(broker_url, backend_url, task_id) == "SUCCESS", DEADLINE,
               "the task finished on the worker")
    second = start(history_config(broker_url, backend_url, history_path))
    try:
        client = second.test_client()
        wait_until(lambda: client.get(f"/api/tasks/{task_id}").get_json().get("state") == "SUCCESS", DEADLINE,
                   "the restored task resynced from the result backend")
        gaps = client.get("/api/status").get_json()["gaps"]
        assert any(gap["reason"] == "the dashboard was not running" and gap["resynced"] for gap in gaps), gaps
    finally:
        stop(second)


def services_result(broker_url: str, backend_url: str, task_id: str) -> str | None:
    """The task's state in the result backend, through a throwaway app."""
    app = create_app(history_config(broker_url, backend_url, Path("/nonexistent/unused.sqlite3")), live=False)
    try:
        found = services(app).client.result_state(task_id)
        return None if found is None else str(found["state"])
    finally:
        services(app).close()


def test_a_bulk_action_takes_a_search_over_history(stub_worker: CeleryWorker, app: Flask) -> None:
    client = app.test_client()
    word = f"bulkword{uuid.uuid4().hex[:6]}"
    failed = [dispatch(client, FAIL, message=f"{word} {i}") for i in range(3)]
    other = dispatch(client, FAIL, message="unrelated")
    wait_until(lambda: finished_and_written(client, [*failed, other]), DEADLINE, "the failures written")

    preview = client.post("/api/tasks/bulk/preview", json={"action": "redispatch", "q": f"kwargs:{word}"})

    assert preview.status_code == 200, preview.get_json()
    body = preview.get_json()
    assert body["matching"] == 3 and {task["id"] for task in body["sample"]} == set(failed), body
    assert body["filters"] == {"state": "FAILURE", "q": f"kwargs:{word}"}
    bad = client.post("/api/tasks/bulk/preview", json={"action": "redispatch", "q": "colour:red"})
    assert bad.status_code == 400 and "unknown key" in bad.get_json()["error"]
