"""Unit tests of the audit log's group commit (dashboard.services.audit.writer), with a commit function of the
test's own: no database."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import pytest

from dashboard.services.audit.writer import GroupCommit, Write, WriterClosed
from tests.support.waits import wait_until

DEADLINE = 10.0


class Database:
    """Commits batches (numbering rows), refuses writes to the table "bad", and can hold a commit until released."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[str], bool]] = []
        self.next_id = 1
        self.gate = threading.Event()
        self.gate.set()
        self.holding = threading.Event()

    def commit(self, writes: Sequence[Write], durable: bool) -> None:
        if not self.gate.is_set():
            self.holding.set()
            assert self.gate.wait(DEADLINE)
        if any(write.table == "bad" for write in writes):
            raise RuntimeError("no such table: bad")
        for write in writes:
            if write.updates is not None:
                write.row_id = write.updates
            else:
                write.row_id, self.next_id = self.next_id, self.next_id + 1
        self.batches.append(([str(write.row[0]) for write in writes], durable))


@pytest.fixture
def database() -> Database:
    return Database()


@pytest.fixture
def writer(database: Database) -> Iterator[GroupCommit]:
    group = GroupCommit(database.commit, "test")
    yield group
    database.gate.set()
    group.close()


def write(name: str, table: str = "dispatches", durable: bool = True, after: Write | None = None) -> Write:
    return Write(table, ("name",), (name,), durable=durable, after=after)


def test_writes_queued_while_one_commits_share_the_next_commit(writer: GroupCommit, database: Database) -> None:
    database.gate.clear()
    first = writer.submit(write("first"))
    database.holding.wait(DEADLINE)  # the writer is inside the first commit (an fsync, say)
    rest = [writer.submit(write(f"w{i}")) for i in range(7)]
    wait_until(lambda: writer.pending == 7, DEADLINE, "seven queued writes")

    database.gate.set()

    assert all(w.wait(DEADLINE) for w in [first, *rest])
    assert database.batches == [(["first"], True), ([f"w{i}" for i in range(7)], True)]
    assert [w.row_id for w in [first, *rest]] == list(range(1, 9))


def test_writes_waiting_together_commit_once_from_many_threads(writer: GroupCommit, database: Database) -> None:
    database.gate.clear()
    writer.submit(write("hold"))
    database.holding.wait(DEADLINE)
    done: list[bool] = []

    def record(name: str) -> None:
        done.append(writer.submit(write(name)).wait(DEADLINE))

    threads = [threading.Thread(target=record, args=(f"t{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    wait_until(lambda: writer.pending == 8, DEADLINE, "eight queued writes")

    database.gate.set()
    for thread in threads:
        thread.join(DEADLINE)

    assert done == [True] * 8 and len(database.batches) == 2 and len(database.batches[1][0]) == 8


def test_a_failing_write_fails_alone_and_its_batch_is_written(writer: GroupCommit, database: Database) -> None:
    database.gate.clear()
    writer.submit(write("hold"))
    database.holding.wait(DEADLINE)
    good, bad, also_good = writer.submit(write("a")), writer.submit(write("b", "bad")), writer.submit(write("c"))
    wait_until(lambda: writer.pending == 3, DEADLINE, "three queued writes")

    database.gate.set()

    assert good.wait(DEADLINE) and bad.wait(DEADLINE) and also_good.wait(DEADLINE)
    assert good.error is None and also_good.error is None and good.row_id and also_good.row_id
    assert isinstance(bad.error, RuntimeError) and bad.row_id is None
    assert [names for names, _ in database.batches] == [["hold"], ["a"], ["c"]]


def test_a_batch_is_durable_when_any_of_its_writes_is(writer: GroupCommit, database: Database) -> None:
    database.gate.clear()
    writer.submit(write("hold", durable=False))
    database.holding.wait(DEADLINE)
    relaxed = [writer.submit(write(f"r{i}", durable=False)) for i in range(2)]
    wait_until(lambda: writer.pending == 2, DEADLINE, "two queued writes")
    database.gate.set()
    assert all(w.wait(DEADLINE) for w in relaxed)
    mixed = [writer.submit(write("late", durable=False)), writer.submit(write("durable"))]
    assert all(w.wait(DEADLINE) for w in mixed)

    assert [durable for _, durable in database.batches][:2] == [False, False]
    assert database.batches[-1][1] is True


def test_an_update_follows_its_insert_and_becomes_an_insert_when_that_failed(writer: GroupCommit) -> None:
    begun = writer.submit(write("begun"))
    outcome = writer.submit(write("outcome", durable=False, after=begun))
    assert outcome.wait(DEADLINE) and begun.row_id is not None and outcome.row_id == begun.row_id

    failed = writer.submit(write("begun", "bad"))
    fallback = writer.submit(write("outcome", after=failed))
    assert fallback.wait(DEADLINE) and failed.error is not None
    assert fallback.error is None and fallback.row_id not in (None, begun.row_id)


def test_flush_waits_for_every_write_queued_before_it(writer: GroupCommit, database: Database) -> None:
    database.gate.clear()
    writes = [writer.submit(write(f"w{i}", durable=False)) for i in range(3)]
    database.holding.wait(DEADLINE)
    assert not writer.flush(0.05)
    database.gate.set()

    assert writer.flush(DEADLINE)
    assert all(w.done.is_set() and w.error is None for w in writes)


def test_close_writes_what_is_queued_then_refuses(database: Database) -> None:
    writer = GroupCommit(database.commit, "test")
    queued = [writer.submit(write(f"w{i}")) for i in range(5)]

    writer.close()
    refused = writer.submit(write("late"))

    assert all(w.done.is_set() and w.error is None for w in queued)
    assert refused.done.is_set() and isinstance(refused.error, WriterClosed)


def test_a_callback_hears_of_each_write(writer: GroupCommit) -> None:
    heard: list[Write] = []
    ok = Write("dispatches", ("name",), ("a",), on_done=heard.append)
    bad = Write("bad", ("name",), ("b",), on_done=heard.append)
    writer.submit(ok)
    writer.submit(bad)

    assert writer.flush(DEADLINE)
    assert heard == [ok, bad] and ok.error is None and bad.error is not None


def test_a_relaxed_write_rides_with_the_next_durable_write(database: Database) -> None:
    writer = GroupCommit(database.commit, "test", linger=60.0)  # it would wait a minute for a durable write
    try:
        assert writer.submit(write("dispatch 1")).wait(DEADLINE)
        outcome = writer.submit(write("outcome 1", durable=False))
        following = writer.submit(write("dispatch 2"))

        assert following.wait(DEADLINE) and outcome.done.is_set()
        assert database.batches == [(["dispatch 1"], True), (["outcome 1", "dispatch 2"], True)]
    finally:
        writer.close()


def test_a_reader_has_lingering_relaxed_writes_written_at_once(database: Database) -> None:
    writer = GroupCommit(database.commit, "test", linger=60.0)
    try:
        outcome = writer.submit(write("outcome", durable=False))

        assert writer.flush(DEADLINE) and outcome.done.is_set() and outcome.error is None
        assert database.batches == [(["outcome"], False)]
    finally:
        writer.close()


def test_close_writes_lingering_relaxed_writes(database: Database) -> None:
    writer = GroupCommit(database.commit, "test", linger=60.0)
    assert writer.submit(write("dispatch")).wait(DEADLINE)
    outcome = writer.submit(write("outcome", durable=False))

    writer.close()

    assert outcome.done.is_set() and outcome.error is None and database.batches[-1] == (["outcome"], False)
