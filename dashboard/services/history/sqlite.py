"""The embedded history store: one SQLite file (WAL) in the state directory, nothing to install.

- Ordering: `seq` (the rowid) grows as the store learns of tasks, so "newest first" walks the primary key
  backwards, and each filter column's index (which ends in the rowid) gives a filtered page in order too.
- Free text: an FTS5 index over the five text fields (external content: the text is stored once, in `tasks`),
  kept in step by triggers; the unicode61 tokenizer splits words as model.search.words does.
- Durability: WAL with synchronous=NORMAL. History is rebuilt from events and the result backend; losing the
  last commits on a power cut costs less than an fsync per group commit would.
- Who writes: an exclusive `flock` on `<file>.writer`: one process of the host holds it (gunicorn's workers
  each run a listener; the others read). The kernel drops it when the holder dies.
- Readers: one connection per thread (WAL: readers never wait for the writer).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any, Final

from ...model.search import TaskQuery, glob_to_sqlite, sort_order
from ...model.series import MinuteRow, QueueSample
from ...model.state import TaskView
from ...model.state.rows import COLUMNS, SEEN, TEXT_COLUMNS, row_view
from .store import (
    COUNT_CAP,
    PRUNE_BATCH,
    SELECT_COLUMNS,
    Dialect,
    HistoryStore,
    HistoryUnavailable,
    SearchPage,
    StoreInfo,
    WriteBatch,
    WriterLock,
    order_of,
    where_of,
)

log = logging.getLogger(__name__)

BUSY_TIMEOUT: Final = 5.0
#: Past this many matches a filtered page walks the table newest first instead of sorting the matches.
DENSE: Final = 2_000
#: The most rows such a walk reads before it gives up and reads the matches through their index instead.
WALK_BUDGET: Final = 50_000
_TEXT: Final = TEXT_COLUMNS
_FTS_VALUES: Final = ", ".join(f"new.{column}" for column in _TEXT)
_FTS_OLD: Final = ", ".join(f"old.{column}" for column in _TEXT)
_CHANGED: Final = " OR ".join(f"old.{column} IS NOT new.{column}" for column in _TEXT)

_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE tasks (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            name TEXT, state TEXT NOT NULL, queue TEXT, worker TEXT,
            seen REAL NOT NULL, updated REAL NOT NULL, runtime REAL, retries INTEGER NOT NULL DEFAULT 0,
            root_id TEXT, parent_id TEXT,
            args TEXT, kwargs TEXT, result TEXT, exception TEXT, traceback TEXT,
            exchange TEXT, routing_key TEXT, eta TEXT, expires TEXT, not_registered INTEGER NOT NULL DEFAULT 0,
            timeline TEXT NOT NULL, details TEXT
        )""",
        "CREATE INDEX tasks_name ON tasks (name)",
        "CREATE INDEX tasks_state ON tasks (state)",
        "CREATE INDEX tasks_queue ON tasks (queue)",
        "CREATE INDEX tasks_worker ON tasks (worker)",
        "CREATE INDEX tasks_seen ON tasks (seen)",
        "CREATE INDEX tasks_parent ON tasks (parent_id) WHERE parent_id IS NOT NULL",
        f"""CREATE VIRTUAL TABLE tasks_fts USING fts5({', '.join(_TEXT)}, content='tasks', content_rowid='seq',
            tokenize='unicode61 remove_diacritics 2')""",
        f"""CREATE TRIGGER tasks_fts_insert AFTER INSERT ON tasks BEGIN
            INSERT INTO tasks_fts (rowid, {', '.join(_TEXT)}) VALUES (new.seq, {_FTS_VALUES}); END""",
        f"""CREATE TRIGGER tasks_fts_delete AFTER DELETE ON tasks BEGIN
            INSERT INTO tasks_fts (tasks_fts, rowid, {', '.join(_TEXT)}) VALUES ('delete', old.seq, {_FTS_OLD});
            END""",
        f"""CREATE TRIGGER tasks_fts_update AFTER UPDATE ON tasks WHEN {_CHANGED} BEGIN
            INSERT INTO tasks_fts (tasks_fts, rowid, {', '.join(_TEXT)}) VALUES ('delete', old.seq, {_FTS_OLD});
            INSERT INTO tasks_fts (rowid, {', '.join(_TEXT)}) VALUES (new.seq, {_FTS_VALUES}); END""",
        """CREATE TABLE task_minutes (
            name TEXT NOT NULL, queue TEXT NOT NULL, minute INTEGER NOT NULL,
            succeeded INTEGER NOT NULL, failed INTEGER NOT NULL, runtime_sum REAL NOT NULL, histogram TEXT NOT NULL,
            PRIMARY KEY (name, queue, minute)
        ) WITHOUT ROWID""",
        "CREATE INDEX task_minutes_minute ON task_minutes (minute)",
        """CREATE TABLE queue_samples (
            queue TEXT NOT NULL, at REAL NOT NULL, depth INTEGER, consumers INTEGER NOT NULL,
            PRIMARY KEY (queue, at)
        ) WITHOUT ROWID""",
        "CREATE INDEX queue_samples_at ON queue_samples (at)",
    ),
)
SCHEMA_VERSION: Final = len(_MIGRATIONS)

_UPSERT: Final = (
    f"INSERT INTO tasks ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
    f"ON CONFLICT (id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in COLUMNS[1:])}"
)
_UPSERT_MINUTE: Final = (
    "INSERT OR REPLACE INTO task_minutes (name, queue, minute, succeeded, failed, runtime_sum, histogram) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_SAMPLE: Final = "INSERT OR REPLACE INTO queue_samples (queue, at, depth, consumers) VALUES (?, ?, ?, ?)"


class _SqliteDialect(Dialect):
    param = "?"

    def glob(self, column: str, pattern: str) -> tuple[str, list[Any]]:
        return f"{column} GLOB ?", [glob_to_sqlite(pattern)]


def _fts_term(words: Sequence[str], column: str | None) -> str:
    """FTS5 syntax for words that must all start words of `column` (or of any column)."""
    phrase = " AND ".join(f'"{word}"*' for word in words)  # words are letters and digits only: nothing to escape
    return f"({column} : ({phrase}))" if column else f"({phrase})"


DIALECT: Final = _SqliteDialect()


class _FileLock(WriterLock):
    """An exclusive flock on a file next to the database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise HistoryUnavailable(f"history: cannot open the writer lock {self.path}: {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def still_held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the descriptor drops the flock


class SqliteHistory(HistoryStore):
    """History in the SQLite file at `path`."""

    kind = "sqlite"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.shown = str(self.path)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        self._opened = False

    # -- connections --------------------------------------------------------------------------------------

    def open(self) -> None:
        if self._opened:
            return
        self._connection()
        self._opened = True

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._closed:
            raise HistoryUnavailable(f"history: {self.path} is closed")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.path.exists():
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise HistoryUnavailable(f"history: cannot open {self.path}: {exc}") from None
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            _migrate(conn, self.path)
        except sqlite3.Error as exc:
            conn.close()
            raise HistoryUnavailable(f"history: cannot open {self.path}: {exc}") from None
        with self._lock:
            self._connections.append(conn)
        self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A connection for this thread, its errors translated."""
        try:
            yield self._connection()
        except sqlite3.Error as exc:
            raise HistoryUnavailable(f"history: reading {self.path} failed: {exc}") from None

    def writer_lock(self) -> WriterLock:
        return _FileLock(self.path.with_name(self.path.name + ".writer"))

    # -- writing (the writer thread) ----------------------------------------------------------------------

    def write(self, batch: WriteBatch) -> None:
        tasks = sorted(batch.tasks, key=itemgetter(SEEN))  # new rows take their place in first-sighting order
        try:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                if tasks:
                    conn.executemany(_UPSERT, tasks)
                if batch.minutes:
                    conn.executemany(_UPSERT_MINUTE, [_minute_row(row) for row in batch.minutes])
                if batch.samples:
                    conn.executemany(_INSERT_SAMPLE, [(s.queue, s.at, s.depth, s.consumers)
                                                      for s in batch.samples])
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise HistoryUnavailable(f"history: writing to {self.path} failed: {exc}") from None

    def prune(self, older_than: float | None, keep: int | None) -> int:
        removed = 0
        try:
            conn = self._connection()
            if keep is not None:
                row = conn.execute("SELECT seq FROM tasks ORDER BY seq DESC LIMIT 1 OFFSET ?", (keep,)).fetchone()
                if row is not None:
                    removed += _in_batches(conn, "DELETE FROM tasks WHERE seq IN "
                                                 "(SELECT seq FROM tasks WHERE seq <= ? ORDER BY seq LIMIT ?)",
                                           (row[0],))
            if older_than is not None:
                removed += _in_batches(conn, "DELETE FROM tasks WHERE seq IN "
                                             "(SELECT seq FROM tasks WHERE seen < ? ORDER BY seq LIMIT ?)",
                                       (older_than,))
                # Buckets and samples are few (one per name, queue and minute; one per queue and inspection).
                conn.execute("DELETE FROM task_minutes WHERE minute < ?", (int(older_than // 60),))
                conn.execute("DELETE FROM queue_samples WHERE at < ?", (older_than,))
            # Fresh statistics for the planner (bounded work: analysis_limit samples each index).
            conn.execute("PRAGMA analysis_limit = 1000")
            conn.execute("ANALYZE")
        except sqlite3.Error as exc:
            raise HistoryUnavailable(f"history: pruning {self.path} failed after {removed} tasks: {exc}") from None
        return removed

    # -- reading (any thread) -----------------------------------------------------------------------------

    def search(self, query: TaskQuery, sort: str = "-seen", limit: int = 50, offset: int = 0) -> SearchPage:
        """The plan is chosen by what the query holds, not left to the planner's guess:
        - free text: the FTS5 index drives, newest first (its rowid is `seq`), so a page stops after `limit`
          matches however common the word;
        - filters: the matches are counted first through their indexes (up to COUNT_CAP); when they are many,
          the page walks the table newest first and stops at `limit` (a glob over many names would otherwise
          sort all its matches), when they are few it reads them through the index and sorts them."""
        clauses, params = where_of(query, DIALECT)
        for term in query.terms:
            if term.negated:
                clauses.append("tasks.seq NOT IN (SELECT rowid FROM tasks_fts WHERE tasks_fts MATCH ?)")
                params.append(_fts_term(term.words, term.field))
        positive = [term for term in query.terms if not term.negated]
        match = " AND ".join(_fts_term(term.words, term.field) for term in positive) if positive else None
        column, descending = sort_order(sort)
        with self._reading() as conn:
            conn.execute("BEGIN")  # one read snapshot for the count and the page
            try:
                if match is not None:
                    source = "tasks_fts JOIN tasks ON tasks.seq = tasks_fts.rowid"
                    where = " AND ".join(["tasks_fts MATCH ?", *clauses])
                    where_params = [match, *params]
                    order = (f"tasks_fts.rowid {'DESC' if descending else 'ASC'}" if column == "seen"
                             else order_of(sort, "tasks.seq"))
                else:
                    source, where_params = _driving(conn, query), params
                    where = " AND ".join(clauses) or "1"
                    order = order_of(sort, "tasks.seq")
                # Free text alone is counted in the FTS index only (no row lookups).
                count_source = "tasks_fts" if match is not None and not clauses else source
                counted = int(conn.execute(f"SELECT count(*) FROM (SELECT 1 FROM {count_source} WHERE {where} "
                                           "LIMIT ?)", [*where_params, COUNT_CAP + 1]).fetchone()[0])
                rows = None
                if match is None and column == "seen" and clauses and counted > DENSE:
                    # Many matches: newest first straight from the table, within a budget of rows (matches that
                    # are many but all old, an id prefix say, would make the walk a scan of everything).
                    end = conn.execute(f"SELECT {'max' if descending else 'min'}(seq) FROM tasks").fetchone()[0]
                    bound = f"tasks.seq {'>' if descending else '<'} ?"
                    walked = conn.execute(
                        f"SELECT {SELECT_COLUMNS} FROM tasks NOT INDEXED WHERE {bound} AND {where} ORDER BY {order} "
                        "LIMIT ? OFFSET ?",
                        [(end or 0) - WALK_BUDGET if descending else (end or 0) + WALK_BUDGET, *where_params, limit,
                         offset]).fetchall()
                    if len(walked) == limit:
                        rows = walked
                if rows is None:
                    rows = conn.execute(f"SELECT {SELECT_COLUMNS} FROM {source} WHERE {where} ORDER BY {order} "
                                        "LIMIT ? OFFSET ?", [*where_params, limit, offset]).fetchall()
            finally:
                conn.execute("COMMIT")
        tasks = [row_view(row) for row in rows]
        total, capped = min(counted, COUNT_CAP), counted > COUNT_CAP
        return SearchPage(tasks, max(total, offset + len(tasks)), capped)

    def get(self, task_id: str) -> TaskView | None:
        with self._reading() as conn:
            row = conn.execute(f"SELECT {SELECT_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return row_view(row) if row is not None else None

    def newest(self, limit: int, below: int | None = None) -> tuple[list[tuple[Any, ...]], int | None]:
        with self._reading() as conn:
            rows = conn.execute(
                f"SELECT seq, {SELECT_COLUMNS} FROM tasks WHERE seq < ? ORDER BY seq DESC LIMIT ?",
                (below if below is not None else 2**62, limit),
            ).fetchall()
        if not rows:
            return [], None
        return [tuple(row[1:]) for row in rows], int(rows[-1][0])

    def children(self, parent_id: str, limit: int = 200) -> list[TaskView]:
        with self._reading() as conn:
            rows = conn.execute(f"SELECT {SELECT_COLUMNS} FROM tasks WHERE parent_id = ? ORDER BY seq LIMIT ?",
                                (parent_id, limit)).fetchall()
        return [row_view(row) for row in rows]

    def minutes(self, since_minute: int, names: Sequence[str] = (), queues: Sequence[str] = ()) -> list[MinuteRow]:
        clauses: list[str] = ["minute >= ?"]
        params: list[Any] = [since_minute]
        for column, values in (("name", names), ("queue", queues)):
            if values:
                clauses.append(f"{column} IN ({', '.join('?' * len(values))})")
                params += list(values)
        with self._reading() as conn:
            rows = conn.execute("SELECT name, queue, minute, succeeded, failed, runtime_sum, histogram "
                                f"FROM task_minutes WHERE {' AND '.join(clauses)}", params).fetchall()
        return [_minute(row) for row in rows]

    def samples(self, since: float, queues: Sequence[str] = ()) -> list[QueueSample]:
        sql = "SELECT queue, at, depth, consumers FROM queue_samples WHERE at >= ?"
        params: list[Any] = [since]
        if queues:
            sql += f" AND queue IN ({', '.join('?' * len(queues))})"
            params += list(queues)
        with self._reading() as conn:
            rows = conn.execute(sql + " ORDER BY at", params).fetchall()
        return [QueueSample(at=float(at), queue=queue, depth=depth, consumers=int(consumers))
                for queue, at, depth, consumers in rows]

    def info(self) -> StoreInfo:
        with self._reading() as conn:
            tasks = int(conn.execute("SELECT count(*) FROM tasks").fetchone()[0])
            minutes = int(conn.execute("SELECT count(*) FROM task_minutes").fetchone()[0])
            samples = int(conn.execute("SELECT count(*) FROM queue_samples").fetchone()[0])
        size = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                size += (self.path.with_name(self.path.name + suffix)).stat().st_size
        return StoreInfo(tasks, size, minutes, samples)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            with contextlib.suppress(sqlite3.Error):
                conn.close()


#: The index each kind of filter can drive a search through.
_INDEXES: Final = {"name": "tasks_name", "state": "tasks_state", "queue": "tasks_queue", "worker": "tasks_worker",
                   "id": "sqlite_autoindex_tasks_1"}


def _driving(conn: sqlite3.Connection, query: TaskQuery) -> str:
    """`tasks INDEXED BY` the index of the most selective constraint, when there are several to choose from.

    SQLite's planner cannot know how many rows a range (since:, a glob) holds, and its statistics say little
    about skewed values (a rare state); a capped count through each candidate index costs a few index entries
    and tells."""
    candidates: list[tuple[str, TaskQuery]] = [
        (_INDEXES[flt.key], TaskQuery(filters=(flt,))) for flt in query.filters if not flt.negated]
    if query.since is not None or query.until is not None:
        candidates.append(("tasks_seen", TaskQuery(since=query.since, until=query.until)))
    if len(candidates) < 2:
        return "tasks"
    best, fewest = "tasks", COUNT_CAP + 2
    for index, part in candidates:
        clauses, params = where_of(part, DIALECT)
        count = int(conn.execute(f"SELECT count(*) FROM (SELECT 1 FROM tasks INDEXED BY {index} "
                                 f"WHERE {' AND '.join(clauses)} LIMIT ?)", [*params, COUNT_CAP + 1]).fetchone()[0])
        if count < fewest:
            best, fewest = index, count
    return f"tasks INDEXED BY {best}" if best != "tasks" else best


def _in_batches(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> int:
    """Run a DELETE ... LIMIT ? again and again until it deletes less than a batch; how many rows went."""
    removed = 0
    while True:
        count = conn.execute(sql, (*params, PRUNE_BATCH)).rowcount
        removed += max(count, 0)
        if count < PRUNE_BATCH:
            return removed


def _minute_row(row: MinuteRow) -> tuple[Any, ...]:
    return (row.name, row.queue, row.minute, row.succeeded, row.failed, row.runtime_sum,
            json.dumps(row.histogram, separators=(",", ":")))


def _minute(raw: Sequence[Any]) -> MinuteRow:
    name, queue, minute, succeeded, failed, runtime_sum, histogram = raw
    buckets = {int(bucket): int(count) for bucket, count in json.loads(histogram).items()}
    return MinuteRow(int(minute), name, queue, int(succeeded), int(failed), float(runtime_sum), buckets)


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise sqlite3.OperationalError(f"schema version {version} is newer than this dashboard's "
                                           f"({SCHEMA_VERSION})")
        for step in range(version, SCHEMA_VERSION):
            for statement in _MIGRATIONS[step]:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    log.info("history: %s at schema version %d", path, SCHEMA_VERSION)
