"""The audit log over HTTP: /audit and GET /api/audit on the app `create_app` builds, on the test Redis.

`audited_app` gives each app the test's own AuditLog (a file under tmp_path, or none), in place of the one
create_app opens from the config.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from dashboard import create_app
from dashboard.config import Config, load_config
from dashboard.resources import sample_config
from dashboard.services.audit import AuditEntry, AuditLog
from dashboard.web.context import services

T0 = 1_900_000_000.0
UNFURL = "worker.tasks.link.unfurl"
SUMMARIZE_NOTE = "worker.tasks.llm.summarize_note"
XSS = '<script>alert("pwned")</script>'


def dashboard_config(broker_url: str, backend_url: str | None) -> Config:
    """The sample config on the test Redis (never the one on 6379)."""
    environ = {"CELERY_BROKER_URL": broker_url}
    if backend_url is not None:
        environ["CELERY_RESULT_BACKEND"] = backend_url
    config = load_config(sample_config(), environ)
    if backend_url is None:
        config = dataclasses.replace(config, result_backend=None)
    assert ":6379/" not in f"{config.broker_url} {config.result_backend}", "a test must not use the Redis on 6379"
    return config


def audited_app(config: Config, audit: AuditLog | None) -> Flask:
    """`create_app(config, live=False)` with `audit` as its log."""
    app = create_app(config, audit=audit, live=False)
    app.testing = True
    return app


def close_app(app: Flask) -> None:
    rt = services(app)
    rt.monitor.stop()
    rt.client.close()
    found = getattr(rt, "audit", None)
    if found is not None:
        found.close()


def entry(**changes: Any) -> AuditEntry:
    base = AuditEntry(at=T0, who="anonymous", source="api", remote_addr="127.0.0.1", name=UNFURL,
                      args="[]", kwargs='{"url": "https://example.com"}', options="{}", queue="default",
                      forced=False, outcome="sent", task_id="11111111-2222-3333-4444-555555555555")  # fmt: skip
    return dataclasses.replace(base, **changes)


@pytest.fixture
def audit(tmp_path: Path) -> AuditLog:
    return AuditLog(tmp_path / "state" / "audit.sqlite3")


@pytest.fixture
def app(broker_url: str, backend_url: str, audit: AuditLog) -> Iterator[Flask]:
    built = audited_app(dashboard_config(broker_url, backend_url), audit)
    try:
        yield built
    finally:
        close_app(built)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def api(client: FlaskClient, query: str = "") -> tuple[int, dict[str, Any]]:
    response = client.get(f"/api/audit{query}")
    payload = response.get_json(silent=True)
    assert isinstance(payload, dict), f"expected a JSON object, got {response.status_code} {response.data!r}"
    return response.status_code, payload


# --- the page -------------------------------------------------------------------------------------------------


def test_page_lists_entries_with_untrusted_values_escaped(client: FlaskClient, audit: AuditLog) -> None:
    audit.record(entry(name=f"evil.{XSS}", args=json.dumps([XSS]), kwargs=json.dumps({"k": XSS}), who=XSS,
                       options=json.dumps({"queue": XSS}), error=XSS, outcome="error", task_id=None))  # fmt: skip

    response = client.get("/audit")
    html = response.get_data(as_text=True)

    assert response.status_code == 200
    assert "<script>alert" not in html, "an untrusted value reached the page unescaped"
    assert "&lt;script&gt;alert(" in html
    assert html.count("&lt;script&gt;alert(") >= 6  # name, args, kwargs, who, options, error
    assert 'class="audit-args">[&#34;&lt;script&gt;' in html, "args are shown literally inside <pre>"


def test_page_shows_time_outcome_and_links_a_sent_task(client: FlaskClient, audit: AuditLog) -> None:
    task_id = str(uuid.uuid4())
    audit.record(entry(task_id=task_id, queue="default"))
    audit.record(entry(at=T0 + 1, outcome="unavailable", task_id=None, error="the broker did not take it"))

    html = client.get("/audit").get_data(as_text=True)

    assert f'href="/tasks/{task_id}"' in html
    assert "2030-03-17 17:46:40.000" in html
    assert 'class="badge ok outcome">sent<' in html and 'class="badge bad outcome">unavailable<' in html
    assert "the broker did not take it" in html
    assert html.index('class="badge bad outcome">unavailable<') < html.index('class="badge ok outcome">sent<'), (
        "newest first"
    )


def test_page_filters_and_pages(client: FlaskClient, audit: AuditLog) -> None:
    for i in range(7):
        audit.record(entry(at=T0 + i, name="a.task" if i % 2 else "b.task", task_id=f"id-{i}"))

    html = client.get("/audit?name=a.task&limit=2").get_data(as_text=True)
    second = client.get("/audit?name=a.task&limit=2&offset=2").get_data(as_text=True)

    assert '<strong class="total">3</strong>' in html
    assert "id-5" in html and "id-3" in html and "id-1" not in html and "b.task</a>" not in html
    assert "offset=2" in html and "older" in html
    assert "id-1" in second and "newer" in second


def test_page_says_so_for_a_bad_filter(client: FlaskClient) -> None:
    response = client.get("/audit?outcome=exploded")

    assert response.status_code == 400
    assert "outcome: must be one of" in response.get_data(as_text=True)


def test_page_says_when_auditing_is_off(broker_url: str, backend_url: str) -> None:
    app = audited_app(dashboard_config(broker_url, backend_url), None)
    try:
        client = app.test_client()
        page = client.get("/audit")
        status, payload = api(client)
    finally:
        close_app(app)

    assert page.status_code == 200 and 'id="audit-off"' in page.get_data(as_text=True)
    assert status == 404 and "auditing is off" in payload["error"]


def test_an_unreadable_log_is_a_503_with_the_reason(broker_url: str, backend_url: str, tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("")
    app = audited_app(dashboard_config(broker_url, backend_url), AuditLog(tmp_path / "blocker" / "audit.sqlite3"))
    try:
        client = app.test_client()
        page = client.get("/audit")
        status, payload = api(client)
    finally:
        close_app(app)

    assert page.status_code == 503 and "could not be opened" in page.get_data(as_text=True)
    assert status == 503 and "could not be opened" in payload["error"]


# --- GET /api/audit -----------------------------------------------------------------------------------------


def test_api_lists_entries_newest_first(client: FlaskClient, audit: AuditLog) -> None:
    first = audit.record(entry(at=T0))
    second = audit.record(entry(at=T0 + 1, outcome="refused", task_id=None, error="nobody consumes llm-gpu"))

    status, payload = api(client)

    assert status == 200
    assert (payload["total"], payload["limit"], payload["offset"], payload["write_errors"]) == (2, 50, 0, 0)
    assert [e["id"] for e in payload["entries"]] == [second, first]
    newest = payload["entries"][0]
    assert newest["outcome"] == "refused" and newest["task_id"] is None
    assert newest["time"] == "2030-03-17T17:46:41.000Z" and newest["at"] == T0 + 1
    assert set(newest) == {"id", "at", "time", "who", "source", "remote_addr", "name", "args", "kwargs",
                           "options", "queue", "forced", "outcome", "task_id", "error"}  # fmt: skip


@pytest.fixture
def mixed(audit: AuditLog) -> AuditLog:
    audit.record(entry(at=T0 + 1, name="a", who="ann", queue="q1", task_id="t-1"))
    audit.record(entry(at=T0 + 2, name="a", who="bob", queue="q2", outcome="refused", task_id=None))
    audit.record(entry(at=T0 + 3, name="b", who="ann", queue="q1", outcome="unavailable", task_id=None))
    audit.record(entry(at=T0 + 4, name="b", who="ann", queue=None, outcome="invalid", task_id=None))
    return audit


@pytest.mark.parametrize(
    ("query", "expected_at"),
    [
        ("", [4, 3, 2, 1]),
        ("?name=a", [2, 1]),
        ("?outcome=refused", [2]),
        ("?outcome=SENT", [1]),
        ("?who=ann", [4, 3, 1]),
        ("?queue=q1", [3, 1]),
        ("?task_id=t-1", [1]),
        ("?who=ann&name=b&outcome=unavailable", [3]),
        (f"?since={T0 + 2}&until={T0 + 4}", [3, 2]),
        ("?since=2030-03-17T17:46:43Z", [4, 3]),
        ("?limit=2", [4, 3]),
        ("?limit=2&offset=2", [2, 1]),
        ("?name=nothing", []),
    ],
)
def test_api_filters(client: FlaskClient, mixed: AuditLog, query: str, expected_at: list[int]) -> None:
    status, payload = api(client, query)

    assert status == 200, payload
    assert [int(e["at"] - T0) for e in payload["entries"]] == expected_at


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("?limit=0", "limit: must be between 1 and 1000"),
        ("?limit=1001", "limit"),
        ("?limit=ten", "limit: expected a whole number"),
        ("?offset=-1", "offset"),
        ("?offset=x", "offset"),
        ("?outcome=exploded", "outcome: must be one of sent, refused, invalid, unavailable, routing_error, error"),
        ("?since=yesterday", "since"),
        ("?until=nan", "until"),
        ("?name=" + "n" * 256, "name: at most 255 characters"),
    ],
)
def test_api_refuses_bad_parameters_with_400(client: FlaskClient, query: str, says: str) -> None:
    status, payload = api(client, query)

    assert status == 400
    assert says in payload["error"]


def test_a_dispatch_whose_outcome_never_came_is_listed_as_unknown_with_its_task_id(client: FlaskClient,
                                                                                  audit: AuditLog) -> None:
    audit.record(entry(at=T0, outcome="sent", task_id="t-sent"))
    audit.record(entry(at=T0 + 1, outcome="unknown", task_id="t-unknown"))

    status, payload = api(client, "?outcome=unknown")
    page = client.get("/audit?outcome=unknown")

    assert status == 200 and [(e["outcome"], e["task_id"]) for e in payload["entries"]] == [("unknown", "t-unknown")]
    assert page.status_code == 200 and b"t-unknown" in page.data and b"t-sent" not in page.data


def test_entries_survive_a_restart_of_the_app(broker_url: str, backend_url: str, tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    config = dashboard_config(broker_url, backend_url)
    first = AuditLog(path)
    before = audited_app(config, first)
    first.record(entry(name="before.restart"))
    close_app(before)  # closes `first` too

    after = audited_app(config, AuditLog(path))
    try:
        status, payload = api(after.test_client())
    finally:
        close_app(after)

    assert status == 200 and [e["name"] for e in payload["entries"]] == ["before.restart"]


# --- the dispatch seam (needs the wiring) -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_an_api_dispatch_is_recorded_as_sent(client: FlaskClient, audit: AuditLog) -> None:
    response = client.post("/api/dispatch", json={"name": UNFURL, "kwargs": {"url": "https://example.com/a"}})
    assert response.status_code == 202, response.data
    sent = response.get_json()

    found, total = audit.query()

    assert total == 1
    (recorded,) = found
    assert (recorded.outcome, recorded.task_id, recorded.queue) == ("sent", sent["task_id"], sent["queue"])
    assert (recorded.source, recorded.who, recorded.name) == ("api", "anonymous", UNFURL)
    assert json.loads(recorded.kwargs) == {"url": "https://example.com/a"}
    assert recorded.remote_addr == "127.0.0.1"


def test_a_dispatch_is_in_the_log_with_its_task_id_while_it_is_published(app: Flask, audit: AuditLog,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    svc = services(app)
    publish = svc.client.send
    seen: list[tuple[str | None, list[AuditEntry]]] = []

    def watched(request: Any, resolution: Any = None, task_id: str | None = None) -> Any:
        audit.flush()  # the write queued before the publish has been committed...
        with AuditLog(audit.path) as another_process:  # ...and is what a crash now would leave
            seen.append((task_id, another_process.query()[0]))
        return publish(request, resolution, task_id)

    monkeypatch.setattr(svc.client, "send", watched)

    response = app.test_client().post("/api/dispatch", json={"name": UNFURL, "kwargs": {"url": "https://e.com"}})

    assert response.status_code == 202, response.data
    ((task_id, (during,)),) = seen
    assert task_id == response.get_json()["task_id"]
    assert (during.outcome, during.task_id, during.queue) == ("unknown", task_id, "default")
    (after,), _ = audit.query()
    assert (after.id, after.outcome, after.task_id) == (during.id, "sent", task_id)


def test_concurrent_dispatches_are_each_recorded_once_as_sent_with_their_task_id(app: Flask, audit: AuditLog) -> None:
    clients, each = 8, 10
    answers: list[tuple[int, str]] = []
    start = threading.Barrier(clients)

    def dispatch() -> None:
        client = app.test_client()
        start.wait()
        for _ in range(each):
            response = client.post("/api/dispatch", json={"name": UNFURL, "kwargs": {"url": "https://e.com"},
                                                          "force": True})
            answers.append((response.status_code, response.get_json()["task_id"]))

    threads = [threading.Thread(target=dispatch) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    found, total = audit.query(limit=1000)
    assert [status for status, _ in answers] == [202] * clients * each
    assert total == clients * each and audit.write_errors == 0
    assert sorted((e.outcome, e.task_id) for e in found) == sorted(("sent", task_id) for _, task_id in answers)


def test_a_form_dispatch_is_recorded_with_its_source(client: FlaskClient, audit: AuditLog) -> None:
    response = client.post("/dispatch", data={"form_id": "dispatch-raw", "name": SUMMARIZE_NOTE,
                                              "args": '["note-1"]', "kwargs": "{}"})  # fmt: skip
    assert response.status_code == 200, response.data

    (recorded,), _ = audit.query()

    assert (recorded.source, recorded.outcome, recorded.queue) == ("form", "sent", "llm")
    assert json.loads(recorded.args) == ["note-1"]


def test_an_invalid_api_dispatch_is_recorded_as_invalid(client: FlaskClient, audit: AuditLog) -> None:
    response = client.post("/api/dispatch", json={"name": UNFURL, "args": "not a list"})
    assert response.status_code == 400

    (recorded,), _ = audit.query()

    assert (recorded.outcome, recorded.task_id, recorded.name) == ("invalid", None, UNFURL)
    assert recorded.error is not None and "args" in recorded.error


def test_a_dispatch_the_broker_refuses_is_recorded_as_unavailable(tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}"
    audit = AuditLog(tmp_path / "audit.sqlite3")
    app = audited_app(dashboard_config(f"{dead}/0", None), audit)
    try:
        response = app.test_client().post("/api/dispatch", json={"name": SUMMARIZE_NOTE, "args": ["n"]})
        assert response.status_code == 503
        (recorded,), _ = audit.query()
    finally:
        close_app(app)

    assert (recorded.outcome, recorded.queue, recorded.task_id) == ("unavailable", "llm", None)
    assert recorded.error is not None and "broker" in recorded.error


def test_audit_retention_runs_as_a_monitor_job_and_keeps_recent_entries(
    broker_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "retained" / "audit.sqlite3"
    with AuditLog(path) as seed:
        seed.record(entry(at=time.time() - 10 * 86_400, task_id="old"))
        seed.record(entry(at=time.time() - 3600, task_id="recent"))
    config = dataclasses.replace(dashboard_config(broker_url, None), audit_path=str(path), audit_retention_days=7)
    app = create_app(config, live=False)
    try:
        rt = services(app)
        jobs = {job.name: job for job in rt.monitor.jobs._jobs}  # noqa: SLF001 - the wiring is what is checked here
        assert jobs["audit-retention"].every == 3600.0
        jobs["audit-retention"].run()
        assert rt.audit is not None
        entries, total = rt.audit.query()
        assert total == 1 and entries[0].task_id == "recent"
    finally:
        close_app(app)


def test_an_operator_action_is_recorded_and_listed(client: FlaskClient, audit: AuditLog) -> None:
    response = client.post("/api/queues/billing/consumers", json={"worker": XSS})

    assert response.status_code == 400
    listed = client.get("/api/audit/actions?action=queue.*")
    assert listed.status_code == 200
    entries = listed.get_json()["entries"]
    assert [(e["action"], e["target"], e["outcome"]) for e in entries] == [
        ("queue.add_consumer", "billing", "refused")]
    assert json.loads(entries[0]["detail"]) == {"worker": XSS}
    page = client.get("/audit").get_data(as_text=True)
    assert "queue.add_consumer" in page and XSS not in page


def test_the_actions_api_refuses_bad_parameters(client: FlaskClient) -> None:
    response = client.get("/api/audit/actions?limit=0")
    assert response.status_code == 400 and "limit" in response.get_json()["error"]
