"""History in PostgreSQL, shared by several dashboard replicas (psycopg 3, imported here and in services/pg.py
only: the dashboard runs without it when no PostgreSQL is configured).

- Ordering: `seq`, an identity column, grows as the store learns of tasks (an upsert keeps a task's first one), so
  "newest first" walks the primary key backwards and each (column, seq) index gives a filtered page in order.
  Text columns searched by value or range (id, name, state, queue, worker) use the "C" collation: id prefixes and
  name globs seek by code point, whatever the database's default collation.
- Free text: `words`, a tsvector the store writes from model.search.words() (never PostgreSQL's parser), with a
  GIN index (postgres_text.py says how fields and prefixes are encoded).
- Who writes: `pg_try_advisory_lock` on a connection of its own, held open; the writer's writes go through that
  same connection, so a replica whose session died cannot write any more, and the lock is freed by PostgreSQL
  the moment the session ends (another replica takes over within the writer's ELECT_EVERY).
- Bounded: every connection has a connect timeout, TCP keepalives and a statement timeout; every failure is a
  HistoryUnavailable naming the database (credentials masked).
- Connections: a small pool of its own (readers from any thread); a broken one is closed, never reused.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Final

from ...model.search import TaskQuery, sort_order
from ...model.secrets import mask_text
from ...model.series import MinuteRow, QueueSample
from ...model.state import TaskView
from ...model.state.rows import COLUMNS, SEEN, row_view
from ..broker.urls import shown_url
from ..pg import MIGRATION_TIMEOUT_MS, Pool, connect, connect_url, migrate
from .postgres_text import DIALECT, row_tsvector
from .sqlite import _minute, _minute_row  # one encoding of a minute's histogram for both stores
from .store import (
    COUNT_CAP,
    PRUNE_BATCH,
    SELECT_COLUMNS,
    HistoryStore,
    HistoryUnavailable,
    SearchPage,
    StoreInfo,
    WriteBatch,
    WriterLock,
    order_of,
    where_of,
)

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

#: Past this many matches a page walks an index newest first instead of sorting the matches (as sqlite.py).
DENSE: Final = 2_000
LOCK_CHECK_EVERY: Final = 1.0  # seconds between the writer's checks that its session is alive
POOL_SIZE: Final = 8  # connections a process opens at most for reads (a request waits for one)
#: pg_try_advisory_lock keys: one for the writer, one around migrations ("dd-hist" / "dd-migr" as numbers).
WRITER_KEY: Final = 0x64642D68697374
MIGRATE_KEY: Final = 0x64642D6D696772

_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE tasks (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id text COLLATE "C" NOT NULL UNIQUE,
            name text COLLATE "C", state text COLLATE "C" NOT NULL, queue text COLLATE "C",
            worker text COLLATE "C",
            seen double precision NOT NULL, updated double precision NOT NULL, runtime double precision,
            retries integer NOT NULL DEFAULT 0,
            root_id text, parent_id text,
            args text, kwargs text, result text, exception text, traceback text,
            exchange text, routing_key text, eta text, expires text, not_registered integer NOT NULL DEFAULT 0,
            timeline text NOT NULL, details text,
            words tsvector NOT NULL DEFAULT ''::tsvector
        ) WITH (autovacuum_vacuum_scale_factor = 0.05, autovacuum_vacuum_insert_scale_factor = 0.05,
                autovacuum_analyze_scale_factor = 0.05)""",
        "CREATE INDEX tasks_name ON tasks (name, seq)",
        "CREATE INDEX tasks_state ON tasks (state, seq)",
        "CREATE INDEX tasks_queue ON tasks (queue, seq)",
        "CREATE INDEX tasks_worker ON tasks (worker, seq)",
        "CREATE INDEX tasks_seen ON tasks (seen)",
        "CREATE INDEX tasks_parent ON tasks (parent_id) WHERE parent_id IS NOT NULL",
        "CREATE INDEX tasks_words ON tasks USING gin (words)",
        """CREATE TABLE task_minutes (
            name text COLLATE "C" NOT NULL, queue text COLLATE "C" NOT NULL, minute integer NOT NULL,
            succeeded integer NOT NULL, failed integer NOT NULL, runtime_sum double precision NOT NULL,
            histogram text NOT NULL,
            PRIMARY KEY (name, queue, minute)
        )""",
        "CREATE INDEX task_minutes_minute ON task_minutes (minute)",
        """CREATE TABLE queue_samples (
            queue text COLLATE "C" NOT NULL, at double precision NOT NULL, depth integer, consumers integer NOT NULL,
            PRIMARY KEY (queue, at)
        )""",
        "CREATE INDEX queue_samples_at ON queue_samples (at)",
    ),
)
SCHEMA_VERSION: Final = len(_MIGRATIONS)
VERSION_TABLE: Final = "history_schema"

_WRITTEN: Final = (*COLUMNS, "words")
#: A group commit: the rows are copied (COPY, the fastest way in) into a temporary table of the session, then
#: upserted in one statement, in the order they came (new rows take their `seq` in first-sighting order).
_STAGING: Final = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS tasks_in (ord integer, id text, name text, state text, queue text, "
    "worker text, seen double precision, updated double precision, runtime double precision, retries integer, "
    "root_id text, parent_id text, args text, kwargs text, result text, exception text, traceback text, "
    "exchange text, routing_key text, eta text, expires text, not_registered integer, timeline text, "
    "details text, words tsvector) ON COMMIT DELETE ROWS"
)
_COPY: Final = f"COPY tasks_in (ord, {', '.join(_WRITTEN)}) FROM STDIN"
_UPSERT: Final = (
    f"INSERT INTO tasks ({', '.join(_WRITTEN)}) SELECT {', '.join(_WRITTEN)} FROM tasks_in ORDER BY ord "
    f"ON CONFLICT (id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in _WRITTEN[1:])}"
)
_UPSERT_MINUTE: Final = (
    "INSERT INTO task_minutes (name, queue, minute, succeeded, failed, runtime_sum, histogram) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (name, queue, minute) DO UPDATE SET "
    "succeeded = excluded.succeeded, failed = excluded.failed, runtime_sum = excluded.runtime_sum, "
    "histogram = excluded.histogram"
)
_UPSERT_SAMPLE: Final = (
    "INSERT INTO queue_samples (queue, at, depth, consumers) VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (queue, at) DO UPDATE SET depth = excluded.depth, consumers = excluded.consumers"
)


# -- the writer lock -----------------------------------------------------------------------------------------


class _AdvisoryLock(WriterLock):
    """pg_try_advisory_lock on a session of its own; writes go through that session while it is held."""

    def __init__(self, store: PostgresHistory) -> None:
        self.store = store
        self.conn: psycopg.Connection[Any] | None = None
        self._checked = 0.0
        self._guard = threading.Lock()

    def try_acquire(self) -> bool:
        import psycopg

        if self.conn is not None:
            return self.still_held()
        try:
            conn = connect(self.store.url, purpose="history writer")
        except psycopg.Error as exc:
            raise self.store.unavailable("cannot reach", exc) from None
        try:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (WRITER_KEY,)).fetchone()
        except psycopg.Error as exc:
            conn.close()
            raise self.store.unavailable("cannot ask for the writer lock on", exc) from None
        if not (row and row[0]):
            conn.close()
            return False
        self.conn = conn
        self._checked = time.monotonic()
        self.store._holding = self
        return True

    def still_held(self) -> bool:
        import psycopg

        conn = self.conn
        if conn is None or conn.closed:
            return False
        now = time.monotonic()
        if now - self._checked < LOCK_CHECK_EVERY:
            return True
        try:
            with self._guard:
                conn.execute("SELECT 1")  # a dead session answers at once (reset) or within the keepalive bound
        except psycopg.Error as exc:
            log.warning("history: the writer's session on %s is gone: %s", self.store.shown, mask_text(str(exc)))
            self.release()
            return False
        self._checked = now
        return True

    def release(self) -> None:
        conn, self.conn = self.conn, None
        if self.store._holding is self:
            self.store._holding = None
        if conn is not None:
            with contextlib.suppress(Exception):
                if not conn.closed:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (WRITER_KEY,))
            with contextlib.suppress(Exception):
                conn.close()  # ending the session frees the lock anyway

    @contextlib.contextmanager
    def session(self) -> Iterator[psycopg.Connection[Any]]:
        """The lock's own session, for the writer's writes (it dies with the lock)."""
        conn = self.conn
        if conn is None or conn.closed:
            import psycopg

            raise psycopg.OperationalError("the writer's session is closed")
        with self._guard:
            yield conn


# -- the store ---------------------------------------------------------------------------------------------------


class PostgresHistory(HistoryStore):
    """History in the PostgreSQL database at `url`."""

    kind = "postgresql"

    def __init__(self, url: str, *, pool_size: int = POOL_SIZE) -> None:
        self.url = connect_url(url)
        self.shown = shown_url(self.url)
        self._pool = Pool(self.url, pool_size)
        self._opened = False
        self._open_lock = threading.Lock()
        self._holding: _AdvisoryLock | None = None

    def unavailable(self, doing: str, exc: BaseException) -> HistoryUnavailable:
        """The error for a failure while `doing` something with the database (credentials masked)."""
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return HistoryUnavailable(mask_text(f"history: {doing} {self.shown}: {detail}"))

    @contextlib.contextmanager
    def _using(self, doing: str) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection, its errors translated."""
        import psycopg

        self.open()
        try:
            with self._pool.connection() as conn:
                yield conn
        except (psycopg.Error, TimeoutError) as exc:
            raise self.unavailable(doing, exc) from None

    @contextlib.contextmanager
    def _writing(self, doing: str, data_errors: bool = False) -> Iterator[psycopg.Connection[Any]]:
        """The writer lock's session when this store holds it, else a pooled connection; in one transaction.
        With `data_errors`, a psycopg.DataError (a value the database refuses) goes up as it is."""
        import psycopg

        self.open()
        holder = self._holding
        try:
            with contextlib.ExitStack() as stack:
                conn = stack.enter_context(holder.session() if holder is not None else self._pool.connection())
                with conn.transaction():
                    yield conn
        except psycopg.Error as exc:
            if data_errors and isinstance(exc, psycopg.DataError):
                raise
            raise self.unavailable(doing, exc) from None

    # -- schema --------------------------------------------------------------------------------------------------

    def open(self) -> None:
        if self._opened:
            return
        import psycopg

        with self._open_lock:
            if self._opened:
                return
            try:
                conn = connect(self.url, statement_timeout_ms=MIGRATION_TIMEOUT_MS, purpose="history migration")
            except psycopg.Error as exc:
                raise self.unavailable("cannot reach", exc) from None
            try:
                migrate(conn, _MIGRATIONS, VERSION_TABLE, MIGRATE_KEY, self.shown, "history")
            except psycopg.Error as exc:
                raise self.unavailable("cannot bring the schema up to date in", exc) from None
            finally:
                conn.close()
            self._opened = True

    def writer_lock(self) -> WriterLock:
        return _AdvisoryLock(self)

    # -- writing (the writer thread) -----------------------------------------------------------------------------

    def write(self, batch: WriteBatch) -> None:
        import psycopg

        # New rows take their place in first-sighting order; a task given twice is written once, as last given.
        latest = {row[0]: row for row in batch.tasks}
        tasks = sorted(latest.values(), key=itemgetter(SEEN))
        rows = [(*row, row_tsvector(row)) for row in tasks]
        try:
            self._write(rows, batch, strict=True)
        except (psycopg.DataError, UnicodeEncodeError):
            # A text PostgreSQL cannot hold (a NUL, a lone surrogate): write the batch with those escaped rather
            # than fail the same batch again and again.
            self._write([tuple(_text_safe(value) for value in row) for row in rows], batch)

    def _write(self, rows: list[tuple[Any, ...]], batch: WriteBatch, strict: bool = False) -> None:
        with self._writing("writing to", data_errors=strict) as conn, conn.cursor() as cursor:
            if rows:
                cursor.execute(_STAGING)
                with cursor.copy(_COPY) as copy:
                    for number, row in enumerate(rows):
                        copy.write_row((number, *row))
                cursor.execute(_UPSERT)
            if batch.minutes:
                cursor.executemany(_UPSERT_MINUTE, [_minute_row(row) for row in batch.minutes])
            if batch.samples:
                cursor.executemany(_UPSERT_SAMPLE, [(s.queue, s.at, s.depth, s.consumers) for s in batch.samples])

    def prune(self, older_than: float | None, keep: int | None) -> int:
        removed = 0
        try:
            if keep is not None:
                with self._writing("pruning") as conn:
                    row = conn.execute("SELECT seq FROM tasks ORDER BY seq DESC LIMIT 1 OFFSET %s",
                                       (keep,)).fetchone()
                if row is not None:
                    removed += self._in_batches("DELETE FROM tasks WHERE seq IN (SELECT seq FROM tasks "
                                                "WHERE seq <= %s ORDER BY seq LIMIT %s)", (row[0],))
            if older_than is not None:
                removed += self._in_batches("DELETE FROM tasks WHERE seq IN "
                                            "(SELECT seq FROM tasks WHERE seen < %s LIMIT %s)", (older_than,))
                with self._writing("pruning") as conn:
                    conn.execute("DELETE FROM task_minutes WHERE minute < %s", (int(older_than // 60),))
                    conn.execute("DELETE FROM queue_samples WHERE at < %s", (older_than,))
            with self._writing("analyzing") as conn:
                conn.execute("ANALYZE tasks")  # fresh statistics after a pass (autovacuum does the rest)
        except HistoryUnavailable as exc:
            raise HistoryUnavailable(f"{exc} (after pruning {removed} tasks)") from None
        return removed

    def _in_batches(self, sql: str, params: tuple[Any, ...]) -> int:
        """Run a DELETE ... LIMIT again and again, each batch its own transaction, until one deletes less than a
        batch; how many rows went."""
        removed = 0
        while True:
            with self._writing("pruning") as conn:
                count = conn.execute(sql, (*params, PRUNE_BATCH)).rowcount
            removed += max(count, 0)
            if count < PRUNE_BATCH:
                return removed

    # -- reading (any thread) ------------------------------------------------------------------------------------

    def search(self, query: TaskQuery, sort: str = "-seen", limit: int = 50, offset: int = 0) -> SearchPage:
        """The plan is chosen by what the query finds, not left to the planner's guess (its estimate of a
        word prefix is often far off, and a wrong guess walks the whole table for a word nobody wrote):
        - the matches are counted first through the indexes only (bitmap scans: the GIN index for words, the
          btree indexes for values), up to COUNT_CAP;
        - few (DENSE or less): the page reads them through the same indexes and sorts them;
        - many, newest first: the page walks an index in `seq` order (the primary key, or (column, seq) for an
          exact value) and stops after `limit` matches."""
        clauses, params = where_of(query, DIALECT)
        text = DIALECT.text_match(query)
        if text is not None:
            clauses.append(text[0])
            params += text[1]
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        order = order_of(sort, "tasks.seq")
        column, _descending = sort_order(sort)
        with self._using("searching") as conn, conn.transaction():
            # Counting: words through the GIN index (bitmaps); values through index-only scans, which stop at
            # the cap (autovacuum keeps the visibility map that they need fresh: see the table's settings).
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"
                         + ("" if not clauses else "; SET LOCAL enable_seqscan = off; SET LOCAL enable_indexscan = off"
                            + ("" if query.terms else "; SET LOCAL enable_bitmapscan = off")))
            # Counting millions of rows would cost more than the page: count up to the cap, and say "at least".
            counted_row = conn.execute(f"SELECT count(*) FROM (SELECT FROM tasks{where} LIMIT %s) AS matched",
                                       [*params, COUNT_CAP + 1]).fetchone()
            counted = int(counted_row[0]) if counted_row else 0
            by_id = any(flt.key == "id" and not flt.negated for flt in query.filters)
            if clauses and counted > DENSE and not by_id:
                conn.execute("SET LOCAL enable_indexscan = on; SET LOCAL enable_bitmapscan = off" if column == "seen"
                             else "SET LOCAL enable_indexscan = on; SET LOCAL enable_seqscan = on; "
                                  "SET LOCAL enable_bitmapscan = on")
                # newest first: walk in order, stop at the page's end; another order: the planner's choice
            elif clauses:
                # Few, or an id prefix: read them through the indexes and sort them. (Ids are no order in
                # production, uuid4, but may follow `seq` after an import, or in a benchmark: a walk newest first
                # would then skip all the newer tasks, and the planner cannot tell.)
                conn.execute("SET LOCAL enable_bitmapscan = on")
            rows = conn.execute(f"SELECT {SELECT_COLUMNS} FROM tasks{where} ORDER BY {order} "
                                "LIMIT %s OFFSET %s", [*params, limit, offset]).fetchall()
        tasks = [row_view(row) for row in rows]
        return SearchPage(tasks, max(min(counted, COUNT_CAP), offset + len(tasks)), counted > COUNT_CAP)

    def get(self, task_id: str) -> TaskView | None:
        with self._using("reading") as conn:
            row = conn.execute(f"SELECT {SELECT_COLUMNS} FROM tasks WHERE id = %s", (task_id,)).fetchone()
        return row_view(row) if row is not None else None

    def newest(self, limit: int, below: int | None = None) -> tuple[list[tuple[Any, ...]], int | None]:
        with self._using("reading") as conn:
            rows = conn.execute(
                f"SELECT seq, {SELECT_COLUMNS} FROM tasks WHERE seq < %s ORDER BY seq DESC LIMIT %s",
                (below if below is not None else 2**62, limit),
            ).fetchall()
        if not rows:
            return [], None
        return [tuple(row[1:]) for row in rows], int(rows[-1][0])

    def children(self, parent_id: str, limit: int = 200) -> list[TaskView]:
        with self._using("reading") as conn:
            rows = conn.execute(f"SELECT {SELECT_COLUMNS} FROM tasks WHERE parent_id = %s "
                                "ORDER BY seq LIMIT %s", (parent_id, limit)).fetchall()
        return [row_view(row) for row in rows]

    def minutes(self, since_minute: int, names: Sequence[str] = (), queues: Sequence[str] = ()) -> list[MinuteRow]:
        clauses: list[str] = ["minute >= %s"]
        params: list[Any] = [since_minute]
        for column, values in (("name", names), ("queue", queues)):
            if values:
                clauses.append(f"{column} = ANY(%s)")
                params.append(list(values))
        with self._using("reading") as conn:
            rows = conn.execute("SELECT name, queue, minute, succeeded, failed, runtime_sum, histogram "
                                f"FROM task_minutes WHERE {' AND '.join(clauses)}", params).fetchall()
        return [_minute(row) for row in rows]

    def samples(self, since: float, queues: Sequence[str] = ()) -> list[QueueSample]:
        sql = "SELECT queue, at, depth, consumers FROM queue_samples WHERE at >= %s"
        params: list[Any] = [since]
        if queues:
            sql += " AND queue = ANY(%s)"
            params.append(list(queues))
        with self._using("reading") as conn:
            rows = conn.execute(sql + " ORDER BY at", params).fetchall()
        return [QueueSample(at=float(at), queue=queue, depth=depth, consumers=int(consumers))
                for queue, at, depth, consumers in rows]

    def info(self) -> StoreInfo:
        with self._using("reading") as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM tasks), (SELECT count(*) FROM task_minutes), "
                "(SELECT count(*) FROM queue_samples), pg_total_relation_size('tasks') "
                "+ pg_total_relation_size('task_minutes') + pg_total_relation_size('queue_samples')"
            ).fetchone()
        assert row is not None
        return StoreInfo(int(row[0]), int(row[3]), int(row[1]), int(row[2]))

    def close(self) -> None:
        holder = self._holding
        if holder is not None:
            holder.release()
        self._pool.close()


def _text_safe(value: Any) -> Any:
    """A value PostgreSQL text can hold: NUL as the text \\x00, a lone surrogate as its backslash escape."""
    if not isinstance(value, str):
        return value
    if "\x00" in value:
        value = value.replace("\x00", "\\x00")
    try:
        value.encode()
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode()
    return value
