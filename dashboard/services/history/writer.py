"""The history writer: its own thread takes changed tasks off the hot path and writes them in group commits.

The event thread only marks a task id dirty (one dict store under an uncontended lock) and notes finished
tasks; this thread wakes every `flush_interval`, reads the current snapshots of the dirty tasks from the State
(so a task that changed ten times since the last commit is written once), adds finished tasks to their minute's
buckets, and writes all of it, with the queue samples, in one transaction.

- Bounded: at most `max_pending` dirty tasks wait; past that a change is dropped and counted (and a task evicted
  from memory before its write is counted too). Nothing is dropped silently: /metrics and the status page show
  it, and the log says it once per burst.
- One writer: the store's writer lock elects it (a flock for SQLite, an advisory lock for PostgreSQL). The other
  processes and replicas are readers: they keep the last FOLLOW_WINDOW seconds of changes, so that the one that
  takes over when the writer dies writes what the dead one may not have.
- Failing store: the batch is kept (merged with what comes meanwhile, within the bound), the status says
  "degraded" with the reason, and writing is tried again with backoff until it works.
- Start: the newest stored tasks are put back into memory first (a warm restart), newest first in chunks, so
  the tasks page shows them at once; the time the dashboard was down becomes a gap that the resync job recovers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ...model.secrets import mask_text
from ...model.series import MinuteRow, QueueSample, minute_of
from ...model.state import State
from ...model.state.rows import NAME, QUEUE, UPDATED
from ..events.jobs import Job
from .store import HistoryStore, HistoryUnavailable, StoreInfo, WriteBatch, WriterLock

log = logging.getLogger(__name__)

FOLLOW_WINDOW: Final = 60.0  # seconds of changes a reader keeps for a takeover
ELECT_EVERY: Final = 2.0  # seconds between a reader's tries to become the writer
INFO_EVERY: Final = 30.0  # seconds between reads of the store's size
PRUNE_EVERY: Final = 3600.0
FIRST_PRUNE_AFTER: Final = 30.0
MAX_BACKOFF: Final = 10.0
RESTORE_FIRST: Final = 1_000  # tasks in the first restored chunk (the tasks page's first pages)
RESTORE_CHUNK: Final = 10_000
ROWS_PER_READ: Final = 500  # changed tasks read from the state per lock hold (8 µs each): a request waits at most ~4 ms
MINUTES_KEPT: Final = 10  # minutes of buckets kept in memory after they were written
MAX_SAMPLES: Final = 10_000
DAY: Final = 86_400.0
_FINISHED: Final = {"task-succeeded": False, "task-failed": True}


@dataclass(frozen=True)
class WriterStatus:
    """What the status page, the banner and /metrics show."""

    role: str  # "writer", "reader", "starting" or "stopped"
    degraded: str | None  # why history is not being written, when it is not
    pending: int
    dropped: int
    written: int
    write_errors: int
    lag: float  # seconds the oldest unwritten change has waited (0 when none)
    last_write: float | None
    restored: int
    restoring: bool
    info: StoreInfo | None


class HistoryWriter:
    """Group commits of task changes to one store; see the module's docstring."""

    def __init__(
        self,
        store: HistoryStore,
        state: State,
        *,
        flush_interval: float = 1.0,
        max_pending: int = 200_000,
        retention_days: float | None = None,
        max_tasks: int | None = None,
        restore: bool = True,
        on_restored: Callable[[], None] | None = None,
        on_downtime: Callable[[float], None] | None = None,
        on_status: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
        pause: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self._pause = pause  # called between reads of the state (requests first: services/priority.py)
        self.state = state
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self.retention_days = retention_days
        self.max_tasks = max_tasks
        self._restore = restore
        self._on_restored = on_restored
        self._on_downtime = on_downtime
        self._on_status = on_status
        self.clock = clock
        self._lock = threading.Lock()
        # task id -> (change number, when it first became dirty); insertion order: oldest first
        self._dirty: dict[str, tuple[int, float]] = {}
        self._changes = 0
        self._finished: list[tuple[str, bool, float | None, float]] = []  # id, failed, runtime, when
        self._samples: list[QueueSample] = []
        self._buckets: dict[tuple[str, str, int], MinuteRow] = {}
        self._touched: set[tuple[str, str, int]] = set()
        self._started_minute = minute_of(clock())
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._writer_lock: WriterLock | None = None
        self._role = "starting"
        self._degraded: str | None = None
        self._dropped = 0
        self._dropped_logged = 0
        self._written = 0
        self._write_errors = 0
        self._last_write: float | None = None
        self._restored = 0
        self._restoring = restore
        self._info: StoreInfo | None = None
        self._info_at = 0.0
        self._last_elect = float("-inf")
        self._next_prune = 0.0

    # -- the event thread ----------------------------------------------------------------------------------

    def note_event(self, event: Mapping[str, Any]) -> None:
        """A task changed (a hook of the event sink): mark it for the next commit."""
        task_id = event.get("uuid")
        if not isinstance(task_id, str):
            return
        failed = _FINISHED.get(event.get("type"))  # type: ignore[arg-type]
        now = self.clock()
        with self._lock:
            self._changes += 1
            before = self._dirty.get(task_id)
            if before is None:
                if len(self._dirty) >= self.max_pending:
                    self._dropped += 1
                    return
                self._dirty[task_id] = (self._changes, now)
            else:
                self._dirty[task_id] = (self._changes, before[1])
            if failed is not None:
                runtime = event.get("runtime")
                self._finished.append((task_id, failed, float(runtime) if isinstance(runtime, (int, float))
                                       and not isinstance(runtime, bool) else None, now))

    def note_queues(self, samples: Iterable[QueueSample]) -> None:
        """Queue depths of one inspection, written with the next commit."""
        with self._lock:
            self._samples.extend(samples)
            del self._samples[:-MAX_SAMPLES]

    def sampling_job(self, sample: Callable[[], list[QueueSample]], every: float) -> Job:
        """The monitor's job that samples queue depths (from the routing service's latest inspection)."""
        return Job("history-samples", every, lambda: self.note_queues(sample()))

    # -- readers -------------------------------------------------------------------------------------------

    def pending_ids(self, limit: int = 5_000) -> list[str]:
        """Ids of changed tasks not written yet (newest changes last), at most `limit`."""
        with self._lock:
            ids = list(self._dirty)
        return ids[-limit:]

    def status(self) -> WriterStatus:
        """A snapshot of the writer's state."""
        now = self.clock()
        with self._lock:
            first = next(iter(self._dirty.values()), None)
            oldest = first[1] if first is not None else None
            pending = len(self._dirty)
            dropped = self._dropped
        lag = max(now - oldest, 0.0) if oldest is not None and self._role == "writer" else 0.0
        return WriterStatus(self._role, self._degraded, pending, dropped, self._written, self._write_errors, lag,
                            self._last_write, self._restored, self._restoring, self._info)

    # -- the thread ----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread (the monitor calls it, once per process)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="dashboard-history", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is pending (when this process writes), then stop."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._writer_lock is not None:
            self._writer_lock.release()
        self._role = "stopped"

    def flush(self) -> None:
        """Wake the thread for a commit now (tests)."""
        self._wake.set()

    def _run(self) -> None:
        if self._restore:
            try:
                self.restore()
            except HistoryUnavailable as exc:
                self._failed(str(exc))
            except Exception:  # noqa: BLE001 - a failed restore must not stop history
                log.exception("history: restoring from %s failed", self.store.shown)
            finally:
                self._restoring = False
        backoff = self.flush_interval
        while True:
            stopping = self._stop.is_set()
            try:
                self.step()
            except HistoryUnavailable as exc:
                self._failed(str(exc))
                backoff = min(backoff * 2, MAX_BACKOFF)
            except Exception as exc:  # noqa: BLE001 - the writer must outlive any one failure
                log.exception("history: the writer failed")
                self._failed(f"{type(exc).__name__}: {exc}")
                backoff = min(backoff * 2, MAX_BACKOFF)
            else:
                backoff = self.flush_interval
            if stopping:
                return
            self._wake.wait(backoff)
            self._wake.clear()

    def step(self) -> None:
        """One pass: elect, then commit what changed (writer) or trim what is old (reader)."""
        now = self.clock()
        if not self._lead(now):
            self._follow(now)
            return
        batch, ids, mark = self._batch()
        if batch:
            self.store.write(batch)
            self._written += len(batch.tasks)
            self._last_write = now
            with self._lock:
                for task_id in ids:  # unless it changed again since its snapshot was read
                    entry = self._dirty.get(task_id)
                    if entry is not None and entry[0] <= mark:
                        del self._dirty[task_id]
            self._touched.clear()
        self._recovered()
        self._housekeeping(now)

    def restore(self) -> None:
        """Put the newest stored tasks back into memory, newest first, until memory is full."""
        self.store.open()
        rows, below = self.store.newest(RESTORE_FIRST)
        if not rows:
            return
        newest_change = max(float(row[UPDATED]) for row in rows)
        while rows and not self.state.full and not self._stop.is_set():
            first = not self._restored
            restored = self.state.restore(rows)
            self._restored += len(restored)
            if first and restored and self._on_restored is not None:
                self._on_restored()  # open pages redraw with the newest tasks at once
            if below is None:
                break
            rows, below = self.store.newest(RESTORE_CHUNK, below)
        log.info("history: %d tasks restored from %s", self._restored, self.store.shown)
        if self._on_downtime is not None:
            self._on_downtime(newest_change)

    # -- steps ---------------------------------------------------------------------------------------------

    def _lead(self, now: float) -> bool:
        """True while this process is the writer (trying to become it every ELECT_EVERY seconds)."""
        lock = self._writer_lock
        if lock is not None and lock.still_held():
            return True
        if lock is not None:  # lost (the database session died): a reader again until re-elected
            lock.release()
            self._writer_lock = None
            self._set_role("reader")
            log.warning("history: lost the writer lock on %s", self.store.shown)
        if now - self._last_elect < ELECT_EVERY:
            return False
        self._last_elect = now
        self.store.open()
        lock = self.store.writer_lock()
        if lock.try_acquire():
            self._writer_lock = lock
            self._next_prune = now + FIRST_PRUNE_AFTER
            self._set_role("writer")
            log.info("history: this process writes to %s", self.store.shown)
            return True
        self._set_role("reader")
        self._recovered()
        return False

    def _follow(self, now: float) -> None:
        """A reader keeps the last FOLLOW_WINDOW seconds of changes and buckets, for a takeover."""
        cutoff = now - FOLLOW_WINDOW
        self._bucket_finished()
        with self._lock:
            stale = [task_id for task_id, (_change, since) in self._dirty.items() if since < cutoff]
            for task_id in stale:
                del self._dirty[task_id]
            self._samples = [sample for sample in self._samples if sample.at >= cutoff]
        self._drop_old_buckets(now)
        self._refresh_info(now)

    def _batch(self) -> tuple[WriteBatch, list[str], int]:
        """What to write, the ids in it, and the change number its snapshots are at least as new as."""
        with self._lock:
            ids = list(self._dirty)
            mark = self._changes
            samples, self._samples = self._samples, []
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(ids), ROWS_PER_READ):  # the state's lock held for one slice at a time
            if self._pause is not None and start:
                self._pause()
            rows.extend(self.state.rows_by_id(ids[start:start + ROWS_PER_READ]))
        found = {row[0] for row in rows}
        missing = [task_id for task_id in ids if task_id not in found]
        if missing:  # evicted from memory before they could be written
            with self._lock:
                for task_id in missing:
                    self._dirty.pop(task_id, None)
                self._dropped += len(missing)
        self._bucket_finished({row[0]: (row[NAME], row[QUEUE]) for row in rows})
        minutes = [self._buckets[key] for key in self._touched]
        return WriteBatch(rows, minutes, samples), list(found), mark

    def _bucket_finished(self, known: dict[str, tuple[str | None, str | None]] | None = None) -> None:
        """Add the tasks that finished since the last pass to their minute's buckets (`known`: name and queue of
        tasks already read)."""
        with self._lock:
            finished, self._finished = self._finished, []
        if not finished:
            return
        known = dict(known or {})
        known.update(self.state.names_and_queues(task_id for task_id, *_ in finished if task_id not in known))
        for task_id, failed, runtime, when in finished:
            name, queue = known.get(task_id, (None, None))
            name, queue = name or "(unknown)", queue or ""
            key = (name, queue, minute_of(when))
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = self._base_bucket(*key)
            bucket.add(failed, runtime)
            self._touched.add(key)

    def _base_bucket(self, name: str, queue: str, minute: int) -> MinuteRow:
        """A new bucket: empty, or, for a minute that began before this process saw it, what is stored for it
        (so a restart or a takeover adds to that minute instead of replacing it)."""
        if minute > self._started_minute or self._role != "writer":
            return MinuteRow(minute, name, queue)
        try:
            stored = self.store.minutes(minute, [name], [queue])
        except HistoryUnavailable:
            stored = []
        for row in stored:
            if row.minute == minute:
                return row
        return MinuteRow(minute, name, queue)

    def _drop_old_buckets(self, now: float) -> None:
        """Forget buckets older than MINUTES_KEPT (the writer wrote them; a reader's takeover would be too late)."""
        oldest = minute_of(now) - MINUTES_KEPT
        for key in [key for key in self._buckets if key[2] < oldest]:
            del self._buckets[key]
            self._touched.discard(key)

    def _housekeeping(self, now: float) -> None:
        self._drop_old_buckets(now)
        if now >= self._next_prune and (self.retention_days or self.max_tasks):
            self._next_prune = now + PRUNE_EVERY
            older_than = now - self.retention_days * DAY if self.retention_days else None
            removed = self.store.prune(older_than, self.max_tasks)
            if removed:
                log.info("history: retention removed %d tasks from %s", removed, self.store.shown)
            self._info_at = 0.0
        self._refresh_info(now)
        with self._lock:
            dropped = self._dropped
        if dropped > self._dropped_logged:
            log.warning("history: %d task changes dropped so far (the store fell behind or tasks were evicted "
                        "from memory before they were written)", dropped)
            self._dropped_logged = dropped

    def _refresh_info(self, now: float) -> None:
        if now - self._info_at >= INFO_EVERY:
            self._info_at = now
            self._info = self.store.info()

    def _failed(self, reason: str) -> None:
        self._write_errors += 1
        reason = mask_text(reason)
        if self._degraded != reason:
            log.warning("history degraded: %s", reason)
            self._degraded = reason
            if self._on_status is not None:
                self._on_status()

    def _recovered(self) -> None:
        if self._degraded is not None:
            log.info("history: %s works again", self.store.shown)
            self._degraded = None
            if self._on_status is not None:
                self._on_status()

    def _set_role(self, role: str) -> None:
        if role != self._role:
            self._role = role
            if self._on_status is not None:
                self._on_status()
