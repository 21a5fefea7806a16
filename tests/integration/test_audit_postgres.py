"""The PostgreSQL audit log on a real server the tests start: the SQLite log's behaviours run again here (the same
test functions, with `audit` a PostgresAuditLog on a fresh database), then what only a shared log has: two
replicas' logs on one database, migrations by several at once, a server that is down, and the config rule that
puts the audit log in the history's PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from dashboard.config import load_config
from dashboard.services.audit import ActionEntry, AuditLog, DispatchAttempt, Origin, action_entry, open_audit
from dashboard.services.audit.postgres import SCHEMA_VERSION, PostgresAuditLog
from tests.unit import test_audit_log as same
from tests.unit.test_audit_log import T0, action, entry, populated  # noqa: F401 - `populated` is a fixture


@pytest.fixture
def audit(postgres_url: str) -> Iterator[PostgresAuditLog]:
    log = PostgresAuditLog(postgres_url)
    try:
        yield log
    finally:
        log.close()


# -- the SQLite log's behaviours, against PostgreSQL -----------------------------------------------------------

test_an_entry_round_trips_with_its_id = same.test_an_entry_round_trips_with_its_id
test_nothing_recorded_yet_is_an_empty_page = same.test_nothing_recorded_yet_is_an_empty_page
test_entries_come_newest_first_and_ties_by_id = same.test_entries_come_newest_first_and_ties_by_id
test_filters_are_exact_and_combine = same.test_filters_are_exact_and_combine
test_pages_cover_every_entry_once_and_total_counts_all_matches = (
    same.test_pages_cover_every_entry_once_and_total_counts_all_matches)
test_bad_query_arguments_raise_value_error = same.test_bad_query_arguments_raise_value_error
test_long_values_are_cut_with_a_mark = same.test_long_values_are_cut_with_a_mark
test_concurrent_writers_on_one_log_lose_nothing = same.test_concurrent_writers_on_one_log_lose_nothing
test_a_closed_log_counts_writes_as_failed_and_refuses_reads = (
    same.test_a_closed_log_counts_writes_as_failed_and_refuses_reads)
test_a_sent_dispatch_is_recorded_with_its_task_id = same.test_a_sent_dispatch_is_recorded_with_its_task_id
test_a_failed_dispatch_is_recorded_and_its_exception_goes_on = (
    same.test_a_failed_dispatch_is_recorded_and_its_exception_goes_on)
test_a_failure_before_the_route_is_known_records_no_queue = (
    same.test_a_failure_before_the_route_is_known_records_no_queue)
test_a_block_that_ends_without_a_task_id_is_recorded_as_an_error = (
    same.test_a_block_that_ends_without_a_task_id_is_recorded_as_an_error)
test_an_entry_that_cannot_be_described_is_counted_not_raised = (
    same.test_an_entry_that_cannot_be_described_is_counted_not_raised)
test_a_begun_dispatch_that_fails_is_completed_with_its_error_and_no_task_id = (
    same.test_a_begun_dispatch_that_fails_is_completed_with_its_error_and_no_task_id)
test_concurrent_dispatches_each_have_one_entry_with_their_outcome = (
    same.test_concurrent_dispatches_each_have_one_entry_with_their_outcome)


def test_a_begun_dispatch_is_seen_by_another_replica_then_completed_in_place(postgres_url: str) -> None:
    first, second = PostgresAuditLog(postgres_url), PostgresAuditLog(postgres_url)
    with DispatchAttempt(first, same.REQUEST, same.ORIGIN, clock=same.clock) as attempt:
        attempt.queue = "q"
        attempt.begin("task-1")
        assert first.flush()
        (during,), _ = second.query()
        attempt.sent("task-1", "q")
    first.flush()

    (found,), total = second.query()
    assert (during.outcome, during.task_id) == ("unknown", "task-1")
    assert total == 1 and found.id == during.id == attempt.entry_id and found.outcome == "sent"
    first.close()
    second.close()


def test_a_replica_that_stops_while_publishing_leaves_the_dispatch_unknown(postgres_url: str) -> None:
    stopping = PostgresAuditLog(postgres_url)
    attempt = DispatchAttempt(stopping, same.REQUEST, same.ORIGIN, clock=same.clock)
    attempt.begin("task-1")
    stopping.close()  # its outcome never comes

    with PostgresAuditLog(postgres_url) as other:
        (found,), _ = other.query(outcome="unknown")
    assert found.task_id == "task-1" and found.name == same.REQUEST.name


def test_markup_control_characters_and_lone_surrogates_are_stored_as_text(audit: PostgresAuditLog) -> None:
    nasty = '<script>alert("x")</script>\x00\u202e\ud800 end'

    assert audit.record(entry(name=nasty)) is not None
    (found,), _ = audit.query()

    assert found.name == '<script>alert("x")</script>\\x00\u202e\\ud800 end'  # PostgreSQL text holds no NUL


def test_actions_are_recorded_filtered_and_pruned(audit: PostgresAuditLog, monkeypatch: pytest.MonkeyPatch) -> None:
    audit.record_action(action(T0, "queue.purge", "billing"))
    audit.record_action(action(T0 + 1, "queue.move", "billing", who="ana"))
    audit.record_action(action(T0 + 2, "task.revoke", "3f2a", outcome="failed"))
    for i in range(20):
        audit.record(entry(at=T0 + i, name=f"n{i}"))

    everything, total = audit.actions()
    family, family_total = audit.actions(action="queue.*")
    assert total == 3 and [a.action for a in everything] == ["task.revoke", "queue.move", "queue.purge"]
    assert family_total == 2 and [a.who for a in audit.actions(who="ana")[0]] == ["ana"]

    monkeypatch.setattr("dashboard.services.audit.store.PRUNE_BATCH", 3)
    assert audit.prune(T0 + 10) == 10 + 3
    assert audit.query()[1] == 10 and audit.actions()[1] == 0


# -- shared by replicas ----------------------------------------------------------------------------------------


def test_two_replicas_write_one_log_and_each_reads_both(postgres_url: str) -> None:
    first, second = PostgresAuditLog(postgres_url), PostgresAuditLog(postgres_url)
    barrier = threading.Barrier(2)

    def write(log: PostgresAuditLog, name: str) -> None:
        barrier.wait()
        for i in range(40):
            log.record(entry(at=T0 + i, name=name))

    workers = [threading.Thread(target=write, args=(log, name)) for log, name in ((first, "one"), (second, "two"))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)

    assert first.write_errors == second.write_errors == 0
    assert first.query(name="two", limit=1)[1] == 40 and second.query(name="one", limit=1)[1] == 40
    assert first.query(limit=1000) == second.query(limit=1000)
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT version FROM audit_schema").fetchall() == [(SCHEMA_VERSION,)]
    first.close()
    second.close()


def test_a_server_that_is_down_counts_the_write_and_names_the_database(caplog: pytest.LogCaptureFixture) -> None:
    from dashboard.services.processes import free_port

    log = PostgresAuditLog(f"postgresql://dash:s3cret-pw@127.0.0.1:{free_port()}/audit")

    assert log.record(entry()) is None and log.write_errors == 1
    with pytest.raises(same.AuditUnavailable) as caught:
        log.query()
    assert "s3cret-pw" not in str(caught.value) and "127.0.0.1" in str(caught.value)
    assert "s3cret-pw" not in caplog.text
    log.close()


def test_the_audit_log_follows_a_postgres_history_unless_given() -> None:
    pg = "postgresql://dash:pw@db.example/dash"
    shared = load_config(None, {"DASHBOARD_HISTORY_URL": pg, "XDG_STATE_HOME": "/tmp/x"}, client_app="app:celery")
    own = load_config(None, {"DASHBOARD_HISTORY_URL": pg, "DASHBOARD_AUDIT_PATH": "/tmp/a.sqlite3",
                             "XDG_STATE_HOME": "/tmp/x"}, client_app="app:celery")
    local = load_config(None, {"XDG_STATE_HOME": "/tmp/x"}, client_app="app:celery")

    assert shared.audit_path == pg and isinstance(open_audit(pg), PostgresAuditLog)
    assert own.audit_path == "/tmp/a.sqlite3" and isinstance(open_audit(own.audit_path), AuditLog)
    assert local.audit_path == "/tmp/x/dispatch-dashboard/audit.sqlite3"


def mentioning(at: float, name: str, task_id: str) -> ActionEntry:
    return action_entry(Origin("ops", "api", "127.0.0.1"), at, name, task_id, {"task_id": task_id, "new": "x"},
                        "done")


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_actions_mentioning_a_task_come_newest_first(store: str, postgres_url: str, tmp_path: Path) -> None:
    log = PostgresAuditLog(postgres_url) if store == "postgres" else AuditLog(tmp_path / "audit.sqlite3")
    with log:
        log.record_action(mentioning(T0, "task.redispatch", "3f2a-old"))
        log.record_action(mentioning(T0 + 1, "task.revoke", "3f2a-old"))
        log.record_action(mentioning(T0 + 2, "task.redispatch", "other"))
        log.record_action(mentioning(T0 + 3, "task.redispatch", "3f2a-old"))

        found = log.actions_mentioning(("task.redispatch", "task.bulk_redispatch"), "3f2a-old")
        none = log.actions_mentioning((), "3f2a-old")

    assert [(entry.at, entry.action) for entry in found] == [(T0 + 3, "task.redispatch"), (T0, "task.redispatch")]
    assert none == []
