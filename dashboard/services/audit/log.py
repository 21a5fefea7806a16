"""The dispatch audit log: every attempt, sent or not, written durably to SQLite. No Flask here.

One connection per log, guarded by a lock (`check_same_thread=False`): SQLite serialises writers anyway, one
connection is one file handle however many server threads there are, and `close()` really closes it. Other
processes (gunicorn workers) open their own; WAL lets them read while one writes, and the busy timeout bounds
how long a write waits for another's lock.

Durability: WAL with `synchronous=FULL`. NORMAL survives a killed process but may lose the last commits on a
power cut or kernel crash; an audit log exists for the moment something went wrong, and one fsync per
dispatch is cheap next to the broker round trip that comes with it.

Recording never breaks a dispatch: a failed write is logged (without the arguments) and counted in
`write_errors`, and the dispatch goes on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, cast

from ...exceptions import DashboardError
from ...model.dispatch import OUTCOMES
from ...model.secrets import mask_text
from .entries import ActionEntry, ActionOutcome, AuditEntry, Outcome, Source, capped

log = logging.getLogger(__name__)

MEMORY: Final = ":memory:"  # a private in-memory database (tests)
MAX_QUERY_LIMIT: Final = 1000
MAX_DETAIL_CHARS: Final = 1024 * 1024  # an action's detail: a bulk action lists every task's outcome
BUSY_TIMEOUT: Final = 5.0  # seconds a write waits for another process's lock (fsyncs are slow under load)
PRUNE_BATCH: Final = 5_000  # rows deleted per statement, so that a large prune never holds the lock for long
PRUNE_EVERY: Final = 3600.0  # seconds between retention passes
DAY: Final = 86_400.0

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

_COLUMNS: Final = ("id", "at", "who", "source", "remote_addr", "name", "args", "kwargs", "options", "queue",
                   "forced", "outcome", "task_id", "error")
_INSERT: Final = f"INSERT INTO dispatches ({', '.join(_COLUMNS[1:])}) VALUES ({', '.join('?' * len(_COLUMNS[1:]))})"
_SELECT: Final = f"SELECT {', '.join(_COLUMNS)} FROM dispatches"
_ACTION_COLUMNS: Final = ("id", "at", "who", "source", "remote_addr", "action", "target", "detail", "outcome",
                          "error")
_INSERT_ACTION: Final = (f"INSERT INTO actions ({', '.join(_ACTION_COLUMNS[1:])}) "
                         f"VALUES ({', '.join('?' * len(_ACTION_COLUMNS[1:]))})")
_SELECT_ACTIONS: Final = f"SELECT {', '.join(_ACTION_COLUMNS)} FROM actions"


class AuditUnavailable(DashboardError):
    """The audit log cannot be opened or read (the message names the file and why)."""


def _optional(text: str | None) -> str | None:
    return None if text is None else capped(text)


def _row(entry: AuditEntry) -> tuple[Any, ...]:
    """The INSERT parameters: every text capped, whatever the caller put in."""
    return (
        float(entry.at),
        capped(entry.who),
        capped(entry.source),
        _optional(entry.remote_addr),
        capped(entry.name),
        capped(entry.args),
        capped(entry.kwargs),
        capped(entry.options),
        _optional(entry.queue),
        1 if entry.forced else 0,
        capped(entry.outcome),
        _optional(entry.task_id),
        _optional(entry.error),
    )


def _entry(row: tuple[Any, ...]) -> AuditEntry:
    (id_, at, who, source, remote_addr, name, args, kwargs, options, queue, forced, outcome, task_id, error) = row
    return AuditEntry(
        at=float(at), who=who, source=cast(Source, source), remote_addr=remote_addr, name=name, args=args,
        kwargs=kwargs, options=options, queue=queue, forced=bool(forced), outcome=cast(Outcome, outcome),
        task_id=task_id, error=error, id=int(id_),
    )


def _action_row(entry: ActionEntry) -> tuple[Any, ...]:
    return (float(entry.at), capped(entry.who), capped(entry.source), _optional(entry.remote_addr),
            capped(entry.action), capped(entry.target), capped(entry.detail, MAX_DETAIL_CHARS), capped(entry.outcome),
            _optional(entry.error))


def _action(row: tuple[Any, ...]) -> ActionEntry:
    id_, at, who, source, remote_addr, action, target, detail, outcome, error = row
    return ActionEntry(at=float(at), who=who, source=cast(Source, source), remote_addr=remote_addr, action=action,
                       target=target, detail=detail, outcome=cast(ActionOutcome, outcome), error=error,
                       id=int(id_))


class AuditLog:
    """The SQLite audit log at `path` (":memory:" for a private in-memory one); opened on first use."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._write_errors = 0

    @property
    def write_errors(self) -> int:
        """How many entries could not be written since this log was created."""
        return self._write_errors

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def record(self, entry: AuditEntry) -> int | None:
        """Write one entry and return its id; on failure log it, count it and return None (never raises)."""
        try:
            row = _row(entry)
            with self._lock:
                cursor = self._connection().execute(_INSERT, row)
                return cursor.lastrowid
        except (AuditUnavailable, sqlite3.Error, OSError) as exc:
            count = self._count_failure()
            log.error("audit: could not record the %s dispatch of %r at %.3f by %s (%d failed so far): %s",
                      entry.outcome, entry.name[:200], entry.at, entry.who[:200], count, mask_text(str(exc)))
        except Exception:  # a bug here must not fail the dispatch either; the traceback goes to the log
            count = self._count_failure()
            log.exception("audit: could not record the %s dispatch of %r (%d failed so far)",
                          entry.outcome, entry.name[:200], count)
        return None

    def record_action(self, entry: ActionEntry) -> int | None:
        """Write one operator action and return its id; on failure log it, count it and return None (never
        raises: the action already happened, or was refused, whatever the log can do)."""
        try:
            row = _action_row(entry)
            with self._lock:
                return self._connection().execute(_INSERT_ACTION, row).lastrowid
        except (AuditUnavailable, sqlite3.Error, OSError) as exc:
            count = self._count_failure()
            log.error("audit: could not record the action %s on %r (%s) by %s (%d failed so far): %s",
                      entry.action[:100], entry.target[:200], entry.outcome, entry.who[:200], count,
                      mask_text(str(exc)))
        except Exception:
            count = self._count_failure()
            log.exception("audit: could not record the action %s (%d failed so far)", entry.action[:100], count)
        return None

    def actions(
        self,
        action: str | None = None,
        target: str | None = None,
        who: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[ActionEntry], int]:
        """Operator actions matching every given filter (exact values; `action` may end in ".*" for a family,
        like "queue.*"), newest first, and their total. ValueError / AuditUnavailable as `query`."""
        if not 1 <= limit <= MAX_QUERY_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_QUERY_LIMIT}")
        if offset < 0:
            raise ValueError("offset must not be negative")
        clauses: list[str] = []
        params: list[Any] = []
        if action is not None and action.endswith(".*"):
            clauses.append("substr(action, 1, ?) = ?")
            params += [len(action) - 1, capped(action[:-1])]
        elif action is not None:
            clauses.append("action = ?")
            params.append(capped(action))
        for column, value in (("target", target), ("who", who)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(capped(value))
        if since is not None:
            clauses.append("at >= ?")
            params.append(float(since))
        if until is not None:
            clauses.append("at < ?")
            params.append(float(until))
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        try:
            with self._lock:
                conn = self._connection()
                conn.execute("BEGIN")
                try:
                    total = int(conn.execute(f"SELECT count(*) FROM actions{where}", params).fetchone()[0])
                    rows = conn.execute(f"{_SELECT_ACTIONS}{where} ORDER BY at DESC, id DESC LIMIT ? OFFSET ?",
                                        [*params, limit, offset]).fetchall()
                finally:
                    conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise AuditUnavailable(mask_text(f"the audit log {self.path} could not be read: {exc}")) from None
        return [_action(tuple(row)) for row in rows], total

    def actions_mentioning(self, actions: tuple[str, ...], text: str, limit: int = 100) -> list[ActionEntry]:
        """The newest of `actions` whose detail holds `text` (a task id, say), newest first. AuditUnavailable when
        the log cannot be read."""
        if not actions:
            return []
        marks = ", ".join("?" * len(actions))
        try:
            with self._lock:
                rows = self._connection().execute(
                    f"{_SELECT_ACTIONS} WHERE action IN ({marks}) AND instr(detail, ?) > 0 "
                    "ORDER BY at DESC, id DESC LIMIT ?", (*actions, text, limit),
                ).fetchall()
        except sqlite3.Error as exc:
            raise AuditUnavailable(mask_text(f"the audit log {self.path} could not be read: {exc}")) from None
        return [_action(tuple(row)) for row in rows]

    def count_failure(self) -> int:
        """Count an entry that never reached `record` (it could not be built); the new total."""
        return self._count_failure()

    def query(
        self,
        name: str | None = None,
        outcome: str | None = None,
        who: str | None = None,
        queue: str | None = None,
        task_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[AuditEntry], int]:
        """Entries matching every given filter (exact values; since <= at < until), newest first, and their total.

        Raises ValueError for an unknown outcome or a limit/offset out of range, AuditUnavailable when the log
        cannot be read.
        """
        if outcome is not None and outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}")
        if not 1 <= limit <= MAX_QUERY_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_QUERY_LIMIT}")
        if offset < 0:
            raise ValueError("offset must not be negative")
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("name", name), ("outcome", outcome), ("who", who), ("queue", queue),
                              ("task_id", task_id)):
            if value is not None:
                clauses.append(f"{column} = ?")  # column names are ours; values are always bound parameters
                params.append(capped(value))
        if since is not None:
            clauses.append("at >= ?")
            params.append(float(since))
        if until is not None:
            clauses.append("at < ?")
            params.append(float(until))
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        try:
            with self._lock:
                conn = self._connection()
                conn.execute("BEGIN")  # one read snapshot for the count and the page
                try:
                    total = int(conn.execute(f"SELECT count(*) FROM dispatches{where}", params).fetchone()[0])
                    rows = conn.execute(f"{_SELECT}{where} ORDER BY at DESC, id DESC LIMIT ? OFFSET ?",
                                        [*params, limit, offset]).fetchall()
                finally:
                    conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise AuditUnavailable(mask_text(f"the audit log {self.path} could not be read: {exc}")) from None
        return [_entry(tuple(row)) for row in rows], total

    def prune(self, older_than: float) -> int:
        """Delete the entries recorded before `older_than` (epoch seconds); how many went (never raises).

        In batches, each its own transaction: dispatches going on meanwhile wait for one batch at most.
        """
        removed = 0
        try:
            while True:
                with self._lock:
                    conn = self._connection()
                    cursor = conn.execute(
                        "DELETE FROM dispatches WHERE id IN (SELECT id FROM dispatches WHERE at < ? LIMIT ?)",
                        (float(older_than), PRUNE_BATCH),
                    )
                    acted = conn.execute(
                        "DELETE FROM actions WHERE id IN (SELECT id FROM actions WHERE at < ? LIMIT ?)",
                        (float(older_than), PRUNE_BATCH),
                    )
                removed += max(cursor.rowcount, 0) + max(acted.rowcount, 0)
                if cursor.rowcount < PRUNE_BATCH and acted.rowcount < PRUNE_BATCH:
                    break
        except (AuditUnavailable, sqlite3.Error, OSError) as exc:
            log.error("audit: pruning %s failed after %d entries: %s", self.path, removed, mask_text(str(exc)))
        if removed:
            log.info("audit: removed %d entries recorded before %s (retention)", removed,
                     datetime.fromtimestamp(older_than, UTC).isoformat(timespec="seconds"))
        return removed

    def close(self) -> None:
        """Close the connection (checkpointing the WAL); later writes are counted as failed, reads raise."""
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error as exc:
                log.warning("audit: closing %s: %s", self.path, exc)

    def _count_failure(self) -> int:
        with self._lock:
            self._write_errors += 1
            return self._write_errors

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
