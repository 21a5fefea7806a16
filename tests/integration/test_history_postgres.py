"""The PostgreSQL history store on a real server the tests start (never the machine's own): the SQLite store's
behaviours run again here against PostgreSQL (the same test functions, with `store` a PostgresHistory on a fresh
database), then what only PostgreSQL has: the advisory-lock election across connections, a writer whose session
dies, migrations by several replicas at once, errors with masked credentials, and tokenization edge cases."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from dashboard.model.search import parse_query
from dashboard.model.state import State
from dashboard.services.history import HistoryUnavailable, HistoryWriter, WriteBatch, open_store
from dashboard.services.history.postgres import SCHEMA_VERSION, WRITER_KEY, PostgresHistory
from dashboard.services.history.postgres_text import tsvector_text
from tests.unit import test_history_sqlite as same
from tests.unit.test_history_sqlite import NOW, feed, views


def writer_for(store: PostgresHistory, state: State, **options: Any) -> HistoryWriter:
    return HistoryWriter(store, state, clock=lambda: NOW, restore=False, **options)


@pytest.fixture
def store(postgres_url: str) -> Iterator[PostgresHistory]:
    found = PostgresHistory(postgres_url)
    found.open()
    yield found
    found.close()


# -- the SQLite store's behaviours, against PostgreSQL ---------------------------------------------------------

test_a_task_round_trips_through_its_row = same.test_a_task_round_trips_through_its_row
test_an_updated_task_is_found_by_its_new_text_only = same.test_an_updated_task_is_found_by_its_new_text_only
test_prune_by_age_and_by_count = same.test_prune_by_age_and_by_count
test_newest_walks_back_in_chunks = same.test_newest_walks_back_in_chunks
test_the_writer_commits_each_changed_task_once_with_its_latest_state = (
    same.test_the_writer_commits_each_changed_task_once_with_its_latest_state)
test_a_task_evicted_before_its_write_is_counted_as_dropped = (
    same.test_a_task_evicted_before_its_write_is_counted_as_dropped)
test_restore_puts_the_newest_back_and_reports_the_downtime = (
    same.test_restore_puts_the_newest_back_and_reports_the_downtime)
test_history_merges_what_is_not_written_yet_into_the_first_page = (
    same.test_history_merges_what_is_not_written_yet_into_the_first_page)
test_stats_give_series_per_name_and_queue = same.test_stats_give_series_per_name_and_queue


DENSITIES = pytest.mark.parametrize("dense", [2_000, 0], ids=["through-indexes", "walking-in-order"])


@DENSITIES
def test_every_search_form_finds_what_the_memory_matcher_finds(
    store: PostgresHistory, dense: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("dashboard.services.history.postgres.DENSE", dense)  # both of the search's plans
    state = State(clock=lambda: NOW)
    for i in range(60):  # the SQLite test's tasks
        if i % 5 == 0:
            feed(state, i, final="task-failed", exception="TimeoutError('upstream')", traceback="boom\nTimeout")
        elif i % 7 == 0:
            feed(state, i, name="acme.mail.send", queue="mail", worker="celery@b")
        else:
            feed(state, i)
    everything = views(state)
    store.write(WriteBatch.of_views(everything))

    for text in same.SEARCHES:
        query = parse_query(text, NOW)
        expected = [view.id for view in everything if query.matches(view)]  # newest first, as stored
        page = store.search(query, limit=1000)
        assert [view.id for view in page.tasks] == expected, text
        assert page.total == len(expected) and not page.capped, text


def test_search_pages_sorts_and_caps_its_count(store: PostgresHistory, monkeypatch: pytest.MonkeyPatch) -> None:
    state = State(clock=lambda: NOW)
    ids = [feed(state, i, runtime=0.01 * (i % 7)) for i in range(30)]
    store.write(WriteBatch.of_views(views(state)))
    query = parse_query("name:acme.*", NOW)

    second = store.search(query, limit=10, offset=10)
    oldest = store.search(query, sort="seen", limit=3)
    slowest = store.search(query, sort="-runtime", limit=30)

    assert [view.id for view in second.tasks] == list(reversed(ids))[10:20] and second.total == 30
    assert [view.id for view in oldest.tasks] == ids[:3]
    expected = sorted(views(state), key=lambda view: (-(view.runtime or 0), -(view.timeline[0].timestamp)))
    assert [view.id for view in slowest.tasks] == [view.id for view in expected]
    monkeypatch.setattr("dashboard.services.history.postgres.COUNT_CAP", 12)
    capped = store.search(query, limit=5)
    assert capped.total == 12 and capped.capped


TRICKY = [
    "name:acme.bil*", "name:a%b", "name:a_b", "name:a?b", "name:[x]*", "name:*", "id:0000000", "queue:b*",
    "café", "cafe", "CAFÉ", "straße", "strasse", "naïve", "日本", "x" * 300, "42", "4", "-args:4",
    "exception:valueerror", "traceback:valueerror", "result:ok", "-exception:value", "kwargs:key args:1",
    '"deep thought"', "ünïcödé", "worker:celery@*", "-worker:celery@a",
]


@DENSITIES
def test_tricky_values_and_words_agree_with_the_memory_matcher(
    store: PostgresHistory, dense: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("dashboard.services.history.postgres.DENSE", dense)
    state = State(clock=lambda: NOW)
    names = ["a%b", "a_b", "axb", "[x]y", "acme.billing.charge", "acme.bil"]
    texts = ["Café naïve", "Straße 日本語", "x" * 400, "ünïcödé deep-thought 42", "ValueError: boom", "ok"]
    for i in range(24):
        outcome: dict[str, Any] = ({"exception": f"ValueError('{texts[i % len(texts)]}')",
                                    "traceback": "Traceback\nKeyError"} if i % 4 == 0
                                   else {"result": "'ok'", "kwargs": "{'key': 1}"})
        feed(state, i, name=names[i % len(names)], args=f"[{i}, '{texts[i % len(texts)]}']",
             worker=f"celery@{'ab'[i % 2]}", queue="billing" if i % 3 else "mail",
             final="task-failed" if i % 4 == 0 else "task-succeeded", **outcome)
    everything = views(state)
    store.write(WriteBatch.of_views(everything))

    for text in TRICKY:
        query = parse_query(text, NOW)
        expected = [view.id for view in everything if query.matches(view)]
        page = store.search(query, limit=1000)
        assert [view.id for view in page.tasks] == expected, text


def test_the_stored_words_are_the_memory_matchers_words() -> None:
    vector = tsvector_text({"args": "[1, 'Café']", "exception": "KeyError('x')", "traceback": "boom"})

    assert sorted(vector.split(" ")) == sorted(["'1':1A", "'cafe':1A", "'!keyerror':4", "'!x':4", "'boom':5D"])


# -- the writer election ---------------------------------------------------------------------------------------


def test_one_writer_among_replicas_and_a_dead_session_hands_over(postgres_url: str) -> None:
    first_store, second_store = PostgresHistory(postgres_url), PostgresHistory(postgres_url)
    state_a, state_b = State(clock=lambda: NOW), State(clock=lambda: NOW)
    first, second = writer_for(first_store, state_a), writer_for(second_store, state_b)
    uuid = feed(state_a, 1)
    feed(state_b, 1)
    first.note_event({"type": "task-sent", "uuid": uuid})
    second.note_event({"type": "task-sent", "uuid": uuid})
    try:
        first.step()
        second.step()
        assert (first.status().role, second.status().role) == ("writer", "reader")
        assert second.status().pending == 1  # kept for a takeover

        # The writer's database session dies (a crashed replica, a dropped connection): PostgreSQL frees its lock.
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                          "AND objid = %s AND granted", (WRITER_KEY & 0xFFFFFFFF,))
        second._last_elect = float("-inf")
        second.step()
        assert second.status().role == "writer" and second.status().pending == 0
        assert second_store.get(uuid) is not None

        # The old writer notices its session is gone and becomes a reader: it never writes again unelected.
        lock = first._writer_lock
        assert lock is not None
        lock._checked = float("-inf")  # type: ignore[attr-defined]
        first.note_event({"type": "task-sent", "uuid": feed(state_a, 2)})
        first.step()
        assert first.status().role == "reader"
    finally:
        first.stop()
        second.stop()
        first_store.close()
        second_store.close()


def test_stopping_the_writer_releases_the_lock_at_once(postgres_url: str) -> None:
    first_store, second_store = PostgresHistory(postgres_url), PostgresHistory(postgres_url)
    first = first_store.writer_lock()
    second = second_store.writer_lock()
    try:
        assert first.try_acquire() and not second.try_acquire()
        first.release()
        assert second.try_acquire() and second.still_held()
    finally:
        second.release()
        first_store.close()
        second_store.close()


def test_the_schema_is_created_once_by_replicas_starting_together(postgres_url: str) -> None:
    stores = [PostgresHistory(postgres_url) for _ in range(4)]
    errors: list[BaseException] = []

    def open_one(store: PostgresHistory) -> None:
        try:
            store.open()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=open_one, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT version FROM history_schema").fetchall() == [(SCHEMA_VERSION,)]
    for s in stores:
        s.close()


# -- failures --------------------------------------------------------------------------------------------------


def test_an_unreachable_server_is_a_clear_error_with_the_password_masked(postgres_server: Any) -> None:
    from dashboard.services.processes import free_port

    store = open_store(f"postgresql://dash:s3cret-pw@127.0.0.1:{free_port()}/history")
    with pytest.raises(HistoryUnavailable) as caught:
        store.search(parse_query("", NOW))
    message = str(caught.value)
    assert "s3cret-pw" not in message and "127.0.0.1" in message and "history" in message
    store.close()


def test_a_failed_write_keeps_the_batch_and_recovers_when_the_server_is_back(store: PostgresHistory) -> None:
    state = State(clock=lambda: NOW)
    writer = HistoryWriter(store, state, clock=lambda: NOW, restore=False)
    writer.note_event({"type": "task-sent", "uuid": feed(state, 1)})
    writer.step()
    assert writer.status().role == "writer"
    with psycopg.connect(store.url, autocommit=True) as admin:  # every session of the store dies
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                      "AND pid <> pg_backend_pid()")
    uuid = feed(state, 2)
    writer.note_event({"type": "task-sent", "uuid": uuid})
    lock = writer._writer_lock
    assert lock is not None
    lock._checked = float("-inf")  # type: ignore[attr-defined]

    writer.step()  # the lost session is noticed: a reader again, nothing written, nothing lost
    assert writer.status().role == "reader" and writer.status().pending == 1
    writer._last_elect = float("-inf")
    writer.step()  # re-elected on a new session, the pending change written

    assert writer.status().role == "writer" and writer.status().pending == 0 and store.get(uuid) is not None
    writer.stop()


def test_open_store_picks_postgres_for_its_urls() -> None:
    for url in ("postgresql://u:p@h/db", "postgres://h/db", "postgresql+psycopg://h/db"):
        store = open_store(url)
        assert isinstance(store, PostgresHistory) and "p@" not in store.shown


def test_a_text_postgres_cannot_hold_is_escaped_rather_than_failing_the_batch(store: PostgresHistory) -> None:
    state = State(clock=lambda: NOW)
    odd = feed(state, 1, args="['nul\x00byte', 'lone \ud800']")
    plain = feed(state, 2)

    store.write(WriteBatch.of_views(views(state)))

    stored = store.get(odd)
    assert stored is not None and stored.args == "['nul\\x00byte', 'lone \\ud800']"
    assert store.get(plain) is not None and store.search(parse_query("args:nul", NOW)).total == 1
