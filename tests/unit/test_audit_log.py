"""Unit tests of dashboard.services.audit: the SQLite audit log on tmp_path files, and the dispatch recorder."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest

from dashboard.config import default_audit_path
from dashboard.exceptions import BrokerUnavailable, RoutingError
from dashboard.exceptions import DispatchRefused as Refused
from dashboard.model.dispatch import OUTCOMES, DispatchInvalid, DispatchOptions, DispatchRequest, outcome_of
from dashboard.services.audit import (
    MAX_TEXT_CHARS,
    MEMORY,
    SCHEMA_VERSION,
    ActionEntry,
    ActionOutcome,
    AuditEntry,
    AuditLog,
    AuditUnavailable,
    DispatchAttempt,
    Origin,
    action_entry,
    capped,
    error_text,
    json_text,
    request_entry,
)
from dashboard.services.audit import log as audit_module
from dashboard.services.audit import store as audit_store

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_900_000_000.0  # 2030-03-17: a fixed clock, so ordering and `since`/`until` are exact


def entry(**changes: Any) -> AuditEntry:
    """A sent dispatch, with some fields changed."""
    base = AuditEntry(at=T0, who="anonymous", source="api", remote_addr="127.0.0.1", name="worker.tasks.a",
                      args="[1]", kwargs='{"x": 2}', options="{}", queue="default", forced=False, outcome="sent",
                      task_id="id-1", error=None)  # fmt: skip
    return replace(base, **changes)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "audit.sqlite3"


@pytest.fixture
def audit(db_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(db_path)
    try:
        yield log
    finally:
        log.close()


# -- record and query ------------------------------------------------------------------------------------------


def test_an_entry_round_trips_with_its_id(audit: AuditLog) -> None:
    written = entry(forced=True, error=None, options='{"queue": "q"}')

    entry_id = audit.record(written)
    found, total = audit.query()

    assert isinstance(entry_id, int)
    assert total == 1
    assert found == [replace(written, id=entry_id)]
    assert found[0].time_iso == "2030-03-17T17:46:40.000Z"
    assert found[0].to_dict()["forced"] is True


def test_nothing_recorded_yet_is_an_empty_page(audit: AuditLog) -> None:
    assert audit.query() == ([], 0)


def test_entries_come_newest_first_and_ties_by_id(audit: AuditLog) -> None:
    ids = [audit.record(entry(at=at, name=f"t{i}")) for i, at in enumerate([T0 + 1, T0 + 3, T0 + 2, T0 + 3])]

    found, _ = audit.query()

    assert [e.id for e in found] == [ids[3], ids[1], ids[2], ids[0]]


@pytest.fixture
def populated(audit: AuditLog) -> AuditLog:
    rows = [
        entry(at=T0 + 1, name="a", who="ann", queue="q1", outcome="sent", task_id="t-1"),
        entry(at=T0 + 2, name="a", who="bob", queue="q2", outcome="refused", task_id=None, error="no consumer"),
        entry(at=T0 + 3, name="b", who="ann", queue="q1", outcome="unavailable", task_id=None, error="down"),
        entry(at=T0 + 4, name="b", who="ann", queue=None, outcome="invalid", task_id=None, error="args: bad"),
        entry(at=T0 + 5, name="a", who="ann", queue="q1", outcome="sent", task_id="t-5"),
    ]
    for row in rows:
        audit.record(row)
    return audit


@pytest.mark.parametrize(
    ("filters", "expected_at"),
    [
        ({}, [5, 4, 3, 2, 1]),
        ({"name": "a"}, [5, 2, 1]),
        ({"outcome": "sent"}, [5, 1]),
        ({"who": "bob"}, [2]),
        ({"queue": "q1"}, [5, 3, 1]),
        ({"task_id": "t-5"}, [5]),
        ({"since": T0 + 2}, [5, 4, 3, 2]),
        ({"until": T0 + 2}, [1]),
        ({"since": T0 + 2, "until": T0 + 4}, [3, 2]),
        ({"name": "a", "who": "ann", "outcome": "sent"}, [5, 1]),
        ({"name": "b", "outcome": "sent"}, []),
        ({"name": "a' OR 1=1 --"}, []),  # values are bound parameters, never SQL
    ],
)
def test_filters_are_exact_and_combine(populated: AuditLog, filters: dict[str, Any], expected_at: list[int]) -> None:
    found, total = populated.query(**filters)

    assert [int(e.at - T0) for e in found] == expected_at
    assert total == len(expected_at)


def test_pages_cover_every_entry_once_and_total_counts_all_matches(audit: AuditLog) -> None:
    for i in range(23):
        audit.record(entry(at=T0 + i, name="even" if i % 2 == 0 else "odd"))

    pages = [audit.query(limit=5, offset=offset) for offset in range(0, 25, 5)]
    filtered, filtered_total = audit.query(name="even", limit=5, offset=10)

    assert [total for _, total in pages] == [23] * 5
    assert [len(found) for found, _ in pages] == [5, 5, 5, 5, 3]
    assert [int(e.at - T0) for found, _ in pages for e in found] == list(range(22, -1, -1))
    assert filtered_total == 12 and [int(e.at - T0) for e in filtered] == [2, 0]
    assert audit.query(offset=100) == ([], 23)


@pytest.mark.parametrize(
    "bad",
    [{"outcome": "nope"}, {"outcome": "SENT"}, {"limit": 0}, {"limit": 1001}, {"offset": -1}],
)
def test_bad_query_arguments_raise_value_error(audit: AuditLog, bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        audit.query(**bad)


def test_memory_log_works(tmp_path: Path) -> None:
    with AuditLog(MEMORY) as audit:
        audit.record(entry())
        assert audit.query()[1] == 1
    assert list(tmp_path.iterdir()) == []


# -- the file: created on first use, private, WAL, versioned, durable --------------------------------------


def test_nothing_is_created_until_first_use_then_the_parent_directory_too(db_path: Path) -> None:
    audit = AuditLog(db_path)
    assert not db_path.parent.exists()

    audit.record(entry())
    audit.close()

    assert db_path.is_file()
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600, "the log holds task arguments: owner only"


def test_schema_is_versioned_and_the_journal_is_wal(audit: AuditLog, db_path: Path) -> None:
    audit.record(entry())

    other = sqlite3.connect(db_path)
    try:
        assert other.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = {row[0] for row in other.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    finally:
        other.close()
    assert {"dispatches_at", "dispatches_name_at", "dispatches_outcome_at"} <= indexes


def test_entries_survive_close_and_reopen(db_path: Path) -> None:
    first = AuditLog(db_path)
    first.record(entry(name="before-restart"))
    first.close()

    second = AuditLog(db_path)
    second.record(entry(at=T0 + 1, name="after-restart"))
    found, total = second.query()
    second.close()

    assert total == 2
    assert [e.name for e in found] == ["after-restart", "before-restart"]


WRITE_AND_DIE = """
import os, sys
from dashboard.services.audit import AuditEntry, AuditLog
log = AuditLog(sys.argv[1])
for i in range(3):
    log.record(AuditEntry(at=1.0 + i, who="w", source="api", remote_addr=None, name=f"killed-{i}", args="[]",
                          kwargs="{}", options="{}", queue="q", forced=False, outcome="sent", task_id=f"t{i}"))
os._exit(0)  # no close(), no checkpoint, no atexit: as if the process were killed
"""


def test_entries_committed_by_a_process_that_dies_without_closing_are_kept(db_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", WRITE_AND_DIE, str(db_path)], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr

    with AuditLog(db_path) as audit:
        found, total = audit.query()

    assert total == 3 and [e.name for e in found] == ["killed-2", "killed-1", "killed-0"]


def test_a_log_from_a_newer_version_is_not_touched(db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db_path.parent.mkdir(parents=True)
    newer = sqlite3.connect(db_path)
    newer.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    newer.close()
    audit = AuditLog(db_path)

    with caplog.at_level(logging.ERROR, logger="dashboard.services.audit"):
        assert audit.record(entry()) is None
    with pytest.raises(AuditUnavailable, match="newer"):
        audit.query()

    assert audit.write_errors == 1
    check = sqlite3.connect(db_path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    check.close()


# -- untrusted values --------------------------------------------------------------------------------------


def test_long_values_are_cut_with_a_mark(audit: AuditLog) -> None:
    huge = "x" * (MAX_TEXT_CHARS * 4)

    audit.record(entry(args=huge, kwargs=huge, name=huge, error=huge, who=huge, task_id=huge))
    (found,), _ = audit.query()

    for value in (found.args, found.kwargs, found.name, found.error, found.who, found.task_id):
        assert value is not None
        assert value.startswith("x" * MAX_TEXT_CHARS)
        assert value.endswith(f"… [truncated: {MAX_TEXT_CHARS * 4} characters in all]")
        assert len(value) < MAX_TEXT_CHARS + 100


def test_a_value_at_the_cap_is_kept_whole() -> None:
    assert capped("y" * MAX_TEXT_CHARS) == "y" * MAX_TEXT_CHARS


def test_markup_control_characters_and_lone_surrogates_are_stored_as_text(audit: AuditLog) -> None:
    nasty = '<script>alert("x")</script>\x00\u202e\ud800 end'

    audit.record(entry(args=json_text([nasty]), name=nasty))
    (found,), _ = audit.query()

    assert found.name == '<script>alert("x")</script>\x00\u202e\\ud800 end'
    assert "<script>" in found.args


def test_json_text_never_raises() -> None:
    nested: list[Any] = []
    for _ in range(100_000):
        nested = [nested]

    assert json_text({"a": [1, "é"]}) == '{"a": [1, "é"]}'
    assert json_text(object()).startswith('"<object object')
    assert json_text(nested) == "<not JSON: list>"


# -- concurrency ------------------------------------------------------------------------------------------


def test_concurrent_writers_on_one_log_lose_nothing(audit: AuditLog) -> None:
    threads, per_thread = 8, 40
    ids: list[int | None] = []
    start = threading.Barrier(threads)

    def write(n: int) -> None:
        start.wait()
        for i in range(per_thread):
            ids.append(audit.record(entry(at=T0 + i, name=f"thread-{n}")))

    workers = [threading.Thread(target=write, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)

    assert audit.write_errors == 0
    assert None not in ids and len(set(ids)) == threads * per_thread
    assert audit.query(limit=1)[1] == threads * per_thread
    assert audit.query(name="thread-3", limit=1)[1] == per_thread


def test_two_logs_on_one_file_as_two_processes_would_both_write(db_path: Path) -> None:
    first, second = AuditLog(db_path), AuditLog(db_path)
    barrier = threading.Barrier(2)

    def write(log: AuditLog, name: str) -> None:
        barrier.wait()
        for i in range(50):
            log.record(entry(at=T0 + i, name=name))

    workers = [threading.Thread(target=write, args=(log, name)) for log, name in ((first, "one"), (second, "two"))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)

    assert first.write_errors == second.write_errors == 0
    assert first.query(name="two", limit=1)[1] == 50 and second.query(name="one", limit=1)[1] == 50
    first.close()
    second.close()


def test_many_logs_opening_one_new_file_at_once_all_write(db_path: Path) -> None:
    # Switching a new file to WAL can answer "database is locked" without waiting on the busy handler: the
    # open is retried, within the busy timeout, rather than failing the first dispatch of a fresh worker.
    logs = [AuditLog(db_path) for _ in range(8)]
    barrier = threading.Barrier(len(logs))

    def write(log: AuditLog, index: int) -> None:
        barrier.wait()
        log.record(entry(at=T0 + index, name=f"opener-{index}"))

    threads = [threading.Thread(target=write, args=(log, index)) for index, log in enumerate(logs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert [log.write_errors for log in logs] == [0] * len(logs)
    assert logs[0].query(limit=100)[1] == len(logs)
    for log in logs:
        log.close()


# -- retention ----------------------------------------------------------------------------------------------


def test_prune_removes_only_the_entries_recorded_before_the_cutoff(db_path: Path) -> None:
    with AuditLog(db_path) as audit:
        for i in range(10):
            audit.record(entry(at=T0 + i, name=f"n{i}"))

        removed = audit.prune(T0 + 4)

        entries, total = audit.query(limit=100)
    assert removed == 4 and total == 6
    assert sorted(e.name for e in entries) == [f"n{i}" for i in range(4, 10)]


def test_prune_works_through_a_large_backlog_in_batches(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_store, "PRUNE_BATCH", 7)  # the batch every audit log prunes by
    with AuditLog(db_path) as audit:
        for i in range(30):
            audit.record(entry(at=T0 + i))

        assert audit.prune(T0 + 100) == 30
        assert audit.query()[1] == 0
        assert audit.prune(T0 + 100) == 0


def test_prune_on_a_closed_log_is_logged_not_raised(db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    audit = AuditLog(db_path)
    audit.close()

    with caplog.at_level(logging.ERROR, logger="dashboard.services.audit"):
        assert audit.prune(T0) == 0
    assert "pruning" in caplog.text


# -- a failing write never raises -----------------------------------------------------------------------------


def test_a_write_under_a_file_where_a_directory_should_be_fails_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "blocker").write_text("not a directory")
    audit = AuditLog(tmp_path / "blocker" / "audit.sqlite3")

    with caplog.at_level(logging.ERROR, logger="dashboard.services.audit"):
        assert audit.record(entry(name="lost.task", args='["secret-arg"]')) is None
        assert audit.record(entry(name="lost.task")) is None

    assert audit.write_errors == 2
    assert "lost.task" in caplog.text and "2 failed so far" in caplog.text
    assert "secret-arg" not in caplog.text, "arguments stay out of the server log"
    with pytest.raises(AuditUnavailable):
        audit.query()


def test_a_file_that_is_not_a_database_fails_quietly(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is not sqlite" * 100)
    audit = AuditLog(db_path)

    assert audit.record(entry()) is None
    assert audit.write_errors == 1


def test_a_closed_log_counts_writes_as_failed_and_refuses_reads(audit: AuditLog) -> None:
    audit.record(entry())
    audit.close()

    assert audit.record(entry()) is None
    assert audit.write_errors == 1
    with pytest.raises(AuditUnavailable, match="closed"):
        audit.query()


def test_a_database_error_mid_write_is_counted(audit: AuditLog, db_path: Path) -> None:
    audit.record(entry())
    other = sqlite3.connect(db_path)
    other.execute("DROP TABLE dispatches")  # the next INSERT fails inside SQLite
    other.close()

    assert audit.record(entry()) is None
    assert audit.write_errors == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only files")
def test_a_read_only_file_fails_quietly(db_path: Path) -> None:
    with AuditLog(db_path) as setup:
        setup.record(entry())
    db_path.chmod(0o400)
    try:
        audit = AuditLog(db_path)
        assert audit.record(entry()) is None
        assert audit.write_errors == 1
        audit.close()
    finally:
        db_path.chmod(0o600)


# -- default path ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"XDG_STATE_HOME": "/s", "HOME": "/h"}, "/s/dispatch-dashboard/audit.sqlite3"),
        ({"HOME": "/h"}, "/h/.local/state/dispatch-dashboard/audit.sqlite3"),
        ({"XDG_STATE_HOME": "relative", "HOME": "/h"}, "/h/.local/state/dispatch-dashboard/audit.sqlite3"),
        ({"XDG_STATE_HOME": "", "HOME": "/h"}, "/h/.local/state/dispatch-dashboard/audit.sqlite3"),
        ({}, None),
        ({"HOME": "relative"}, None),
    ],
)
def test_default_path(environ: dict[str, str], expected: str | None) -> None:
    found = default_audit_path(environ)
    assert (str(found) if found is not None else None) == expected


# -- outcomes and the recorder around a dispatch ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (Refused("no consumer", ["no consumer"], "q"), "refused"),
        (DispatchInvalid({"args": "bad"}), "invalid"),
        (BrokerUnavailable("down"), "unavailable"),
        (RoutingError("no such queue"), "routing_error"),  # the same word as in /metrics
        (RuntimeError("boom"), "error"),
    ],
)
def test_outcome_of(exc: BaseException, outcome: str) -> None:
    assert outcome_of(exc) == outcome
    assert outcome in OUTCOMES


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (BrokerUnavailable("redis://u:hunter2@h:6379 refused"), "redis://u:********@h:6379 refused"),
        (RoutingError("queue missing"), "queue missing"),
        (RuntimeError("redis://:pw@h gone"), "RuntimeError: redis://:********@h gone"),
        (KeyError(), "KeyError"),
    ],
)
def test_error_text_masks_credentials_and_names_foreign_errors(exc: BaseException, text: str) -> None:
    assert error_text(exc) == text


REQUEST = DispatchRequest("worker.tasks.a", (1, "<b>"), {"k": [1, 2]}, DispatchOptions(queue="q", priority=3))
ORIGIN = Origin("ann", "form", "10.0.0.1")


def clock() -> float:
    return T0


def test_request_entry_serialises_the_request() -> None:
    made = request_entry(REQUEST, ORIGIN, T0, "sent", queue="q", task_id="t")

    assert (made.args, made.kwargs, made.options) == ('[1, "<b>"]', '{"k": [1, 2]}', '{"queue": "q", "priority": 3}')
    assert (made.who, made.source, made.remote_addr, made.forced) == ("ann", "form", "10.0.0.1", False)


def test_a_sent_dispatch_is_recorded_with_its_task_id(audit: AuditLog) -> None:
    with DispatchAttempt(audit, REQUEST, ORIGIN, clock=clock) as attempt:
        attempt.queue = "q"
        attempt.sent("task-1", "q")

    (found,), _ = audit.query()
    assert attempt.entry_id == found.id
    assert (found.outcome, found.task_id, found.queue, found.error, found.at) == ("sent", "task-1", "q", None, T0)


@pytest.mark.parametrize(
    ("exc", "outcome", "queue", "error"),
    [
        (Refused("nobody consumes q2", ["nobody consumes q2"], "q2"), "refused", "q2", "nobody consumes q2"),
        (BrokerUnavailable("the broker at redis://:pw@h did not take it"), "unavailable", "q",
         "the broker at redis://:********@h did not take it"),
        (RoutingError("queue q is not in task_queues"), "routing_error", "q", "queue q is not in task_queues"),
        (ValueError("surprise"), "error", "q", "ValueError: surprise"),
    ],
)
def test_a_failed_dispatch_is_recorded_and_its_exception_goes_on(
    audit: AuditLog, exc: Exception, outcome: str, queue: str, error: str
) -> None:
    with pytest.raises(type(exc)) as raised, DispatchAttempt(audit, REQUEST, ORIGIN, clock=clock) as attempt:
        attempt.queue = "q"
        raise exc

    assert raised.value is exc
    (found,), _ = audit.query()
    assert (found.outcome, found.queue, found.task_id, found.error) == (outcome, queue, None, error)


def test_a_failure_before_the_route_is_known_records_no_queue(audit: AuditLog) -> None:
    with pytest.raises(RoutingError), DispatchAttempt(audit, REQUEST, ORIGIN):
        raise RoutingError("bad router")

    (found,), _ = audit.query()
    assert found.queue is None and found.outcome == "routing_error"


def test_a_block_that_ends_without_a_task_id_is_recorded_as_an_error(audit: AuditLog) -> None:
    with DispatchAttempt(audit, REQUEST, ORIGIN):
        pass

    (found,), _ = audit.query()
    assert found.outcome == "error" and found.error == "the dispatch ended without a task id"


def test_a_begun_dispatch_is_in_the_log_while_it_is_published_then_completed_in_place(db_path: Path) -> None:
    writer, other_process = AuditLog(db_path), AuditLog(db_path)
    with DispatchAttempt(writer, REQUEST, ORIGIN, clock=clock) as attempt:
        attempt.queue = "q"
        attempt.begin("task-1")
        assert writer.flush()
        (during,), _ = other_process.query()  # what a crash now would leave
        attempt.sent("task-1", "q")

    (found,), total = writer.query()
    assert (during.outcome, during.task_id, during.queue, during.at) == ("unknown", "task-1", "q", T0)
    assert total == 1 and found.id == during.id == attempt.entry_id
    assert (found.outcome, found.task_id, found.queue, found.error) == ("sent", "task-1", "q", None)
    assert other_process.query(outcome="sent")[1] == 1 and writer.write_errors == 0
    writer.close()
    other_process.close()


def test_a_begun_dispatch_that_fails_is_completed_with_its_error_and_no_task_id(audit: AuditLog) -> None:
    with pytest.raises(BrokerUnavailable), DispatchAttempt(audit, REQUEST, ORIGIN, clock=clock) as attempt:
        attempt.queue = "q"
        attempt.begin("task-1")
        raise BrokerUnavailable("the broker at redis://h did not take the task")

    (found,), total = audit.query()
    assert total == 1 and found.id == attempt.entry_id
    assert (found.outcome, found.task_id, found.error) == ("unavailable", None, "the broker at redis://h did not "
                                                                                 "take the task")


BEGIN_AND_DIE = """
import os, sys
from dashboard.model.dispatch import DispatchRequest
from dashboard.services.audit import AuditLog, DispatchAttempt, Origin
log = AuditLog(sys.argv[1])
attempt = DispatchAttempt(log, DispatchRequest("worker.tasks.a"), Origin())
attempt.queue = "q"
attempt.begin("task-died")
assert log.flush()
os._exit(0)  # killed while the task was being published: the outcome is never written
"""


def test_a_dispatch_whose_process_dies_while_publishing_stays_unknown_with_its_task_id(db_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", BEGIN_AND_DIE, str(db_path)], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr

    with AuditLog(db_path) as audit:
        found, total = audit.query(outcome="unknown")

    assert total == 1 and (found[0].task_id, found[0].queue, found[0].name) == ("task-died", "q", "worker.tasks.a")


class FailingFirstWrite(AuditLog):
    """An audit log whose first batch fails, as a full disk or a lock held too long would."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.failed = False

    def _write_batch(self, writes: Any, durable: bool) -> None:
        if not self.failed:
            self.failed = True
            raise sqlite3.OperationalError("database is locked")
        super()._write_batch(writes, durable)


def test_when_the_begun_write_fails_the_outcome_is_recorded_on_its_own(db_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    audit = FailingFirstWrite(db_path)
    with caplog.at_level(logging.WARNING), DispatchAttempt(audit, REQUEST, ORIGIN, clock=clock) as attempt:
        attempt.begin("task-1")
        attempt.sent("task-1", "q")

    (found,), total = audit.query()
    assert total == 1 and found.id == attempt.entry_id and (found.outcome, found.task_id) == ("sent", "task-1")
    assert audit.write_errors == 0 and "database is locked" in caplog.text
    audit.close()


def test_concurrent_dispatches_each_have_one_entry_with_their_outcome(audit: AuditLog) -> None:
    threads, per_thread = 8, 25
    start = threading.Barrier(threads)

    def dispatch(n: int) -> None:
        start.wait()
        for i in range(per_thread):
            with contextlib.suppress(BrokerUnavailable), DispatchAttempt(audit, REQUEST, ORIGIN) as attempt:
                attempt.begin(f"t{n}-{i}")
                if i % 5 == 0:
                    raise BrokerUnavailable("down")
                attempt.sent(f"t{n}-{i}", "q")

    workers = [threading.Thread(target=dispatch, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)

    assert audit.write_errors == 0
    assert audit.query(limit=1)[1] == threads * per_thread
    assert audit.query(outcome="sent", limit=1)[1] == threads * per_thread * 4 // 5
    assert audit.query(outcome="unavailable", limit=1)[1] == threads * per_thread // 5
    assert audit.query(outcome="unknown", limit=1)[1] == 0


def test_without_an_audit_log_the_recorder_does_nothing() -> None:
    with DispatchAttempt(None, REQUEST, ORIGIN) as attempt:
        attempt.sent("t", "q")

    assert attempt.entry is None


def test_a_failing_audit_write_neither_raises_nor_replaces_the_dispatch_error(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("")
    broken = AuditLog(tmp_path / "blocker" / "audit.sqlite3")

    with DispatchAttempt(broken, REQUEST, ORIGIN) as attempt:
        attempt.sent("t", "q")
    with pytest.raises(BrokerUnavailable, match="down"), DispatchAttempt(broken, REQUEST, ORIGIN):
        raise BrokerUnavailable("down")

    assert broken.write_errors == 2


def test_an_entry_that_cannot_be_described_is_counted_not_raised(audit: AuditLog) -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no text")

    with pytest.raises(Unprintable), DispatchAttempt(audit, REQUEST, ORIGIN):
        raise Unprintable()

    assert audit.write_errors == 1
    assert audit.query() == ([], 0)


# -- operator actions ---------------------------------------------------------------------------------------


def action(at: float = T0, action_name: str = "queue.purge", target: str = "billing", outcome: str = "done",
           who: str = "ops") -> ActionEntry:
    return action_entry(Origin(who, "api", "127.0.0.1"), at, action_name, target, {"purged": 3},
                        cast(ActionOutcome, outcome))


def test_actions_are_recorded_and_read_back_newest_first_with_filters(db_path: Path) -> None:
    with AuditLog(db_path) as audit:
        audit.record_action(action(T0, "queue.purge", "billing"))
        audit.record_action(action(T0 + 1, "queue.move", "billing", who="ana"))
        audit.record_action(action(T0 + 2, "task.revoke", "3f2a", outcome="failed"))

        everything, total = audit.actions()
        family, family_total = audit.actions(action="queue.*")
        by_target, _ = audit.actions(target="3f2a")
        by_who, _ = audit.actions(who="ana")

    assert total == 3 and [a.action for a in everything] == ["task.revoke", "queue.move", "queue.purge"]
    assert family_total == 2 and {a.action for a in family} == {"queue.purge", "queue.move"}
    assert [a.outcome for a in by_target] == ["failed"]
    assert [a.action for a in by_who] == ["queue.move"]
    assert json.loads(everything[0].detail) == {"purged": 3}
    assert everything[0].to_dict()["who"] == "ops" and everything[0].id is not None


def test_an_older_log_gains_the_actions_table_and_keeps_its_dispatches(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db_path)
    for statement in audit_module._MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO dispatches (at, who, source, name, args, kwargs, options, forced, outcome) "
                 "VALUES (1, 'a', 'api', 'n', '[]', '{}', '{}', 0, 'sent')")
    conn.commit()
    conn.close()

    with AuditLog(db_path) as audit:
        assert audit.query()[1] == 1
        audit.record_action(action())
        assert audit.actions()[1] == 1


def test_prune_removes_old_actions_too(db_path: Path) -> None:
    with AuditLog(db_path) as audit:
        for i in range(5):
            audit.record_action(action(T0 + i))
        assert audit.prune(T0 + 3) == 3
        assert audit.actions()[1] == 2


def test_a_failed_action_write_is_counted_not_raised(db_path: Path) -> None:
    audit = AuditLog(db_path)
    audit.close()
    assert audit.record_action(action()) is None
    assert audit.write_errors == 1
