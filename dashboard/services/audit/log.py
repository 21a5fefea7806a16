"""The SQLite audit log (the default; store.py has what every audit log does, postgres.py the shared one for
replicas): every attempt, sent or not, written durably. No Flask here.

One connection per log, guarded by a lock (`check_same_thread=False`): SQLite serialises writers anyway, one
connection is one file handle however many server threads there are, and `close()` really closes it. Other
processes (gunicorn workers) open their own; WAL lets them read while one writes, and the busy timeout bounds
how long a write waits for another's lock.

Durability: WAL with `synchronous=FULL`. NORMAL survives a killed process but may lose the last commits on a
power cut or kernel crash; an audit log exists for the moment something went wrong. Concurrent writes share one
commit (store.py's writer thread), and a dispatch's fsync runs while it is published. Only a dispatch's outcome,
written after its answer, is committed with NORMAL: the next FULL commit (or checkpoint) syncs it, and a power
cut before that leaves the entry's outcome "unknown", never a wrong one.

Recording never breaks a dispatch: a failed write is logged (without the arguments) and counted in
`write_errors`, and the dispatch goes on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from ...model.secrets import mask_text
from .store import (
    DAY,
    MAX_DETAIL_CHARS,
    MAX_QUERY_LIMIT,
    PRUNE_BATCH,
    PRUNE_EVERY,
    AuditStore,
    AuditUnavailable,
)
from .writer import Write

__all__ = ["BUSY_TIMEOUT", "DAY", "MAX_DETAIL_CHARS", "MAX_QUERY_LIMIT", "MEMORY", "PRUNE_BATCH", "PRUNE_EVERY",
           "SCHEMA_VERSION", "AuditLog", "AuditUnavailable"]

log = logging.getLogger(__name__)

MEMORY: Final = ":memory:"  # a private in-memory database (tests)
BUSY_TIMEOUT: Final = 5.0  # seconds a write waits for another process's lock (fsyncs are slow under load)

# Schema migrations: _MIGRATIONS[n] takes user_version n to n + 1. Append; never edit a released step.
_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE dispatches (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            who TEXT NOT NULL,
            source TEXT NOT NULL,
            remote_addr TEXT,
            name TEXT NOT NULL,
            args TEXT NOT NULL,
            kwargs TEXT NOT NULL,
            options TEXT NOT NULL,
            queue TEXT,
            forced INTEGER NOT NULL,
            outcome TEXT NOT NULL,
            task_id TEXT,
            error TEXT
        )""",
        # Each index ends in `at`, so a filtered page comes newest first straight from the index.
        "CREATE INDEX dispatches_at ON dispatches (at)",
        "CREATE INDEX dispatches_name_at ON dispatches (name, at)",
        "CREATE INDEX dispatches_outcome_at ON dispatches (outcome, at)",
        "CREATE INDEX dispatches_task_id ON dispatches (task_id) WHERE task_id IS NOT NULL",
    ),
    (
        """CREATE TABLE actions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            who TEXT NOT NULL,
            source TEXT NOT NULL,
            remote_addr TEXT,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            detail TEXT NOT NULL,
            outcome TEXT NOT NULL,
            error TEXT
        )""",
        "CREATE INDEX actions_at ON actions (at)",
        "CREATE INDEX actions_action_at ON actions (action, at)",
        "CREATE INDEX actions_target_at ON actions (target, at)",
    ),
)
SCHEMA_VERSION: Final = len(_MIGRATIONS)


class AuditLog(AuditStore):
    """The SQLite audit log at `path` (":memory:" for a private in-memory one); opened on first use."""

    errors = (sqlite3.Error,)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = os.fspath(path)
        self.shown = self.path
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    def __enter__(self) -> AuditLog:
        return self

    def _write_batch(self, writes: Sequence[Write], durable: bool) -> None:
        with self._lock:
            conn = self._connection()
            if not durable:
                conn.execute("PRAGMA synchronous=NORMAL")  # WAL: this commit is not synced; the next FULL one is
            try:
                conn.execute("BEGIN IMMEDIATE")  # the write lock now (waiting up to the busy timeout), not mid-way
                try:
                    for write in writes:
                        updates = write.updates
                        cursor = conn.execute(*self.statement(write))
                        write.row_id = updates if updates is not None else cursor.lastrowid
                    conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise
            finally:
                if not durable:
                    conn.execute("PRAGMA synchronous=FULL")

    def _page(self, table: str, columns: tuple[str, ...], where: str, params: list[Any], limit: int,
              offset: int) -> tuple[list[tuple[Any, ...]], int]:
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN")  # one read snapshot for the count and the page
            try:
                total = int(conn.execute(f"SELECT count(*) FROM {table}{where}", params).fetchone()[0])
                rows = conn.execute(f"SELECT {', '.join(columns)} FROM {table}{where} "
                                    "ORDER BY at DESC, id DESC LIMIT ? OFFSET ?", [*params, limit, offset]).fetchall()
            finally:
                conn.execute("COMMIT")
        return [tuple(row) for row in rows], total

    def _select(self, table: str, columns: tuple[str, ...], where: str, params: list[Any],
                limit: int) -> list[tuple[Any, ...]]:
        with self._lock:
            rows = self._connection().execute(f"SELECT {', '.join(columns)} FROM {table}{where} "
                                              "ORDER BY at DESC, id DESC LIMIT ?", [*params, limit]).fetchall()
        return [tuple(row) for row in rows]

    def _delete_batch(self, table: str, older_than: float, batch: int) -> int:
        with self._lock:
            cursor = self._connection().execute(
                f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE at < ? LIMIT ?)", (older_than, batch))
        return max(cursor.rowcount, 0)

    def close(self) -> None:
        """Write what is queued, close the connection (checkpointing the WAL); later writes are counted as failed,
        reads raise."""
        self._stop_writing()
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error as exc:
                log.warning("audit: closing %s: %s", self.path, exc)

    def _connection(self) -> sqlite3.Connection:
        """The open connection (the caller holds the lock); opened, and the schema brought up to date, once."""
        if self._closed:
            raise AuditUnavailable(f"the audit log {self.path} is closed")
        if self._conn is None:
            self._conn = self._open()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        # Two processes opening one new file at once: switching to WAL (and the first read of the WAL index)
        # may answer "database is locked" at once, without waiting on the busy handler. Try again, within
        # the same bound a write has.
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            try:
                return self._open_once()
            except _Busy as busy:
                if time.monotonic() >= deadline:
                    raise AuditUnavailable(
                        mask_text(f"the audit log {self.path} could not be opened: {busy.__cause__}")
                    ) from None
                time.sleep(0.01)

    def _open_once(self) -> sqlite3.Connection:
        try:
            if self.path != MEMORY:
                _create_private(Path(self.path))
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise AuditUnavailable(mask_text(f"the audit log {self.path} could not be opened: {exc}")) from None
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal" and self.path != MEMORY:
                log.warning("audit: %s runs in journal mode %s, not WAL (a file system without shared memory?)",
                            self.path, mode)
            conn.execute("PRAGMA synchronous=FULL")
            _migrate(conn, self.path)
        except (sqlite3.Error, AuditUnavailable) as exc:
            conn.close()
            if isinstance(exc, AuditUnavailable):
                raise
            if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
                raise _Busy from exc
            raise AuditUnavailable(mask_text(f"the audit log {self.path} could not be opened: {exc}")) from None
        return conn


class _Busy(Exception):
    """Opening found the file locked by another connection (retried by AuditLog._open)."""


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)  # primary result code


def _create_private(path: Path) -> None:
    """Create the parent directories and an empty file readable by its owner only: the log holds task arguments.

    SQLite gives the -wal and -shm files the mode of the database file.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists():
        return
    with contextlib.suppress(FileExistsError):  # another process created it first
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    """Bring the schema to SCHEMA_VERSION (PRAGMA user_version), once, even with several processes starting."""
    if _user_version(conn) == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")  # take the write lock, then look again: another process may have done it
    try:
        version = _user_version(conn)
        if version > SCHEMA_VERSION:
            raise AuditUnavailable(f"the audit log {path} has schema version {version}, written by a newer "
                                   f"dispatch-dashboard (this one knows up to {SCHEMA_VERSION})")
        for step in range(version, SCHEMA_VERSION):
            for statement in _MIGRATIONS[step]:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    if version < SCHEMA_VERSION:
        log.info("audit: %s at schema version %d", path, SCHEMA_VERSION)


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])
