"""The audit log in PostgreSQL: one log shared by every replica (the tables and the behaviour of the SQLite one;
store.py has the behaviour). No Flask here; psycopg is imported on first use only.

Durability: entries are committed (PostgreSQL's synchronous_commit, on by default) before `record` returns,
concurrent ones in one transaction (store.py's writer thread), so an accepted dispatch is in the log before its
202; only its outcome, written after the answer, is committed with synchronous_commit off (a server crash before
the WAL reaches the disk leaves the outcome "unknown"). Every statement is bounded
(services/pg.py); a failure is logged and counted, never raised into the dispatch.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

from ...model.secrets import mask_text
from ..broker.urls import shown_url
from ..pg import MIGRATION_TIMEOUT_MS, Pool, connect, connect_url, migrate
from .store import AuditStore, AuditUnavailable
from .writer import Write

if TYPE_CHECKING:
    import psycopg

POOL_SIZE: Final = 4
MIGRATE_KEY: Final = 0x64642D61756474  # "dd-audt": the advisory lock around this schema's migrations
VERSION_TABLE: Final = "audit_schema"
_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE dispatches (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at double precision NOT NULL,
            who text NOT NULL,
            source text NOT NULL,
            remote_addr text,
            name text NOT NULL,
            args text NOT NULL,
            kwargs text NOT NULL,
            options text NOT NULL,
            queue text,
            forced integer NOT NULL,
            outcome text NOT NULL,
            task_id text,
            error text
        )""",
        "CREATE INDEX dispatches_at ON dispatches (at, id)",
        "CREATE INDEX dispatches_name_at ON dispatches (name, at)",
        "CREATE INDEX dispatches_outcome_at ON dispatches (outcome, at)",
        "CREATE INDEX dispatches_task_id ON dispatches (task_id) WHERE task_id IS NOT NULL",
        """CREATE TABLE actions (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at double precision NOT NULL,
            who text NOT NULL,
            source text NOT NULL,
            remote_addr text,
            action text NOT NULL,
            target text NOT NULL,
            detail text NOT NULL,
            outcome text NOT NULL,
            error text
        )""",
        "CREATE INDEX actions_at ON actions (at, id)",
        "CREATE INDEX actions_action_at ON actions (action, at)",
        "CREATE INDEX actions_target_at ON actions (target, at)",
    ),
)
SCHEMA_VERSION: Final = len(_MIGRATIONS)


def _driver_errors() -> tuple[type[BaseException], ...]:
    import psycopg

    return (psycopg.Error, TimeoutError, UnicodeEncodeError)


class PostgresAuditLog(AuditStore):
    """The audit log in the PostgreSQL database at `url`; connected on first use."""

    param = "%s"
    returning = " RETURNING id"
    contains = "strpos({column}, %s) > 0"

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = connect_url(url)
        self.shown = shown_url(self.url)
        self.errors = _driver_errors()
        self._pool = Pool(self.url, POOL_SIZE, purpose="audit")
        self._opened = False
        self._open_lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> PostgresAuditLog:
        return self

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        if self._closed:
            raise AuditUnavailable(f"the audit log {self.shown} is closed")
        self._open()
        with self._pool.connection() as conn:
            yield conn

    def _open(self) -> None:
        if self._opened:
            return
        import psycopg

        with self._open_lock:
            if self._opened:
                return
            try:
                conn = connect(self.url, statement_timeout_ms=MIGRATION_TIMEOUT_MS, purpose="audit migration")
            except psycopg.Error as exc:
                raise AuditUnavailable(mask_text(f"the audit log {self.shown} could not be opened: {exc}")) from None
            try:
                migrate(conn, _MIGRATIONS, VERSION_TABLE, MIGRATE_KEY, self.shown, "audit")
            except psycopg.Error as exc:
                raise AuditUnavailable(mask_text(f"the audit log {self.shown} could not be opened: {exc}")) from None
            finally:
                conn.close()
            self._opened = True

    def _write_batch(self, writes: Sequence[Write], durable: bool) -> None:
        with self._connection() as conn, conn.transaction():
            if not durable:
                conn.execute("SET LOCAL synchronous_commit = off")  # a dispatch's outcome, written after its answer
            for write in writes:
                updates = write.updates
                sql, params = self.statement(write)
                cursor = conn.execute(sql, _text_safe(params))
                if updates is not None:
                    write.row_id = updates
                else:
                    found = cursor.fetchone()
                    write.row_id = int(found[0]) if found else None

    def _page(self, table: str, columns: tuple[str, ...], where: str, params: list[Any], limit: int,
              offset: int) -> tuple[list[tuple[Any, ...]], int]:
        with self._connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")  # one snapshot for both
            counted = conn.execute(f"SELECT count(*) FROM {table}{where}", params).fetchone()
            rows = conn.execute(f"SELECT {', '.join(columns)} FROM {table}{where} "
                                "ORDER BY at DESC, id DESC LIMIT %s OFFSET %s", [*params, limit, offset]).fetchall()
        return [tuple(row) for row in rows], int(counted[0]) if counted else 0

    def _select(self, table: str, columns: tuple[str, ...], where: str, params: list[Any],
                limit: int) -> list[tuple[Any, ...]]:
        with self._connection() as conn:
            rows = conn.execute(f"SELECT {', '.join(columns)} FROM {table}{where} ORDER BY at DESC, id DESC LIMIT %s",
                                [*params, limit]).fetchall()
        return [tuple(row) for row in rows]

    def _delete_batch(self, table: str, older_than: float, batch: int) -> int:
        with self._connection() as conn:
            cursor = conn.execute(f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE at < %s LIMIT %s)",
                                  (older_than, batch))
        return max(cursor.rowcount, 0)

    def close(self) -> None:
        self._stop_writing()
        self._closed = True
        self._pool.close()


def _text_safe(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """PostgreSQL text holds no NUL character and no lone surrogate (SQLite keeps both): NUL becomes the text \\x00
    and a lone surrogate its backslash escape, so that such an entry is still recorded."""
    return tuple(_clean(value) if isinstance(value, str) else value for value in row)


def _clean(text: str) -> str:
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text
