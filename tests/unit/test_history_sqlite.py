"""The SQLite history store and its writer, on real files under tmp_path (no broker): rows round-trip, every
search form agrees with the in-memory matcher, group commits, retention, restore, and failures that degrade."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dashboard.model.search import parse_query
from dashboard.model.series import QueueSample
from dashboard.model.state import State, TaskView
from dashboard.services.history import History, HistoryUnavailable, HistoryWriter, WriteBatch, open_store
from dashboard.services.history.sqlite import SqliteHistory

NOW = 1_900_000_000.0


def feed(state: State, index: int, *, name: str = "acme.billing.charge", final: str = "task-succeeded",
         at: float | None = None, **fields: Any) -> str:
    """Four events of one task (sent, received, started, final) into `state`; its id."""
    uuid = f"{index:08x}-0000-4000-8000-000000000000"
    t = at if at is not None else NOW - 3600 + index
    state.apply({"type": "task-sent", "uuid": uuid, "name": name, "queue": fields.pop("queue", "billing"),
                 "args": fields.pop("args", f"[{index}, 'eur']"), "kwargs": "{}", "timestamp": t})
    host = fields.pop("worker", "celery@a")
    state.apply({"type": "task-received", "uuid": uuid, "hostname": host, "timestamp": t + 0.1})
    state.apply({"type": "task-started", "uuid": uuid, "hostname": host, "timestamp": t + 0.2})
    state.apply({"type": final, "uuid": uuid, "hostname": host, "timestamp": t + 0.5, "runtime": 0.3, **fields})
    return uuid


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteHistory]:
    found = SqliteHistory(tmp_path / "state" / "history.sqlite3")
    found.open()
    yield found
    found.close()


def views(state: State) -> list[TaskView]:
    return state.tasks(limit=100_000)[0]


def test_a_task_round_trips_through_its_row(store: SqliteHistory) -> None:
    state = State(clock=lambda: NOW)
    uuid = feed(state, 1, final="task-failed", exception="TimeoutError('slow')", traceback="Traceback\nTimeout")
    state.apply({"type": "task-retried", "uuid": uuid, "hostname": "celery@a", "timestamp": NOW - 3000,
                 "exception": "again"})
    original = state.task(uuid)
    assert original is not None
    store.write(WriteBatch.of_views([original]))

    stored = store.get(uuid)

    assert stored is not None
    assert stored.to_dict() == original.to_dict()


SEARCHES = [
    "", "name:acme.billing.*", "name:acme.billing.charge", "name:other.*", "state:FAILURE", "-state:SUCCESS",
    "worker:celery@b", "queue:mail", "id:00000003", "args:7", "eur", "exception:timeout", "timeout state:FAILURE",
    "since:30m", "until:30m", "name:*.send queue:mail", "-name:acme.* args:eur", "traceback:boom",
]


@pytest.mark.parametrize(("dense", "budget"), [(2_000, 50_000), (0, 50_000), (0, 7)],
                         ids=["through-indexes", "walking-the-table", "walk-over-budget"])
def test_every_search_form_finds_what_the_memory_matcher_finds(
    store: SqliteHistory, dense: int, budget: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("dashboard.services.history.sqlite.DENSE", dense)
    monkeypatch.setattr("dashboard.services.history.sqlite.WALK_BUDGET", budget)
    state = State(clock=lambda: NOW)
    for i in range(60):
        if i % 5 == 0:
            feed(state, i, final="task-failed", exception="TimeoutError('upstream')", traceback="boom\nTimeout")
        elif i % 7 == 0:
            feed(state, i, name="acme.mail.send", queue="mail", worker="celery@b")
        else:
            feed(state, i)
    everything = views(state)
    store.write(WriteBatch.of_views(everything))

    for text in SEARCHES:
        query = parse_query(text, NOW)
        expected = [view.id for view in everything if query.matches(view)]  # newest first, as stored
        page = store.search(query, limit=1000)
        assert [view.id for view in page.tasks] == expected, text
        assert page.total == len(expected) and not page.capped, text


def test_search_pages_sorts_and_caps_its_count(store: SqliteHistory, monkeypatch: pytest.MonkeyPatch) -> None:
    state = State(clock=lambda: NOW)
    ids = [feed(state, i) for i in range(30)]
    store.write(WriteBatch.of_views(views(state)))
    query = parse_query("name:acme.*", NOW)

    second = store.search(query, limit=10, offset=10)
    oldest = store.search(query, sort="seen", limit=3)

    assert [view.id for view in second.tasks] == list(reversed(ids))[10:20] and second.total == 30
    assert [view.id for view in oldest.tasks] == ids[:3]
    monkeypatch.setattr("dashboard.services.history.sqlite.COUNT_CAP", 12)
    capped = store.search(query, limit=5)
    assert capped.total == 12 and capped.capped


def test_an_updated_task_is_found_by_its_new_text_only(store: SqliteHistory) -> None:
    state = State(clock=lambda: NOW)
    uuid = feed(state, 1, final="task-failed", exception="KeyError('first')")
    store.write(WriteBatch.of_views(views(state)))
    state.apply({"type": "task-retried", "uuid": uuid, "hostname": "celery@a", "timestamp": NOW})
    state.apply({"type": "task-succeeded", "uuid": uuid, "hostname": "celery@a", "timestamp": NOW + 1,
                 "result": "'second'"})
    store.write(WriteBatch.of_views(views(state)))

    assert store.search(parse_query("result:second", NOW)).total == 1
    assert store.search(parse_query("exception:first", NOW)).total == 0
    assert store.info().tasks == 1


def test_prune_by_age_and_by_count(store: SqliteHistory) -> None:
    state = State(clock=lambda: NOW)
    ids = [feed(state, i) for i in range(20)]
    store.write(WriteBatch.of_views(views(state)))

    assert store.prune(NOW - 3600 + 5, None) == 5  # first seen before the cut
    assert store.prune(None, 10) == 5  # the 10 newest stay
    kept = store.search(parse_query("", NOW), limit=100).tasks
    assert [view.id for view in kept] == list(reversed(ids))[:10]


def test_newest_walks_back_in_chunks(store: SqliteHistory) -> None:
    state = State(clock=lambda: NOW)
    ids = [feed(state, i) for i in range(25)]
    store.write(WriteBatch.of_views(views(state)))

    first, below = store.newest(10)
    second, below = store.newest(10, below)
    third, below = store.newest(10, below)
    rest, end = store.newest(10, below)

    assert [row[0] for row in first + second + third] == list(reversed(ids))
    assert rest == [] and end is None


# -- the writer ------------------------------------------------------------------------------------------------


def writer_for(store: SqliteHistory, state: State, **options: Any) -> HistoryWriter:
    return HistoryWriter(store, state, clock=lambda: NOW, restore=False, **options)


def test_the_writer_commits_each_changed_task_once_with_its_latest_state(store: SqliteHistory) -> None:
    state = State(clock=lambda: NOW)
    writer = writer_for(store, state)
    for i in range(5):
        uuid = feed(state, i)
        for event_type in ("task-sent", "task-received", "task-started", "task-succeeded"):
            writer.note_event({"type": event_type, "uuid": uuid, "runtime": 0.3})

    writer.step()

    status = writer.status()
    assert status.role == "writer" and status.written == 5 and status.pending == 0 and status.dropped == 0
    assert store.info().tasks == 5
    assert {view.state for view in store.search(parse_query("", NOW)).tasks} == {"SUCCESS"}
    minutes = store.minutes(0)
    assert sum(row.succeeded for row in minutes) == 5 and {row.name for row in minutes} == {"acme.billing.charge"}


def test_the_writer_reads_the_state_a_slice_at_a_time_letting_requests_run_between(store: SqliteHistory) -> None:
    from dashboard.services.history.writer import ROWS_PER_READ

    state = State(clock=lambda: NOW)
    pauses: list[int] = []
    writer = writer_for(store, state, pause=lambda: pauses.append(1))
    count = ROWS_PER_READ * 2 + 1
    for i in range(count):
        writer.note_event({"type": "task-sent", "uuid": feed(state, i)})

    writer.step()

    assert len(pauses) == 2  # three slices, a pause between each
    assert writer.status().written == count and store.info().tasks == count


def test_a_full_buffer_drops_and_counts(store: SqliteHistory) -> None:
    state = State(clock=lambda: NOW)
    writer = writer_for(store, state, max_pending=3)
    for i in range(5):
        writer.note_event({"type": "task-sent", "uuid": feed(state, i)})

    assert writer.status().dropped == 2 and writer.status().pending == 3


def test_a_task_evicted_before_its_write_is_counted_as_dropped(store: SqliteHistory) -> None:
    state = State(max_tasks=2, clock=lambda: NOW)
    writer = writer_for(store, state)
    for i in range(4):
        writer.note_event({"type": "task-sent", "uuid": feed(state, i)})

    writer.step()

    assert writer.status().dropped == 2 and store.info().tasks == 2


def test_only_one_writer_per_store_and_a_reader_takes_over(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    first_store, second_store = SqliteHistory(path), SqliteHistory(path)
    state_a, state_b = State(clock=lambda: NOW), State(clock=lambda: NOW)
    first, second = writer_for(first_store, state_a), writer_for(second_store, state_b)
    uuid = feed(state_a, 1)
    feed(state_b, 1)
    first.note_event({"type": "task-sent", "uuid": uuid})
    second.note_event({"type": "task-sent", "uuid": uuid})

    first.step()
    second.step()
    assert (first.status().role, second.status().role) == ("writer", "reader")
    assert second.status().pending == 1  # kept for a takeover

    first.stop()  # releases the lock, as a dead process's kernel does
    second._last_elect = float("-inf")
    second.step()

    assert second.status().role == "writer" and second.status().pending == 0
    first_store.close()
    second_store.close()


def test_restore_puts_the_newest_back_and_reports_the_downtime(store: SqliteHistory) -> None:
    before = State(clock=lambda: NOW)
    ids = [feed(before, i) for i in range(30)]
    store.write(WriteBatch.of_views(views(before)))
    after = State(max_tasks=20, clock=lambda: NOW)
    live = feed(after, 99)  # an event that came in before the restore finished
    downtime: list[float] = []
    redraws: list[bool] = []
    writer = HistoryWriter(store, after, clock=lambda: NOW, on_downtime=downtime.append,
                           on_restored=lambda: redraws.append(True))

    writer.restore()

    shown = [view.id for view in after.tasks(limit=100)[0]]
    assert shown == [live, *list(reversed(ids))[:19]]
    restored, original = after.task(ids[-1]), before.task(ids[-1])
    assert restored is not None and original is not None and restored.to_dict() == original.to_dict()
    assert downtime == [NOW - 3600 + 29 + 0.5] and redraws == [True]


def test_a_read_only_file_is_a_clear_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes to read-only files")
    path = tmp_path / "h.sqlite3"
    store = SqliteHistory(path)
    store.open()
    state = State(clock=lambda: NOW)
    writer = writer_for(store, state)
    writer.note_event({"type": "task-sent", "uuid": feed(state, 1)})
    store.close()
    path.chmod(stat.S_IRUSR)
    reader = SqliteHistory(path)
    writer.store = reader
    with pytest.raises(HistoryUnavailable):
        writer.step()


class _FailingStore(SqliteHistory):
    """A store whose writes fail while `failing` is set (a full disk, a locked file)."""

    failing = True

    def write(self, batch: WriteBatch) -> None:
        if self.failing:
            raise HistoryUnavailable("history: writing failed: database or disk is full")
        super().write(batch)


def test_a_failing_store_degrades_keeps_the_batch_and_recovers_by_itself(tmp_path: Path) -> None:
    store = _FailingStore(tmp_path / "h.sqlite3")
    state = State(clock=lambda: NOW)
    changes: list[bool] = []
    writer = HistoryWriter(store, state, clock=lambda: NOW, restore=False, flush_interval=0.01,
                           on_status=lambda: changes.append(True))
    for i in range(3):
        writer.note_event({"type": "task-sent", "uuid": feed(state, i)})
    writer.start()
    try:
        _wait(lambda: writer.status().degraded is not None)
        status = writer.status()
        assert "disk is full" in (status.degraded or "") and status.pending == 3 and status.write_errors >= 1
        store.failing = False
        _wait(lambda: writer.status().degraded is None and writer.status().pending == 0)
    finally:
        writer.stop()
    assert store.info().tasks == 3 and len(changes) >= 2


def test_a_full_sqlite_file_is_a_clear_error(tmp_path: Path) -> None:
    store = SqliteHistory(tmp_path / "h.sqlite3")
    store.open()
    conn = store._connection()
    conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
    state = State(clock=lambda: NOW)
    with pytest.raises(HistoryUnavailable, match="full"):
        store.write(WriteBatch.of_views([state.task(feed(state, i, args="x" * 4000)) for i in range(50)]))  # type: ignore[misc]
    store.close()


def test_history_merges_what_is_not_written_yet_into_the_first_page(store: SqliteHistory) -> None:
    state = State(clock=lambda: NOW)
    old = [feed(state, i) for i in range(3)]
    store.write(WriteBatch.of_views(views(state)))
    writer = writer_for(store, state)
    new = feed(state, 10)
    writer.note_event({"type": "task-sent", "uuid": new})
    history = History(store, writer, state, clock=lambda: NOW)

    page = history.search(parse_query("name:acme.*", NOW))

    assert [view.id for view in page.tasks] == [new, *reversed(old)] and page.total == 4


def test_stats_give_series_per_name_and_queue(store: SqliteHistory) -> None:
    state = State(clock=lambda: NOW)
    writer = writer_for(store, state)
    for i in range(4):
        uuid = feed(state, i, final="task-failed" if i == 0 else "task-succeeded")
        writer.note_event({"type": "task-failed" if i == 0 else "task-succeeded", "uuid": uuid, "runtime": 0.3})
    writer.note_queues([QueueSample(NOW - 30, "billing", 7, 1)])
    writer.step()
    history = History(store, writer, state, clock=lambda: NOW)

    stats = history.stats("hour")

    (task,) = stats["tasks"]
    assert task["name"] == "acme.billing.charge"
    assert task["totals"]["finished"] == 4 and task["totals"]["failed"] == 1
    assert task["totals"]["failure_rate"] == 0.25 and 0.29 < task["totals"]["p50"] < 0.4
    (queue,) = stats["queues"]
    assert queue["queue"] == "billing" and queue["depth"][-1] == {"t": queue["depth"][-1]["t"], "depth": 7,
                                                                  "consumers": 1}
    assert stats["points"] == 60 and stats["step_seconds"] == 60


@pytest.mark.parametrize(("url", "ok"), [
    ("/var/lib/dash/history.sqlite3", True), ("sqlite:////tmp/h.sqlite3", True), ("sqlite:///tmp/h.sqlite3", True),
    ("relative.sqlite3", False), ("mysql://x/y", False),
])
def test_open_store_by_url(url: str, ok: bool) -> None:
    from dashboard.exceptions import ConfigError

    if ok:
        assert isinstance(open_store(url), SqliteHistory)
    else:
        with pytest.raises(ConfigError):
            open_store(url)


def _wait(condition: Any, timeout: float = 10.0) -> None:
    done = threading.Event()
    deadline = 0.0
    while deadline < timeout:
        if condition():
            return
        done.wait(0.02)
        deadline += 0.02
    raise AssertionError("condition not met in time")


def test_the_schema_is_created_once_by_concurrent_openers(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    stores = [SqliteHistory(path) for _ in range(4)]
    threads = [threading.Thread(target=s.open) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert int(sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0]) == 1
    for s in stores:
        s.close()
