"""Group commit for the audit log: one writer thread takes every write waiting and commits them in one transaction,
so that concurrent dispatches share one fsync. No Flask here.

A write is durable (its caller waits for it: the commit is synced to disk) or relaxed (a dispatch's outcome,
written after its answer: committed without waiting for the disk; a later durable commit or a checkpoint makes
it durable). A batch with one durable write is committed durably. Relaxed writes wait up to `linger` for the next
durable write and share its commit (in a stream of dispatches, each outcome rides with the next dispatch's
write: one transaction and one wake-up of this thread per dispatch, not two); a reader in this process (`flush`)
or `close` has them written at once. One failing statement does not take the others down: a batch that fails is
written again one write at a time.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

log = logging.getLogger(__name__)

MAX_BATCH: Final = 256  # writes per transaction
MAX_PENDING: Final = 10_000  # writes waiting at most; past this a write fails at once (counted by the store)
CLOSE_WAIT: Final = 10.0  # seconds close() lets the writer finish what is queued
LINGER: Final = 0.05  # seconds a relaxed write waits for a durable one to share its commit


class WriterClosed(Exception):
    """The audit log was closed, or too many writes are waiting: the write was not attempted."""


@dataclass(eq=False)
class Write:
    """One row for the writer: inserted, or (with `after`) the row `after` inserted updated to these values."""

    table: str
    columns: tuple[str, ...]
    row: tuple[Any, ...]
    durable: bool = True
    after: Write | None = None  # an update of that write's row; an insert when that write failed
    changes: tuple[str, ...] = ()  # the columns an update sets (all of `columns` when empty)
    on_done: Callable[[Write], None] | None = None  # called on the writer thread once written or failed
    row_id: int | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def updates(self) -> int | None:
        """The id of the row this write updates, or None when it inserts one."""
        return self.after.row_id if self.after is not None else None

    def wait(self, timeout: float) -> bool:
        """Wait until written or failed (True), or `timeout` seconds (False)."""
        return self.done.wait(timeout)


class GroupCommit:
    """One writer thread (started on the first write, again after a fork) committing queued writes in batches."""

    def __init__(self, commit: Callable[[Sequence[Write], bool], None], name: str, linger: float = LINGER) -> None:
        self._commit = commit  # writes every write of the batch in one transaction, or raises
        self._name = name
        self._linger = linger
        self._cond = threading.Condition()
        self._queue: deque[Write] = deque()
        self._submitted = 0
        self._finished = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._idle = False  # the writer thread waits (only then does a durable write wake it)
        self._sleeping = False  # ... and has nothing to do, not even a lingering relaxed write (a relaxed one wakes it)
        self._durable = 0  # durable writes queued
        self._flushers = 0  # threads in flush() (only then does a finished batch wake them)

    @property
    def pending(self) -> int:
        """Writes queued and not yet taken by the writer thread."""
        with self._cond:
            return len(self._queue)

    def submit(self, write: Write) -> Write:
        """Queue `write` (never blocks); a closed or overfull writer fails it at once."""
        with self._cond:
            if self._pid != os.getpid():  # forked: the parent's thread does not exist here
                self._pid, self._thread, self._queue = os.getpid(), None, deque()
                self._submitted = self._finished = self._durable = 0
            if self._closed or len(self._queue) >= MAX_PENDING:
                problem = "closed" if self._closed else f"{MAX_PENDING} writes are already waiting"
                write.error = WriterClosed(f"the audit log is {problem}" if self._closed else problem)
            else:
                self._queue.append(write)
                self._submitted += 1
                self._durable += write.durable
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=f"{self._name}-writer", daemon=True)
                    self._thread.start()
                elif self._sleeping or (write.durable and self._idle):
                    self._cond.notify_all()
                return write
        _finish(write)
        return write

    def flush(self, timeout: float) -> bool:
        """Wait until every write queued before this call is written or failed (True), or `timeout` seconds."""
        with self._cond:
            target = self._submitted
            self._flushers += 1
            if self._idle:
                self._cond.notify_all()  # lingering relaxed writes: now
            try:
                return self._cond.wait_for(lambda: self._finished >= target or self._pid != os.getpid(), timeout)
            finally:
                self._flushers -= 1

    def close(self) -> None:
        """Write what is queued (waiting up to CLOSE_WAIT), then refuse further writes."""
        with self._cond:
            self._closed = True
            thread = self._thread if self._pid == os.getpid() else None
            self._cond.notify_all()
        if thread is not None:
            thread.join(CLOSE_WAIT)

    def _run(self) -> None:
        just_wrote = False
        while True:
            with self._cond:
                batch = self._next_batch(just_wrote)
            if not batch:
                return  # closed and drained
            self._write(batch)
            just_wrote = True
            for write in batch:
                _finish(write)
            with self._cond:
                self._finished += len(batch)
                if self._flushers:
                    self._cond.notify_all()

    def _next_batch(self, just_wrote: bool) -> list[Write]:
        """Wait (holding the condition) until a batch is due: a durable write, a flush, close, or relaxed writes
        that lingered long enough; take it. Right after a batch, wait up to `linger` before sleeping, so that the
        relaxed writes that follow a durable one (its dispatch's outcome) need no wake-up."""
        deadline = time.monotonic() + self._linger if just_wrote else None
        while True:
            if self._queue and (self._durable or self._flushers or self._closed):
                break
            if self._closed:
                return []
            now = time.monotonic()
            if self._queue and deadline is None:
                deadline = now + self._linger
            if deadline is not None and now >= deadline:
                if self._queue:
                    break
                deadline = None
            self._idle, self._sleeping = True, deadline is None
            self._cond.wait(None if deadline is None else deadline - now)
            self._idle = self._sleeping = False
        batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
        self._durable -= sum(write.durable for write in batch)
        return batch

    def _write(self, batch: list[Write]) -> None:
        try:
            self._commit(batch, any(write.durable for write in batch))
            return
        except Exception as exc:  # noqa: BLE001 - the store's own errors and bugs alike: each write gets its error
            if len(batch) == 1:
                batch[0].row_id, batch[0].error = None, exc
                return
            log.warning("audit: a batch of %d writes failed (%s); writing them one at a time", len(batch),
                        type(exc).__name__)
        for write in batch:  # the failed transaction was rolled back: write each on its own
            write.row_id = None
            try:
                self._commit([write], write.durable)
            except Exception as exc:  # noqa: BLE001 - as above
                write.row_id, write.error = None, exc


def _finish(write: Write) -> None:
    write.done.set()
    if write.on_done is not None:
        try:
            write.on_done(write)
        except Exception:  # a logging callback must not stop the writer
            log.exception("audit: reporting a write failed")
