"""The bounded cluster state: one thread applies events, readers take snapshots."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from operator import attrgetter
from types import MappingProxyType
from typing import Any, Final, Literal, NamedTuple

from .family import Family, family_of, link
from .fields import Interner, as_float, clip
from .rows import record_row, row_record
from .tasks import (
    EVENT_STATES,
    SENT,
    TASK_EVENT_CODES,
    HostTable,
    TaskRecord,
    TaskUpdater,
    TaskView,
    first_timestamp,
    task_view,
)
from .workers import WORKER_EVENT_TYPES, WorkerRecord, WorkerView, worker_view

TEXT_FIELDS: Final = ("args", "kwargs", "result", "exception", "traceback")
#: Counted under this key when an event has no string "type".
MISSING_TYPE: Final = "(missing)"
#: Counted under this key once MAX_EVENT_TYPES distinct types have been seen.
OTHER_TYPE: Final = "(other)"
MAX_EVENT_TYPES: Final = 256


class Change(NamedTuple):
    """What one applied event changed, for a hub that pushes updates."""

    kind: Literal["task", "worker"]
    key: str  # task id or worker hostname
    created: bool


#: Orders of the task list: sighting ("seen", the default newest first), runtime, name, state (the attribute read).
SORT_KEYS: Final[dict[str, str]] = {"seen": "", "runtime": "runtime", "name": "name", "state": "state"}
DEFAULT_SORT: Final = "-seen"


@dataclass(frozen=True, slots=True)
class Counts:
    """Totals at snapshot time."""

    tasks: int
    by_state: Mapping[str, int]
    workers: int
    workers_online: int
    events: int
    tasks_evicted: int

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "tasks": self.tasks,
            "by_state": dict(self.by_state),
            "workers": self.workers,
            "workers_online": self.workers_online,
            "events": self.events,
            "tasks_evicted": self.tasks_evicted,
        }


class State:
    """Tasks and workers built from Celery events, bounded in memory.

    Only the owner thread calls apply() and update_worker_inspection(); any
    thread may call the readers, which copy what they return under the lock.
    Tasks are evicted oldest first by first sighting (the order they entered),
    not LRU: a task still running after max_tasks newer ones goes first, which
    keeps eviction O(1) and the newest-first listing free.
    """

    def __init__(
        self,
        max_tasks: int = 100_000,
        *,
        clock: Callable[[], float] = time.time,
        max_text: int = 16 * 1024,
        max_timeline: int = 64,
        max_workers: int = 1_000,
    ) -> None:
        """Create an empty state; clock gives "now" for offline detection."""
        if min(max_tasks, max_text, max_timeline, max_workers) < 1:
            raise ValueError("max_tasks, max_text, max_timeline and max_workers must be positive")
        self._max_tasks = max_tasks
        self._max_workers = max_workers
        self._clock = clock
        self._lock = threading.Lock()
        self._intern = Interner()
        self._hosts = HostTable()
        self._updater = TaskUpdater(self._intern, self._hosts, max_text, max_timeline)
        self._tasks: dict[str, TaskRecord] = {}
        # First-sighting order. A deque, not the dict's own order: popping a
        # dict's first key leaves holes that the next pop must walk past.
        self._order: deque[TaskRecord] = deque()
        self._by_state: dict[str, int] = dict.fromkeys(EVENT_STATES, 0)
        # Retained tasks per name, queue and worker (values with none left are dropped): a query on one of
        # them takes its total from here and stops scanning once its page is full.
        self._by_name: dict[str, int] = {}
        self._by_queue: dict[str, int] = {}
        self._by_worker: dict[str, int] = {}
        self._children: dict[str, list[str]] = {}  # parent id -> retained children: workflow trees
        self._workers: dict[str, WorkerRecord] = {}
        self._events: dict[str, int] = {}
        self._evicted = 0

    # -- owner thread -------------------------------------------------------

    def apply(self, event: Mapping[str, Any]) -> Change | None:
        """Apply one Celery event; return what changed, or None if it was ignored.

        An event marked `"resync": True` was made up by the dashboard from an inspect reply or the result
        backend after a gap: it is applied, but not counted as an event taken in (`events_total`).
        """
        kind = event.get("type")
        kind = kind if isinstance(kind, str) else MISSING_TYPE
        with self._lock:
            if event.get("resync") is not True:
                self._count_event(kind)
            code = TASK_EVENT_CODES.get(kind)
            if code is not None:
                return self._apply_task(code, event)
            if kind in WORKER_EVENT_TYPES:
                return self._apply_worker(kind, event)
        return None

    def restore(self, rows: Iterable[Sequence[Any]]) -> list[str]:
        """Take back stored tasks (rows.COLUMNS, a warm restart), given newest first: each goes *before* every
        task already here, so call it with successively older batches. Tasks already here (events came first)
        are kept as they are; restoring stops once the state is full. Returns the ids restored."""
        restored: list[str] = []
        cap = self._updater.text_cap
        with self._lock:
            for row in rows:
                if len(self._order) >= self._max_tasks:
                    break
                if row[0] in self._tasks:
                    continue
                task = row_record(row, self._intern, self._hosts)
                for attr in TEXT_FIELDS:  # a store written with a larger cap
                    value = getattr(task, attr)
                    if value is not None and len(value) > cap:
                        setattr(task, attr, clip(value, cap))
                self._tasks[task.id] = task
                self._order.appendleft(task)
                self._by_state[task.state] = self._by_state.get(task.state, 0) + 1
                _recount(self._by_name, None, task.name)
                _recount(self._by_queue, None, task.queue)
                _recount(self._by_worker, None, task.worker)
                link(self._children, task.parent_id, task.id)
                restored.append(task.id)
        return restored

    @property
    def full(self) -> bool:
        """True when the state holds max_tasks tasks (restoring more would evict newer ones)."""
        return len(self._order) >= self._max_tasks

    def update_worker_inspection(
        self,
        hostname: str,
        *,
        queues: Iterable[str] | None = None,
        registered: Iterable[str] | None = None,
        pool: Mapping[str, Any] | None = None,
        stats: Mapping[str, Any] | None = None,
    ) -> Change:
        """Store inspect results (queue names, registered task names, pool, stats) for a worker."""
        with self._lock:
            worker, created = self._get_or_create_worker(hostname)
            worker.inspect(self._clock(), self._intern, queues, registered, pool, stats)
            return Change("worker", worker.hostname, created)

    def _count_event(self, kind: str) -> None:
        """Count an event by type, bounding the number of distinct types."""
        if kind not in self._events and len(self._events) >= MAX_EVENT_TYPES:
            kind = OTHER_TYPE
        self._events[kind] = self._events.get(kind, 0) + 1

    def _times(self, event: Mapping[str, Any]) -> tuple[float, float]:
        """Return (event timestamp, local receive time), filling gaps from the clock."""
        local = as_float(event.get("local_received"))
        if local is None:
            local = self._clock()
        ts = as_float(event.get("timestamp"))
        return (ts if ts is not None else local), local

    def _apply_task(self, code: int, event: Mapping[str, Any]) -> Change | None:
        """Apply a task-* event."""
        task_id = event.get("uuid")
        if not isinstance(task_id, str) or not task_id:
            return None
        ts, local = self._times(event)
        host = self._intern(event.get("hostname"))
        task = self._tasks.get(task_id)
        created = task is None
        if task is None:
            task = TaskRecord(task_id, EVENT_STATES[code], ts)
            self._tasks[task_id] = task
            self._order.append(task)
            self._by_state[task.state] += 1
            if len(self._order) > self._max_tasks:
                self._evict_oldest_task()
        before = task.state
        name, queue, worker, parent = task.name, task.queue, task.worker, task.parent_id
        self._updater.apply(task, code, event, ts, host)
        if task.parent_id != parent:
            link(self._children, parent, task.id, remove=True)
            link(self._children, task.parent_id, task.id)
        task.version += 1
        if task.state != before:
            self._by_state[before] -= 1
            self._by_state[task.state] += 1
        if task.name != name:
            _recount(self._by_name, name, task.name)
        if task.queue != queue:
            _recount(self._by_queue, queue, task.queue)
        if task.worker != worker:
            _recount(self._by_worker, worker, task.worker)
        if code != SENT and host is not None:
            # Celery counts any worker-sent task event as a sign of life.
            record = self._workers.get(host)
            if record is not None:
                record.beat(ts, local)
        return Change("task", task_id, created)

    def _evict_oldest_task(self) -> None:
        """Drop the task seen first."""
        oldest = self._order.popleft()
        del self._tasks[oldest.id]
        self._by_state[oldest.state] -= 1
        _recount(self._by_name, oldest.name, None)
        _recount(self._by_queue, oldest.queue, None)
        _recount(self._by_worker, oldest.worker, None)
        link(self._children, oldest.parent_id, oldest.id, remove=True)
        self._evicted += 1

    def _apply_worker(self, kind: str, event: Mapping[str, Any]) -> Change | None:
        """Apply a worker-online/heartbeat/offline event."""
        hostname = self._intern(event.get("hostname"))
        if not hostname:
            return None
        ts, local = self._times(event)
        worker, created = self._get_or_create_worker(hostname)
        worker.apply(kind, event, ts, local, self._intern)
        return Change("worker", worker.hostname, created)

    def _get_or_create_worker(self, hostname: str) -> tuple[WorkerRecord, bool]:
        """Return the worker record for hostname, evicting the stalest if over the cap."""
        worker = self._workers.get(hostname)
        if worker is not None:
            return worker, False
        if len(self._workers) >= self._max_workers:
            # Autoscaled pods bring new hostnames forever: forget offline ones first.
            now = self._clock()
            stalest = min(
                self._workers.values(),
                key=lambda w: (
                    w.is_online(now),
                    w.last_heartbeat if w.last_heartbeat is not None else float("-inf"),
                ),
            )
            del self._workers[stalest.hostname]
        worker = self._workers[hostname] = WorkerRecord(self._intern(hostname) or hostname)
        return worker, True

    # -- readers (any thread) ---------------------------------------------

    def task(self, task_id: str) -> TaskView | None:
        """Return a snapshot of one task, or None if unknown or evicted."""
        with self._lock:
            task = self._tasks.get(task_id)
            return task_view(task, self._hosts) if task is not None else None

    def tasks_by_id(self, task_ids: Iterable[str]) -> list[TaskView]:
        """Snapshots of the given tasks that are retained, in the order asked, under one lock.

        For a websocket frame: one acquisition for all its changed tasks, not one per task, so dozens of
        clients do not queue on the lock that the event thread needs.
        """
        with self._lock:
            found = [self._tasks.get(task_id) for task_id in task_ids]
            return [task_view(task, self._hosts) for task in found if task is not None]

    def rows_by_id(self, task_ids: Iterable[str]) -> list[tuple[Any, ...]]:
        """The stored form (rows.COLUMNS) of the given tasks that are retained, under one lock: what the history
        writer commits, read straight from the records (no snapshot built)."""
        with self._lock:
            found = [self._tasks.get(task_id) for task_id in task_ids]
            return [record_row(task, self._hosts) for task in found if task is not None]

    def names_and_queues(self, task_ids: Iterable[str]) -> dict[str, tuple[str | None, str | None]]:
        """Name and queue of each given task that is retained."""
        with self._lock:
            tasks = self._tasks
            return {task_id: (tasks[task_id].name, tasks[task_id].queue) for task_id in task_ids if task_id in tasks}

    def family(self, task_id: str) -> Family | None:
        """The workflow tree around a retained task (its root, parents and descendants), or None."""
        with self._lock:
            return family_of(task_id, self._tasks, self._children, lambda task: task_view(task, self._hosts))

    def task_versions(self, task_ids: Iterable[str]) -> dict[str, int]:
        """The version (events applied so far) of each given task that is retained: cheap, under one lock."""
        with self._lock:
            tasks = self._tasks
            return {task_id: tasks[task_id].version for task_id in task_ids if task_id in tasks}

    def tasks(
        self,
        state: str | None = None,
        name: str | None = None,
        queue: str | None = None,
        worker: str | None = None,
        limit: int = 50,
        offset: int = 0,
        sort: str = DEFAULT_SORT,
    ) -> tuple[list[TaskView], int]:
        """Return one page of tasks, newest first sighting first (or by `sort`: a SORT_KEYS key, "-" first for
        descending), and how many match in all.

        `name` is a task name, or a part of names (case-insensitive) when no task has exactly that name: "billing"
        finds every billing task. The other filters are exact.
        """
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        if sort.removeprefix("-") not in SORT_KEYS:
            raise ValueError(f"sort must be one of {', '.join(SORT_KEYS)}, with - for descending")
        with self._lock:
            given = self._given_filters(state, name, queue, worker)
            if sort != DEFAULT_SORT:
                page, total = self._sorted_page(given, sort, limit, offset)
            elif not given:
                total = len(self._order)
                page = list(islice(reversed(self._order), offset, offset + limit))
            elif len(given) == 1:
                # One filter: the total is a sum of counters the state keeps, and the page stops the scan early.
                attribute, values, counts = given[0]
                total = sum(counts.get(value, 0) for value in values)
                read = attrgetter(attribute)
                matching = (task for task in reversed(self._order) if read(task) in values)
                page = list(islice(matching, offset, offset + limit)) if total > offset else []
            else:
                page, total = self._matching_page(given, limit, offset)
            return [task_view(task, self._hosts) for task in page], total

    def _given_filters(
        self, state: str | None, name: str | None, queue: str | None, worker: str | None
    ) -> list[tuple[str, frozenset[str], dict[str, int]]]:
        """(attribute, accepted values, per-value counts) of each filter given (call under the lock)."""
        candidates = (("state", state, self._by_state), ("name", name, self._by_name),
                      ("queue", queue, self._by_queue), ("worker", worker, self._by_worker))
        given = []
        for attribute, value, counts in candidates:
            if value is None:
                continue
            values = frozenset({value})
            if attribute == "name" and value not in counts:
                needle = value.casefold()  # the distinct names are few next to the tasks: this scan is cheap
                values = frozenset(known for known in counts if needle in known.casefold())
            given.append((attribute, values, counts))
        return given

    def _sorted_page(
        self, given: list[tuple[str, frozenset[str], dict[str, int]]], sort: str, limit: int, offset: int,
    ) -> tuple[list[TaskRecord], int]:
        """One page of the matching tasks in another order than sighting: every match is sorted, so this costs a
        pass and a sort over the matches (call under the lock); tasks without the value come last."""
        checks = [(attrgetter(attribute), values) for attribute, values, _counts in given]
        matching = [task for task in self._order if all(read(task) in values for read, values in checks)]
        return _ordered(matching, sort)[offset : offset + limit], len(matching)

    def _matching_page(
        self, given: list[tuple[str, frozenset[str], dict[str, int]]], limit: int, offset: int,
    ) -> tuple[list[TaskRecord], int]:
        """One page of tasks matching every filter, newest first, and how many match (call under the lock).

        One pass that counts every match and keeps only the page: no list of all matches is built. Per-value
        indexes would cost more memory per task than the whole timeline does; per-value counts are kept (see
        tasks()), and a filter none of whose values is counted answers at once.
        """
        if any(not any(counts.get(value) for value in values) for _attribute, values, counts in given):
            return [], 0
        checks = [(attrgetter(attribute), values) for attribute, values, _counts in given]
        page: list[TaskRecord] = []
        total = 0
        end = offset + limit
        for task in reversed(self._order):
            if all(read(task) in values for read, values in checks):
                if offset <= total < end:
                    page.append(task)
                total += 1
        return page, total

    def search(self, matches: Callable[[TaskRecord, float | None], bool], limit: int = 50, offset: int = 0,
               sort: str = DEFAULT_SORT, *, needs_time: bool = False) -> tuple[list[TaskView], int]:
        """One page of the tasks `matches(record, first sighting)` accepts (the first sighting is None unless
        `needs_time`), in a SORT_KEYS order, and how many match: a search over what memory holds."""
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        if sort.removeprefix("-") not in SORT_KEYS:
            raise ValueError(f"sort must be one of {', '.join(SORT_KEYS)}, with - for descending")
        with self._lock:
            if sort == DEFAULT_SORT:
                page: list[TaskRecord] = []
                total = 0
                end = offset + limit
                for task in reversed(self._order):
                    if matches(task, _first_seen(task) if needs_time else None):
                        if offset <= total < end:
                            page.append(task)
                        total += 1
            else:
                matching = [task for task in self._order
                            if matches(task, _first_seen(task) if needs_time else None)]
                page, total = _ordered(matching, sort)[offset : offset + limit], len(matching)
            return [task_view(task, self._hosts) for task in page], total

    def worker(self, hostname: str) -> WorkerView | None:
        """Return a snapshot of one worker, or None if unknown."""
        with self._lock:
            record = self._workers.get(hostname)
            return worker_view(record, self._clock()) if record is not None else None

    def workers(self) -> list[WorkerView]:
        """Return snapshots of all known workers, sorted by hostname."""
        with self._lock:
            now = self._clock()
            return [worker_view(self._workers[name], now) for name in sorted(self._workers)]

    def online_workers(self) -> list[WorkerView]:
        """The workers online now (Celery's heartbeat rule), sorted by hostname: the one definition of "online"."""
        return [view for view in self.workers() if view.online]

    def counts(self) -> Counts:
        """Return tasks retained (in all and by state), workers online and events seen."""
        with self._lock:
            now = self._clock()
            return Counts(
                tasks=len(self._order),
                by_state=MappingProxyType(dict(self._by_state)),
                workers=len(self._workers),
                workers_online=sum(1 for worker in self._workers.values() if worker.is_online(now)),
                events=sum(self._events.values()),
                tasks_evicted=self._evicted,
            )

    def events_total(self) -> dict[str, int]:
        """Return how many events of each type were applied or ignored."""
        with self._lock:
            return dict(self._events)


def _ordered(matching: list[TaskRecord], sort: str) -> list[TaskRecord]:
    """Tasks in first-sighting order, sorted by a SORT_KEYS order; tasks without the value come last."""
    key = sort.removeprefix("-")
    descending = sort.startswith("-")
    if key == "seen":
        return list(reversed(matching)) if descending else matching
    read = attrgetter(SORT_KEYS[key])
    present = [task for task in matching if read(task) is not None]
    present.sort(key=read, reverse=descending)
    return present + [task for task in matching if read(task) is None]


def _first_seen(task: TaskRecord) -> float | None:
    """The task's earliest timeline entry."""
    return first_timestamp(task.timeline)


def _recount(counts: dict[str, int], old: str | None, new: str | None) -> None:
    """Move one task from value `old` to `new` in a per-value count (None: no value); drop values at zero."""
    if old is not None:
        left = counts[old] - 1
        if left:
            counts[old] = left
        else:
            del counts[old]
    if new is not None:
        counts[new] = counts.get(new, 0) + 1
