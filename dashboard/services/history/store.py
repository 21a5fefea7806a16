"""The history store's interface, one implementation per database (sqlite.py, postgres.py), and what they share:
the query compiler (a TaskQuery to SQL, parameters always bound) and the value types."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ...exceptions import DashboardError
from ...model.search import TaskQuery, glob_prefix, is_glob, sort_order
from ...model.series import MinuteRow, QueueSample
from ...model.state import TaskView
from ...model.state.rows import COLUMNS, view_row

#: A search counts its matches up to here, then says "at least": counting every one of millions of matches would
#: cost more than the page itself.
COUNT_CAP: Final = 10_000
#: Rows a retention pass deletes per statement (each its own transaction: the writer never holds the lock long).
PRUNE_BATCH: Final = 5_000


class HistoryUnavailable(DashboardError):
    """The history store cannot be reached, read or written (the message says which and why)."""


@dataclass(frozen=True)
class SearchPage:
    """One page of a search, newest first unless sorted otherwise; `total` is exact unless `capped`."""

    tasks: list[TaskView]
    total: int
    capped: bool = False


@dataclass(frozen=True)
class StoreInfo:
    """The store's size, for the status page and /metrics."""

    tasks: int
    bytes: int | None
    minutes: int = 0
    samples: int = 0


@dataclass
class WriteBatch:
    """What one group commit writes: task rows (model.state.rows, upserted), minute buckets (replaced) and
    queue samples."""

    tasks: list[tuple[Any, ...]] = field(default_factory=list)
    minutes: list[MinuteRow] = field(default_factory=list)
    samples: list[QueueSample] = field(default_factory=list)

    @classmethod
    def of_views(cls, views: Sequence[TaskView]) -> WriteBatch:
        """A batch of snapshots (tests and benchmarks; the writer reads rows from the state directly)."""
        return cls([view_row(view) for view in views])

    def __bool__(self) -> bool:
        return bool(self.tasks or self.minutes or self.samples)


class WriterLock(abc.ABC):
    """Who writes: at most one holder among every process and replica sharing the store."""

    @abc.abstractmethod
    def try_acquire(self) -> bool:
        """Take the lock if free (never waits); True while held. Raises HistoryUnavailable when it cannot ask."""

    @abc.abstractmethod
    def still_held(self) -> bool:
        """True while the lock is still ours (a lost database session loses it)."""

    @abc.abstractmethod
    def release(self) -> None:
        """Give the lock up (never raises)."""


class HistoryStore(abc.ABC):
    """Tasks, minute buckets and queue samples, in one database. Reads may come from any thread; writes come
    from the writer thread only, while it holds the writer lock."""

    kind: str = ""
    shown: str = ""  # where, for people (credentials masked)

    @abc.abstractmethod
    def open(self) -> None:
        """Connect and bring the schema up to date (HistoryUnavailable when it cannot)."""

    @abc.abstractmethod
    def writer_lock(self) -> WriterLock:
        """The lock that elects the writer."""

    @abc.abstractmethod
    def write(self, batch: WriteBatch) -> None:
        """Write one batch in one transaction (HistoryUnavailable when it fails: nothing of it is kept)."""

    @abc.abstractmethod
    def search(self, query: TaskQuery, sort: str = "-seen", limit: int = 50, offset: int = 0) -> SearchPage:
        """One page of the tasks matching `query`."""

    @abc.abstractmethod
    def get(self, task_id: str) -> TaskView | None:
        """One stored task."""

    @abc.abstractmethod
    def newest(self, limit: int, below: int | None = None) -> tuple[list[tuple[Any, ...]], int | None]:
        """The newest stored tasks' rows (newest first) under position `below`, and the position to continue
        from (None at the end)."""

    @abc.abstractmethod
    def children(self, parent_id: str, limit: int = 200) -> list[TaskView]:
        """Stored tasks whose parent is `parent_id`."""

    @abc.abstractmethod
    def minutes(self, since_minute: int, names: Sequence[str] = (), queues: Sequence[str] = ()) -> list[MinuteRow]:
        """Minute buckets from `since_minute` on, of the given names / queues (all when empty)."""

    @abc.abstractmethod
    def samples(self, since: float, queues: Sequence[str] = ()) -> list[QueueSample]:
        """Queue depth samples from `since` on."""

    @abc.abstractmethod
    def prune(self, older_than: float | None, keep: int | None) -> int:
        """Delete tasks first seen before `older_than` and all but the newest `keep`, and buckets and samples
        older than `older_than`, in batches; how many tasks went."""

    @abc.abstractmethod
    def info(self) -> StoreInfo:
        """Row counts and size."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release every connection (never raises)."""


# -- the query compiler, shared by the SQL stores ------------------------------------------------------------


class Dialect:
    """What differs between the SQL stores when a query is compiled."""

    param = "?"

    def glob(self, column: str, pattern: str) -> tuple[str, list[Any]]:
        """A case-sensitive glob test on `column`."""
        raise NotImplementedError


def where_of(query: TaskQuery, dialect: Dialect) -> tuple[list[str], list[Any]]:
    """The WHERE conditions and their parameters for everything in `query` but the free text."""
    p = dialect.param
    clauses: list[str] = []
    params: list[Any] = []
    for flt in query.filters:
        column = flt.key  # one of VALUE_KEYS: column names are ours, values always bound
        parts: list[str] = []
        if flt.key == "id":
            for prefix in flt.values:
                parts.append(f"({column} >= {p} AND {column} < {p})")
                params += [prefix, _prefix_end(prefix)]
        else:
            exact = [value for value in flt.values if flt.key == "state" or not is_glob(value)]
            if exact:
                parts.append(f"{column} IN ({', '.join([p] * len(exact))})")
                params += exact
            for pattern in (value for value in flt.values if value not in exact):
                prefix = glob_prefix(pattern)
                glob_sql, glob_params = dialect.glob(column, pattern)
                if prefix:  # a range the column's index can seek to, then the glob itself
                    parts.append(f"({column} >= {p} AND {column} < {p} AND {glob_sql})")
                    params += [prefix, _prefix_end(prefix), *glob_params]
                else:
                    parts.append(glob_sql)
                    params += glob_params
        test = " OR ".join(parts)
        clauses.append(f"({column} IS NULL OR NOT ({test}))" if flt.negated else f"({test})")
    if query.since is not None:
        clauses.append(f"seen >= {p}")
        params.append(query.since)
    if query.until is not None:
        clauses.append(f"seen < {p}")
        params.append(query.until)
    return clauses, params


def order_of(sort: str, position: str) -> str:
    """ORDER BY for a SEARCH_SORTS value; `position` is the column that orders by first sighting."""
    column, descending = sort_order(sort)  # one of our own column names
    direction = "DESC" if descending else "ASC"
    if column == "seen":
        return f"{position} {direction}"
    return f"tasks.{column} {direction} NULLS LAST, {position} DESC"


def _prefix_end(prefix: str) -> str:
    """The smallest string greater than every string starting with `prefix`."""
    if not prefix or ord(prefix[-1]) >= 0x10FFFF:
        return prefix + "\U0010ffff"
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


SELECT_COLUMNS: Final = ", ".join(f"tasks.{column}" for column in COLUMNS)
