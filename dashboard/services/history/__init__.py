"""Task history that survives restarts: a store (SQLite by default, PostgreSQL for replicas), the writer thread
that fills it off the hot path, and `History`, what the web layer reads (searches, stored tasks, series)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from ...exceptions import ConfigError
from ...model.search import TaskQuery, first_seen, sort_order
from ...model.series import (
    WINDOWS,
    MinuteRow,
    QueueSample,
    depth_series,
    task_series,
    totals,
    window_range,
)
from ...model.state import State, TaskView
from ..broker.urls import shown_url
from .store import COUNT_CAP, HistoryStore, HistoryUnavailable, SearchPage, StoreInfo, WriteBatch
from .writer import HistoryWriter, WriterStatus

__all__ = ["COUNT_CAP", "History", "HistoryStore", "HistoryUnavailable", "HistoryWriter", "SearchPage",
           "StoreInfo", "WriteBatch", "WriterStatus", "open_store"]

POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://", "postgresql+psycopg://")
STATS_CACHE_SECONDS: Final = 15.0


def open_store(url: str) -> HistoryStore:
    """The store a `[history] url` names: a SQLite file (a path, or sqlite:///path) or a PostgreSQL URL.
    Nothing is opened yet; ConfigError for a URL of another kind."""
    if url.startswith(POSTGRES_SCHEMES):
        from .postgres import PostgresHistory  # psycopg is imported there only

        return PostgresHistory(url)
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        if not path.startswith("/") or path == "/":
            raise ConfigError(f"[history] url {url!r}: write sqlite:///absolute/path/history.sqlite3")
        from .sqlite import SqliteHistory

        return SqliteHistory(path)
    if "://" in url:
        raise ConfigError(f"[history] url {shown_url(url)!r}: use a file path, sqlite:///path or "
                          "postgresql://user@host/db (\"\" turns history off)")
    if not os.path.isabs(url):
        raise ConfigError(f"[history] url {url!r}: give an absolute path")
    from .sqlite import SqliteHistory

    return SqliteHistory(url)


class History:
    """What pages and the API read: searches that also see what is not written yet, stored tasks, series."""

    def __init__(self, store: HistoryStore, writer: HistoryWriter, state: State,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.writer = writer
        self.state = state
        self.clock = clock
        self._stats_lock = threading.Lock()
        self._stats_cache: dict[tuple[str, tuple[str, ...], tuple[str, ...]], tuple[float, dict[str, Any]]] = {}

    @property
    def shown(self) -> str:
        """Where history is kept, for people."""
        return self.store.shown

    def status(self) -> WriterStatus:
        """The writer's status (role, degraded, pending, dropped, lag, size)."""
        return self.writer.status()

    def search(self, query: TaskQuery, sort: str = "-seen", limit: int = 50, offset: int = 0) -> SearchPage:
        """One page of stored tasks matching `query`, with what memory knows better: a task's newest snapshot,
        and (on the first page, newest first) the matching changes not written yet."""
        page = self.store.search(query, sort, limit, offset)
        fresher = {view.id: view for view in self.state.tasks_by_id(view.id for view in page.tasks)}
        tasks = [fresher.get(view.id, view) for view in page.tasks]
        total = page.total
        if offset == 0 and sort_order(sort) == ("seen", True):
            shown = {view.id for view in tasks}
            unwritten = [view for view in self.state.tasks_by_id(self.writer.pending_ids())
                         if view.id not in shown and query.matches(view)]
            if unwritten:
                total += len(unwritten)
                tasks = sorted(tasks + unwritten, key=lambda view: first_seen(view) or 0.0, reverse=True)[:limit]
        return SearchPage(tasks, total, page.capped)

    def task(self, task_id: str) -> TaskView | None:
        """A stored task (memory is asked first by the callers)."""
        return self.store.get(task_id)

    def children(self, parent_id: str) -> list[TaskView]:
        """Stored children of a task."""
        return self.store.children(parent_id)

    def stats(self, window: str, names: Sequence[str] = (), queues: Sequence[str] = ()) -> dict[str, Any]:
        """Series per task name and per queue over a window (hour, day or week), JSON-ready; cached briefly."""
        if window not in WINDOWS:
            raise ValueError(f"window: must be one of {', '.join(WINDOWS)}")
        key = (window, tuple(names), tuple(queues))
        now = self.clock()
        with self._stats_lock:
            cached = self._stats_cache.get(key)
            if cached is not None and now - cached[0] < STATS_CACHE_SECONDS:
                return cached[1]
        result = self._stats(window, names, queues, now)
        with self._stats_lock:
            self._stats_cache[key] = (now, result)
            if len(self._stats_cache) > 64:
                self._stats_cache.pop(next(iter(self._stats_cache)))
        return result

    def _stats(self, window: str, names: Sequence[str], queues: Sequence[str], now: float) -> dict[str, Any]:
        first, points, step = window_range(window, now)
        rows = self.store.minutes(first, names, queues)
        samples = self.store.samples(first * 60.0, queues)
        by_name: dict[str, list[MinuteRow]] = {}
        by_queue: dict[str, list[MinuteRow]] = {}
        for row in rows:
            by_name.setdefault(row.name, []).append(row)
            by_queue.setdefault(row.queue or "(unknown)", []).append(row)
        depth_by_queue: dict[str, list[QueueSample]] = {}
        for sample in samples:
            depth_by_queue.setdefault(sample.queue, []).append(sample)

        def task_part(group: list[MinuteRow]) -> dict[str, Any]:
            series = task_series(group, first, points, step)
            return {"totals": totals(series, group),
                    "series": [{"t": point.start * 60, "succeeded": point.succeeded, "failed": point.failed,
                                "failure_rate": point.failure_rate, "p50": point.p50, "p95": point.p95}
                               for point in series]}

        tasks = [{"name": name, **task_part(group)} for name, group in sorted(by_name.items())]
        queue_names = sorted(set(by_queue) | set(depth_by_queue))
        queue_parts = []
        for queue in queue_names:
            depth = depth_series(depth_by_queue.get(queue, []), first, points, step)
            queue_parts.append({"queue": queue, **task_part(by_queue.get(queue, [])),
                                "depth": [{"t": point.start * 60, "depth": point.depth,
                                           "consumers": point.consumers} for point in depth]})
        return {"window": window, "start": first * 60, "step_seconds": step * 60, "points": points,
                "tasks": tasks, "queues": queue_parts}

    def write_now(self, views: Sequence[TaskView]) -> None:
        """Write snapshots at once, outside the writer (tests and benchmarks fill a store this way)."""
        self.store.open()
        self.store.write(WriteBatch.of_views(views))
