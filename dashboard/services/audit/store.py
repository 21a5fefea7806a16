"""What every audit log does whatever its database (SQLite in log.py, PostgreSQL in postgres.py): record without
ever failing the caller (failures logged and counted), through one writer thread that commits concurrent writes
together (writer.py); read pages with validated filters; prune in batches. Each database supplies how to write a
batch in one transaction, read one page with its total, and delete one batch.

A dispatch is written in two steps so that its durable write overlaps its publish: `begin` queues the attempt
with the outcome "unknown" and the task id it is about to be published with (durable), `finish` waits for that
commit and then queues the outcome (relaxed: its answer does not wait for a second fsync). A process that stops
in between leaves "unknown", which is the truth."""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final, cast

from ...exceptions import DashboardError
from ...model.dispatch import AUDIT_OUTCOMES
from ...model.secrets import mask_text
from .entries import ActionEntry, ActionOutcome, AuditEntry, Outcome, Source, capped
from .writer import GroupCommit, Write, WriterClosed

log = logging.getLogger(__name__)

MAX_QUERY_LIMIT: Final = 1000
MAX_DETAIL_CHARS: Final = 1024 * 1024  # an action's detail: a bulk action lists every task's outcome
PRUNE_BATCH: Final = 5_000  # rows deleted per statement, so that a large prune never holds the lock for long
PRUNE_EVERY: Final = 3600.0  # seconds between retention passes
DAY: Final = 86_400.0
WRITE_WAIT: Final = 6.0  # seconds a caller waits for its durable write (SQLite's busy timeout is 5 s), then goes on
READ_FLUSH_WAIT: Final = 2.0  # seconds a read waits for this process's queued writes, so it sees them

DISPATCH_COLUMNS: Final = ("id", "at", "who", "source", "remote_addr", "name", "args", "kwargs", "options",
                           "queue", "forced", "outcome", "task_id", "error")
#: What a dispatch's outcome changes in the entry written before it was published (the rest, and the indexes on
#: time and name, stay as they are).
OUTCOME_COLUMNS: Final = ("queue", "outcome", "task_id", "error")
ACTION_COLUMNS: Final = ("id", "at", "who", "source", "remote_addr", "action", "target", "detail", "outcome",
                         "error")


class AuditUnavailable(DashboardError):
    """The audit log cannot be opened or read (the message names where it is and why)."""


def _optional(text: str | None) -> str | None:
    return None if text is None else capped(text)


def dispatch_row(entry: AuditEntry) -> tuple[Any, ...]:
    """The INSERT parameters (DISPATCH_COLUMNS but id): every text capped, whatever the caller put in."""
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


def dispatch_entry(row: tuple[Any, ...]) -> AuditEntry:
    """The entry a DISPATCH_COLUMNS row holds."""
    (id_, at, who, source, remote_addr, name, args, kwargs, options, queue, forced, outcome, task_id, error) = row
    return AuditEntry(
        at=float(at), who=who, source=cast(Source, source), remote_addr=remote_addr, name=name, args=args,
        kwargs=kwargs, options=options, queue=queue, forced=bool(forced), outcome=cast(Outcome, outcome),
        task_id=task_id, error=error, id=int(id_),
    )


def action_row(entry: ActionEntry) -> tuple[Any, ...]:
    """The INSERT parameters (ACTION_COLUMNS but id)."""
    return (float(entry.at), capped(entry.who), capped(entry.source), _optional(entry.remote_addr),
            capped(entry.action), capped(entry.target), capped(entry.detail, MAX_DETAIL_CHARS),
            capped(entry.outcome), _optional(entry.error))


def action_entry_of(row: tuple[Any, ...]) -> ActionEntry:
    """The action an ACTION_COLUMNS row holds."""
    id_, at, who, source, remote_addr, action, target, detail, outcome, error = row
    return ActionEntry(at=float(at), who=who, source=cast(Source, source), remote_addr=remote_addr, action=action,
                       target=target, detail=detail, outcome=cast(ActionOutcome, outcome), error=error,
                       id=int(id_))


class AuditStore(abc.ABC):
    """An audit log: dispatch attempts and operator actions, newest first. Recording never raises."""

    shown: str = ""  # where, for people and error messages (credentials masked)
    param: str = "?"  # the database driver's placeholder
    contains: str = "instr({column}, ?) > 0"  # SQL: `column` holds the parameter's text
    #: The driver's errors that mean "could not write/read" (counted and logged, or AuditUnavailable).
    errors: tuple[type[BaseException], ...] = ()

    returning: str = ""  # SQL after an INSERT that returns the new row's id (the driver gives it otherwise)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._write_errors = 0
        self._writer = GroupCommit(self._write_batch, "audit")

    # -- what a database supplies ------------------------------------------------------------------------------

    @abc.abstractmethod
    def _write_batch(self, writes: Sequence[Write], durable: bool) -> None:
        """Execute every write (`statement`) in one transaction, setting each one's row_id, and commit: synced
        to disk when `durable`, else without waiting for the disk. Raise (rolled back) if any fails."""

    @abc.abstractmethod
    def _page(self, table: str, columns: tuple[str, ...], where: str, params: list[Any], limit: int,
              offset: int) -> tuple[list[tuple[Any, ...]], int]:
        """One page (newest first) and the total matching, from one snapshot."""

    @abc.abstractmethod
    def _select(self, table: str, columns: tuple[str, ...], where: str, params: list[Any],
                limit: int) -> list[tuple[Any, ...]]:
        """Up to `limit` rows, newest first."""

    @abc.abstractmethod
    def _delete_batch(self, table: str, older_than: float, batch: int) -> int:
        """Delete up to `batch` rows recorded before `older_than`, in one transaction; how many went."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the database; later writes are counted as failed, reads raise."""

    # -- the shared behaviour ----------------------------------------------------------------------------------

    @property
    def write_errors(self) -> int:
        """How many entries could not be written since this log was created."""
        return self._write_errors

    def __enter__(self) -> AuditStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def statement(self, write: Write) -> tuple[str, tuple[Any, ...]]:
        """The SQL and parameters of one write: an INSERT (then `returning`), or an UPDATE of an earlier row."""
        p = self.param
        row_id = write.updates
        if row_id is not None:
            changes = write.changes or write.columns
            assignments = ", ".join(f"{column} = {p}" for column in changes)
            values = (write.row[write.columns.index(column)] for column in changes)
            return f"UPDATE {write.table} SET {assignments} WHERE id = {p}", (*values, row_id)
        return (f"INSERT INTO {write.table} ({', '.join(write.columns)}) "
                f"VALUES ({', '.join([p] * len(write.columns))}){self.returning}", write.row)

    def record(self, entry: AuditEntry) -> int | None:
        """Write one entry durably and return its id; on failure log it, count it and return None (never raises).
        Concurrent calls share one commit."""
        try:
            write = self._writer.submit(Write("dispatches", DISPATCH_COLUMNS[1:], dispatch_row(entry)))
        except Exception:  # a bug here must not fail the dispatch either; the traceback goes to the log
            count = self._count_failure()
            log.exception("audit: could not record the %s dispatch of %r (%d failed so far)",
                          entry.outcome, entry.name[:200], count)
            return None
        if self._written(write):
            return write.row_id
        count = self._count_failure()
        log.error("audit: could not record the %s dispatch of %r at %.3f by %s (%d failed so far): %s",
                  entry.outcome, entry.name[:200], entry.at, entry.who[:200], count, self._why(write),
                  exc_info=self._traceback(write))
        return None

    def begin(self, entry: AuditEntry) -> Write | None:
        """Queue a dispatch about to be published (durably, outcome "unknown"); `finish` waits for it. Never
        raises: None when the entry cannot even be queued (then `finish` records the outcome on its own)."""
        try:
            return self._writer.submit(Write("dispatches", DISPATCH_COLUMNS[1:], dispatch_row(entry)))
        except Exception:
            log.exception("audit: could not queue the dispatch of %r", entry.name[:200])
            return None

    def finish(self, begun: Write | None, entry: AuditEntry) -> int | None:
        """Wait until `begin`'s write is durable, then queue the attempt's outcome in its place without waiting
        for it (written after the answer; a reader in this process sees it, see `flush`). Its id, or None (never
        raises: a failure is logged and counted). When the begun write failed, the entry is recorded anew."""
        if begun is None:
            return self.record(entry)
        if not begun.wait(WRITE_WAIT):
            count = self._count_failure()
            log.error("audit: the dispatch of %r at %.3f by %s was not written within %.0f s (%d failed so far); "
                      "its outcome %s is queued after it", entry.name[:200], entry.at, entry.who[:200], WRITE_WAIT,
                      count, entry.outcome)
        elif begun.error is not None:
            log.warning("audit: could not write the dispatch of %r before publishing it (%s); recording its "
                        "outcome instead", entry.name[:200], self._why(begun))
            return self.record(entry)
        try:
            self._writer.submit(Write("dispatches", DISPATCH_COLUMNS[1:], dispatch_row(entry), durable=False,
                                      after=begun, changes=OUTCOME_COLUMNS, on_done=self._check_outcome(entry)))
        except Exception:
            count = self._count_failure()
            log.exception("audit: could not queue the %s outcome of the dispatch of %r (%d failed so far)",
                          entry.outcome, entry.name[:200], count)
        return begun.row_id

    def _check_outcome(self, entry: AuditEntry) -> Any:
        def report(write: Write) -> None:
            if write.error is not None:
                count = self._count_failure()
                log.error("audit: could not record the %s outcome of the dispatch of %r at %.3f by %s (%d failed "
                          "so far; the log says unknown): %s", entry.outcome, entry.name[:200], entry.at,
                          entry.who[:200], count, self._why(write), exc_info=self._traceback(write))

        return report

    def record_action(self, entry: ActionEntry) -> int | None:
        """Write one operator action durably and return its id; on failure log it, count it and return None (never
        raises: the action already happened, or was refused, whatever the log can do)."""
        try:
            write = self._writer.submit(Write("actions", ACTION_COLUMNS[1:], action_row(entry)))
        except Exception:
            count = self._count_failure()
            log.exception("audit: could not record the action %s (%d failed so far)", entry.action[:100], count)
            return None
        if self._written(write):
            return write.row_id
        count = self._count_failure()
        log.error("audit: could not record the action %s on %r (%s) by %s (%d failed so far): %s",
                  entry.action[:100], entry.target[:200], entry.outcome, entry.who[:200], count, self._why(write),
                  exc_info=self._traceback(write))
        return None

    def flush(self, timeout: float = READ_FLUSH_WAIT) -> bool:
        """Wait until the writes this process queued so far are written (True), or `timeout` seconds."""
        return self._writer.flush(timeout)

    def _written(self, write: Write) -> bool:
        return write.wait(WRITE_WAIT) and write.error is None

    def _why(self, write: Write) -> str:
        if not write.done.is_set():
            return f"not written within {WRITE_WAIT:.0f} s"
        return mask_text(str(write.error)) or type(write.error).__name__

    def _traceback(self, write: Write) -> BaseException | None:
        """The error when it is a bug (its traceback goes to the log), None for a database failure."""
        error = write.error
        return None if error is None or isinstance(error, (*self._failures(), WriterClosed)) else error

    def _stop_writing(self) -> None:
        """Write what is queued, then refuse further writes (each store's close() calls this first)."""
        self._writer.close()

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
        _check_page(limit, offset)
        p = self.param
        clauses: list[str] = []
        params: list[Any] = []
        if action is not None and action.endswith(".*"):
            clauses.append(f"substr(action, 1, {p}) = {p}")
            params += [len(action) - 1, capped(action[:-1])]
        elif action is not None:
            clauses.append(f"action = {p}")
            params.append(capped(action))
        for column, value in (("target", target), ("who", who)):
            if value is not None:
                clauses.append(f"{column} = {p}")
                params.append(capped(value))
        self._time_clauses(since, until, clauses, params)
        rows, total = self._read("actions", ACTION_COLUMNS, clauses, params, limit, offset)
        return [action_entry_of(tuple(row)) for row in rows], total

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
        if outcome is not None and outcome not in AUDIT_OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(AUDIT_OUTCOMES)}")
        _check_page(limit, offset)
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("name", name), ("outcome", outcome), ("who", who), ("queue", queue),
                              ("task_id", task_id)):
            if value is not None:
                clauses.append(f"{column} = {self.param}")  # column names are ours; values always bound
                params.append(capped(value))
        self._time_clauses(since, until, clauses, params)
        rows, total = self._read("dispatches", DISPATCH_COLUMNS, clauses, params, limit, offset)
        return [dispatch_entry(tuple(row)) for row in rows], total

    def actions_mentioning(self, actions: tuple[str, ...], text: str, limit: int = 100) -> list[ActionEntry]:
        """The newest of `actions` whose detail holds `text` (a task id, say), newest first. AuditUnavailable when
        the log cannot be read."""
        if not actions:
            return []
        marks = ", ".join([self.param] * len(actions))
        where = f" WHERE action IN ({marks}) AND {self.contains.format(column='detail')}"
        self.flush()
        try:
            rows = self._select("actions", ACTION_COLUMNS, where, [*actions, text], limit)
        except self.errors as exc:
            raise AuditUnavailable(mask_text(f"the audit log {self.shown} could not be read: {exc}")) from None
        return [action_entry_of(tuple(row)) for row in rows]

    def _time_clauses(self, since: float | None, until: float | None, clauses: list[str], params: list[Any]) -> None:
        if since is not None:
            clauses.append(f"at >= {self.param}")
            params.append(float(since))
        if until is not None:
            clauses.append(f"at < {self.param}")
            params.append(float(until))

    def _read(self, table: str, columns: tuple[str, ...], clauses: list[str], params: list[Any], limit: int,
              offset: int) -> tuple[list[tuple[Any, ...]], int]:
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        self.flush()
        try:
            return self._page(table, columns, where, params, limit, offset)
        except self.errors as exc:
            raise AuditUnavailable(mask_text(f"the audit log {self.shown} could not be read: {exc}")) from None

    def count_failure(self) -> int:
        """Count an entry that never reached `record` (it could not be built); the new total."""
        return self._count_failure()

    def prune(self, older_than: float) -> int:
        """Delete the entries recorded before `older_than` (epoch seconds); how many went (never raises).

        In batches, each its own transaction: dispatches going on meanwhile wait for one batch at most.
        """
        removed = 0
        try:
            while True:
                dispatches = self._delete_batch("dispatches", float(older_than), PRUNE_BATCH)
                acted = self._delete_batch("actions", float(older_than), PRUNE_BATCH)
                removed += max(dispatches, 0) + max(acted, 0)
                if dispatches < PRUNE_BATCH and acted < PRUNE_BATCH:
                    break
        except self._failures() as exc:
            log.error("audit: pruning %s failed after %d entries: %s", self.shown, removed, mask_text(str(exc)))
        if removed:
            log.info("audit: removed %d entries recorded before %s (retention)", removed,
                     datetime.fromtimestamp(older_than, UTC).isoformat(timespec="seconds"))
        return removed

    def _failures(self) -> tuple[type[BaseException], ...]:
        """The errors that mean the database failed (logged and counted when recording)."""
        return (AuditUnavailable, OSError, *self.errors)

    def _count_failure(self) -> int:
        with self._lock:
            self._write_errors += 1
            return self._write_errors


def _check_page(limit: int, offset: int) -> None:
    if not 1 <= limit <= MAX_QUERY_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_QUERY_LIMIT}")
    if offset < 0:
        raise ValueError("offset must not be negative")
