"""Dashboard replicas on one PostgreSQL, all real: a PostgreSQL server this module owns (stopped and restarted
here), the session's Redis and stub worker, and `dispatch-dashboard serve` subprocesses with
DASHBOARD_HISTORY_URL pointing at one database (the audit log follows it there: no [audit] path is given).

- two replicas answer every search identically, and share one audit log;
- the writing replica SIGKILLed: another takes over within seconds, and no task dispatched before, during or after
  is lost (each is looked up by id in the database itself, then through a replica started afterwards);
- PostgreSQL stopped for DASHBOARD_HISTORY_OUTAGE_SECONDS (default 30, the issue's case): pages keep working from
  memory, /api/status says history is degraded and so does every page's status, and once PostgreSQL is back
  writes resume by themselves and every task is there.
Figures are printed (run with -s).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dashboard.services.processes import CeleryWorker, kill_group
from tests.support.http import get_json, request
from tests.support.live_server import LiveServer, dashboard_config, start_live_server
from tests.support.postgres_server import PostgresServer
from tests.support.processes import started
from tests.support.waits import wait_for, wait_until

OUTAGE_SECONDS = float(os.environ.get("DASHBOARD_HISTORY_OUTAGE_SECONDS", "30"))
UNFURL = "worker.tasks.link.unfurl"
TAKEOVER_BOUND = 5.0  # seconds from the writer's death to another replica writing (ELECT_EVERY is 2 s)
DEGRADED_BOUND = 10.0
SLACK = 3.0
SETTLE = 30.0  # seconds for dispatched tasks to finish and be written
PAGES = ("/", "/tasks", "/routing", "/api/status", "/api/tasks")

_databases = itertools.count(1)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """This module's own PostgreSQL: stopping it harms no other test. (Its directory is its own under /tmp: the
    server's user must reach it, and pytest's tmp_path is root's alone.)"""
    with started(PostgresServer()) as server:
        yield server


@pytest.fixture
def database(postgres: PostgresServer) -> str:
    name = f"replicas_{next(_databases)}"
    with psycopg.connect(postgres.url("postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres.url(name)


@pytest.fixture
def replicas(database: str, broker_url: str, backend_url: str, stub_worker: CeleryWorker,
             tmp_path: Path) -> Iterator[Callable[[str], LiveServer]]:
    """Start dashboards on the test database: `replicas("a")`; all stopped after the test."""
    servers: list[LiveServer] = []
    config = dashboard_config(broker_url, backend_url)

    def start(name: str) -> LiveServer:
        server = start_live_server(config, tmp_path, name=name, env={"DASHBOARD_HISTORY_URL": database})
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in reversed(servers):
            server.stop()


def history(server: LiveServer) -> dict[str, Any]:
    status: dict[str, Any] = get_json(server, "/api/status")["history"]
    return status


def role(server: LiveServer) -> str:
    return str(history(server)["role"])


def dispatch(server: LiveServer, label: str) -> str:
    reply = request(server, "POST", "/api/dispatch",
                    {"name": UNFURL, "kwargs": {"url": f"https://example.com/{label}"}, "force": True})
    assert reply.status == 202, (reply.status, reply.body[:300])
    return str(reply.json()["task_id"])


def stored(database: str, ids: list[str]) -> dict[str, str]:
    """id -> state of the given tasks, read from the database itself."""
    with psycopg.connect(database, connect_timeout=5) as conn:
        rows = conn.execute("SELECT id, state FROM tasks WHERE id = ANY(%s)", (ids,)).fetchall()
    return {task_id: state for task_id, state in rows}


def all_stored(database: str, ids: list[str]) -> bool:
    found = stored(database, ids)
    return len(found) == len(ids) and set(found.values()) == {"SUCCESS"}


def search(server: LiveServer, query: str) -> list[tuple[str, str]]:
    reply = request(server, "GET", "/api/tasks?" + _query(query))
    assert reply.status == 200, (reply.status, reply.body[:300])
    body = reply.json()
    assert body["source"] == "history"
    return [(task["id"], task["state"]) for task in body["tasks"]]


def _query(text: str) -> str:
    from urllib.parse import urlencode

    return urlencode({"q": text, "limit": 1000})


def report(label: str, seconds: float, bound: float | None = None) -> None:
    verdict = "" if bound is None else f"  (bound {bound:g} s: {'ok' if seconds <= bound else 'EXCEEDED'})"
    print(f"[replicas] {label}: {seconds:.3f} s{verdict}")


def test_two_replicas_answer_every_search_alike_and_share_the_audit_log(
        replicas: Callable[[str], LiveServer], database: str) -> None:
    first = replicas("first")
    wait_until(lambda: role(first) == "writer", 15.0, "the first replica writing", first)
    second = replicas("second")
    wait_until(lambda: role(second) == "reader", 15.0, "the second replica reading", second)

    ids = [dispatch(first, f"alpha-{i}") for i in range(6)] + [dispatch(second, f"beta-{i}") for i in range(6)]
    wait_until(lambda: all_stored(database, ids), SETTLE, "every task stored as SUCCESS", first)

    for query in (f"name:{UNFURL}", "name:worker.tasks.link.*", "state:SUCCESS", "kwargs:alpha", "beta",
                  "example.com -kwargs:beta", f"id:{ids[3][:6]}", "since:10m name:worker.*"):
        one, other = search(first, query), search(second, query)
        assert one == other, query
    assert {task_id for task_id, _ in search(second, "name:worker.tasks.link.*")} >= set(ids)
    assert len(search(first, "kwargs:alpha")) == 6 and len(search(second, "beta")) == 6

    # One audit log: each replica lists the dispatches made through the other.
    audit_first = get_json(first, "/api/audit?limit=1000")
    audit_second = get_json(second, "/api/audit?limit=1000")
    assert audit_first == audit_second
    assert {entry["task_id"] for entry in audit_first["entries"]} == set(ids)
    assert get_json(first, "/api/status")["history"]["store"] == "postgresql"


def test_the_writer_killed_another_takes_over_and_no_task_is_lost(
        replicas: Callable[[str], LiveServer], database: str) -> None:
    writer = replicas("writer")
    wait_until(lambda: role(writer) == "writer", 15.0, "the first replica writing", writer)
    reader = replicas("reader")
    wait_until(lambda: role(reader) == "reader", 15.0, "the second replica reading", reader)

    before = [dispatch(reader, f"before-{i}") for i in range(5)]
    # The writer dies without a word (SIGKILL, its whole process group): its session ends, PostgreSQL frees the
    # lock, and changes it had not written yet are the reader's to write (it kept them).
    killed = time.monotonic()
    kill_group(writer.process.pid)
    writer.process.wait(10)
    during = [dispatch(reader, f"during-{i}") for i in range(5)]
    _, took = wait_for(lambda: role(reader) == "writer", TAKEOVER_BOUND + SLACK, "the reader taking over", reader,
                       interval=0.1)
    report("writer SIGKILLed -> the other replica writes", time.monotonic() - killed, TAKEOVER_BOUND)
    after = [dispatch(reader, f"after-{i}") for i in range(5)]

    every = before + during + after
    wait_until(lambda: all_stored(database, every), SETTLE, "every task stored as SUCCESS", reader)
    assert history(reader)["degraded"] is None

    # A replica started afterwards finds every one, by id, from history.
    third = replicas("third")
    for task_id in every:
        assert [found for found, _ in search(third, f"id:{task_id}")] == [task_id]
        assert request(third, "GET", f"/api/tasks/{task_id}").status == 200


def test_postgres_stopped_pages_work_from_memory_and_writes_resume_by_themselves(
        replicas: Callable[[str], LiveServer], database: str, postgres: PostgresServer) -> None:
    writer = replicas("writer")
    wait_until(lambda: role(writer) == "writer", 15.0, "the first replica writing", writer)
    reader = replicas("reader")
    wait_until(lambda: role(reader) == "reader", 15.0, "the second replica reading", reader)
    before = [dispatch(writer, f"before-{i}") for i in range(5)]
    wait_until(lambda: all_stored(database, before), SETTLE, "the first tasks stored", writer)

    print(f"\n[replicas] PostgreSQL stopped for {OUTAGE_SECONDS:g} s (DASHBOARD_HISTORY_OUTAGE_SECONDS)")
    stopped = time.monotonic()
    postgres._stop_process()  # fast shutdown: every session ends, the port refuses
    try:
        _, degraded_in = wait_for(lambda: history(writer)["degraded"] and history(reader)["degraded"],
                                  DEGRADED_BOUND + SLACK, "history degraded on both replicas", writer, interval=0.1)
        report("PostgreSQL stopped -> /api/status history.degraded on both", degraded_in, DEGRADED_BOUND)
        during: list[str] = []
        slowest = 0.0
        while time.monotonic() - stopped < OUTAGE_SECONDS:
            during.append(dispatch(writer if len(during) % 2 else reader, f"during-{len(during)}"))
            for server in (writer, reader):
                for path in PAGES:
                    reply = request(server, "GET", path)
                    assert reply.status == 200, (path, reply.status, reply.body[:300])
                    slowest = max(slowest, reply.elapsed)
            time.sleep(0.5)
        report("slowest page during the outage", slowest, 2.0)
        assert slowest <= 2.0 + SLACK
        page = request(writer, "GET", "/").text
        assert "history degraded" in page
        assert "history-degraded" in request(reader, "GET", "/status").text
        live = {task["id"] for task in get_json(reader, "/api/tasks?limit=1000")["tasks"]}  # memory: all there
        assert set(during) <= live
        reply = request(writer, "GET", "/api/tasks?q=state:SUCCESS")
        assert reply.status == 503 and "history" in reply.json()["error"]  # a search says why it has no answer
    finally:
        restarting = time.monotonic()
        postgres.start()
    report("PostgreSQL restart", time.monotonic() - restarting)

    every = before + during
    _, written_in = wait_for(lambda: all_stored(database, every), SETTLE, "every task written after the outage",
                             writer, interval=0.2)
    report(f"PostgreSQL back -> all {len(every)} tasks written", written_in)
    wait_until(lambda: not history(writer)["degraded"] and not history(reader)["degraded"], 15.0,
               "history no longer degraded", writer)
    assert sorted(role(server) for server in (writer, reader)) == ["reader", "writer"]
    assert "history degraded" not in request(reader, "GET", "/").text
    found = {task_id for task_id, _ in search(reader, "name:worker.tasks.link.*")}
    assert set(every) <= found
