"""Compact per-task records, Celery's state-precedence rules and immutable task views."""

from __future__ import annotations

import ast
import re
import struct
from bisect import bisect_right
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, NamedTuple

from .fields import Interner, as_float, as_int, as_text, clip

#: Task event types in timeline-code order (the code is the index).
TASK_EVENT_TYPES: Final = (
    "task-sent",
    "task-received",
    "task-started",
    "task-succeeded",
    "task-failed",
    "task-retried",
    "task-revoked",
    "task-rejected",
)
TASK_EVENT_CODES: Final[dict[str, int]] = {kind: code for code, kind in enumerate(TASK_EVENT_TYPES)}
SENT: Final = 0
SUCCEEDED: Final = 3
FAILED: Final = 4
RETRIED: Final = 5
REVOKED: Final = 6
REJECTED: Final = 7

# Celery (TASK_EVENT_TO_STATE) maps task-sent to PENDING, not to a "SENT" state.
EVENT_STATES: Final = (
    "PENDING",
    "RECEIVED",
    "STARTED",
    "SUCCESS",
    "FAILURE",
    "RETRY",
    "REVOKED",
    "REJECTED",
)
STATES: Final = frozenset(EVENT_STATES)
RETRY: Final = "RETRY"
SUCCESS: Final = "SUCCESS"

# celery.states.PRECEDENCE as ranks: lower means later in a task's life.
# Rank 2 is Celery's slot for custom states, which this model does not create.
_PRECEDENCE: Final[dict[str, int]] = {
    "SUCCESS": 0,
    "FAILURE": 1,
    "REVOKED": 3,
    "STARTED": 4,
    "RECEIVED": 5,
    "REJECTED": 6,
    "RETRY": 7,
    "PENDING": 8,
}

# One timeline entry: timestamp, event code, index into HostTable: 11 bytes,
# where a tuple of three objects costs ~100 bytes per entry.
_ENTRY: Final = struct.Struct("<dBH")
_DETAIL_CAP: Final = 256
_ERROR_FIELDS: Final = frozenset({"exception", "traceback"})
_NOT_REGISTERED: Final = re.compile(r"NotRegistered\((?P<literal>.{1,1024})\)\s*", re.DOTALL)


def accepts(current: str, current_ts: float, new: str, new_ts: float) -> bool:
    """Return whether an event in state new may replace current (else it only fills gaps)."""
    if new == RETRY or current == RETRY:
        # A retry restarts the lifecycle, so precedence cannot order events
        # around it (Celery always accepts here); event time can.
        return new_ts >= current_ts
    new_rank, current_rank = _PRECEDENCE[new], _PRECEDENCE[current]
    # Same rank (a second STARTED after a lost retry event): newer wins.
    return new_rank < current_rank or (new_rank == current_rank and new_ts >= current_ts)


def recover_not_registered_name(exception: str) -> str | None:
    """Return the task name quoted inside a "NotRegistered('name')" repr, without eval."""
    match = _NOT_REGISTERED.fullmatch(exception)
    if match is None:
        return None
    try:
        name = ast.literal_eval(match.group("literal"))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return name if isinstance(name, str) and name else None


class HostTable:
    """Map hostnames to small integers so timeline entries can be packed."""

    __slots__ = ("_names", "_indexes")

    # Index 0 stands for "no hostname"; a uint16 leaves room for 65,535 hosts.
    CAPACITY: Final = 0xFFFF

    def __init__(self) -> None:
        """Create a table holding only the "no hostname" entry."""
        self._names: list[str | None] = [None]
        self._indexes: dict[str, int] = {}

    def index(self, hostname: str | None) -> int:
        """Return the index for hostname, adding it while there is room."""
        if hostname is None:
            return 0
        found = self._indexes.get(hostname)
        if found is not None:
            return found
        if len(self._names) > self.CAPACITY:
            # Lossy past 65k distinct hosts (producers restart as gen<pid>@host);
            # the entry keeps its time and type, only the hostname is dropped.
            return 0
        self._indexes[hostname] = len(self._names)
        self._names.append(hostname)
        return len(self._names) - 1

    def name(self, index: int) -> str | None:
        """Return the hostname stored at index."""
        return self._names[index]


class TaskRecord:
    """Mutable state of one task, owned by the event thread; ~600 bytes in all."""

    __slots__ = (
        "id", "name", "state", "state_ts", "args", "kwargs", "queue", "exchange",
        "routing_key", "worker", "result", "exception", "traceback", "runtime",
        "retries", "eta", "expires", "root_id", "parent_id", "timeline", "details",
        "not_registered", "version",
    )  # fmt: skip

    def __init__(self, task_id: str, state: str, state_ts: float) -> None:
        """Create a record first seen in state at state_ts."""
        self.id = task_id
        self.name: str | None = None
        self.state = state
        self.state_ts = state_ts
        self.args: str | None = None
        self.kwargs: str | None = None
        self.queue: str | None = None
        self.exchange: str | None = None
        self.routing_key: str | None = None
        self.worker: str | None = None
        self.result: str | None = None
        self.exception: str | None = None
        self.traceback: str | None = None
        self.runtime: float | None = None
        self.retries = 0
        self.eta: str | None = None
        self.expires: str | None = None
        self.root_id: str | None = None
        self.parent_id: str | None = None
        # Packed _ENTRY structs sorted by timestamp; per-type timestamps
        # (sent, started, ...) are read from here rather than stored twice.
        self.timeline = b""
        # (timestamp, code, text) for the rare events worth a note (retries, revokes).
        self.details: tuple[tuple[float, int, str], ...] = ()
        self.not_registered = False
        self.version = 0  # events applied to this record: a snapshot's identity, for caches of rendered forms


class TaskUpdater:
    """Apply task events to TaskRecords with Celery's precedence rules."""

    __slots__ = ("intern", "hosts", "text_cap", "timeline_cap", "_coercions")

    def __init__(self, intern: Interner, hosts: HostTable, text_cap: int, timeline_cap: int) -> None:
        """Share the owner's interner and host table; cap strings and timelines."""
        self.intern = intern
        self.hosts = hosts
        self.text_cap = text_cap
        self.timeline_cap = timeline_cap
        # Which optional event fields are copied, and how each is made small.
        self._coercions: tuple[tuple[tuple[str, ...], Callable[[object], str | None]], ...] = (
            (("queue", "exchange", "routing_key"), intern),
            (("args", "kwargs", "result", "exception", "traceback"), self._clip),
            (("eta", "expires", "parent_id"), as_text),
        )

    def apply(
        self, task: TaskRecord, code: int, event: Mapping[str, Any], ts: float, host: str | None
    ) -> None:
        """Apply one task event (code from TASK_EVENT_CODES) at timestamp ts."""
        state = EVENT_STATES[code]
        accepted = accepts(task.state, task.state_ts, state, ts)
        if accepted:
            task.state = state
            task.state_ts = ts
        # A late event only fills fields still unknown (Celery's merge rules,
        # simplified: it never overwrites what a logically later event set).
        fill = not accepted
        get = event.get
        intern = self.intern

        name = intern(get("name"))
        if name and (task.name is None or task.not_registered or not fill):
            task.name = name
        if code == FAILED and not name:
            self._note_not_registered(task, get("exception"))
        # A late retry's error must not reappear on a task that has succeeded.
        keep_outcome = fill and task.state == SUCCESS
        for attrs, coerce in self._coercions:
            for attr in attrs:
                raw = get(attr)
                if raw is None or (fill and getattr(task, attr) is not None):
                    continue
                if keep_outcome and attr in _ERROR_FIELDS:
                    continue
                setattr(task, attr, coerce(raw))
        root_id = as_text(get("root_id"))
        if root_id is not None and task.root_id is None:
            # Top-level tasks are their own root: share the id object (saves ~90 B).
            task.root_id = task.id if root_id == task.id else root_id
        runtime = as_float(get("runtime"))
        if runtime is not None and (task.runtime is None or not fill):
            task.runtime = runtime
        retries = as_int(get("retries"))
        if retries is not None and retries > task.retries:
            # A late task-received from an earlier attempt must not lower it.
            task.retries = retries
        if code != SENT and host is not None and (task.worker is None or not fill):
            # task-sent comes from the client, every other event from a worker.
            task.worker = host
        if accepted and code == SUCCEEDED:
            # exception describes the current outcome; an earlier attempt's
            # error stays in the timeline details of its task-retried entry.
            task.exception = task.traceback = None
        self._add_to_timeline(task, code, ts, host, event)

    def _clip(self, value: object) -> str | None:
        """Clip value to the configured text cap."""
        return clip(value, self.text_cap)

    def _note_not_registered(self, task: TaskRecord, exception: object) -> None:
        """Mark a worker-side NotRegistered failure and recover the name if unknown."""
        if not isinstance(exception, str) or not exception.startswith("NotRegistered("):
            return
        task.not_registered = True
        if task.name is None:
            task.name = self.intern(recover_not_registered_name(exception))

    def _add_to_timeline(
        self, task: TaskRecord, code: int, ts: float, host: str | None, event: Mapping[str, Any]
    ) -> None:
        """Insert the entry in timestamp order and keep the timeline bounded."""
        entry = _ENTRY.pack(ts, code, self.hosts.index(host))
        timeline = task.timeline
        if not timeline or ts >= _ENTRY.unpack_from(timeline, len(timeline) - _ENTRY.size)[0]:
            timeline += entry  # the common, in-order case: no decoding
        else:
            entries = [timeline[i : i + _ENTRY.size] for i in range(0, len(timeline), _ENTRY.size)]
            stamps = [_ENTRY.unpack(raw)[0] for raw in entries]
            # bisect_right keeps arrival order among equal timestamps.
            entries.insert(bisect_right(stamps, ts), entry)
            timeline = b"".join(entries)
        if len(timeline) > self.timeline_cap * _ENTRY.size:
            # Keep the first entry (usually task-sent) and the newest ones.
            timeline = timeline[: _ENTRY.size] + timeline[2 * _ENTRY.size :]
        task.timeline = timeline
        detail = _detail(code, event)
        if detail is not None:
            details = task.details + ((ts, code, detail),)
            task.details = details[-self.timeline_cap :]


def _detail(code: int, event: Mapping[str, Any]) -> str | None:
    """Return the one-line note a timeline entry of this type carries, if any."""
    if code == RETRIED:
        return clip(event.get("exception"), _DETAIL_CAP)
    if code == REVOKED:
        signum = as_text(event.get("signum"))
        parts = [
            "terminated" if event.get("terminated") else "",
            f"signum={signum}" if signum else "",
            "expired" if event.get("expired") else "",
        ]
        return ", ".join(part for part in parts if part) or None
    if code == REJECTED:
        return "requeue" if event.get("requeue") else None
    return None


class TimelineEntry(NamedTuple):
    """One event in a task's life, as readers see it."""

    type: str
    timestamp: float
    hostname: str | None
    detail: str | None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "type": self.type,
            "timestamp": self.timestamp,
            "hostname": self.hostname,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class TaskView:
    """Immutable snapshot of one task."""

    id: str
    name: str | None
    state: str
    queue: str | None
    exchange: str | None
    routing_key: str | None
    worker: str | None
    args: str | None
    kwargs: str | None
    result: str | None
    exception: str | None
    traceback: str | None
    runtime: float | None
    retries: int
    eta: str | None
    expires: str | None
    root_id: str | None
    parent_id: str | None
    not_registered: bool
    timestamps: Mapping[str, float]
    timeline: tuple[TimelineEntry, ...]
    version: int = 0  # how many events made this snapshot (not in to_dict: an internal cache key)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (the JSON API's task shape)."""
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "queue": self.queue,
            "exchange": self.exchange,
            "routing_key": self.routing_key,
            "worker": self.worker,
            "args": self.args,
            "kwargs": self.kwargs,
            "result": self.result,
            "exception": self.exception,
            "traceback": self.traceback,
            "runtime": self.runtime,
            "retries": self.retries,
            "eta": self.eta,
            "expires": self.expires,
            "root_id": self.root_id,
            "parent_id": self.parent_id,
            "not_registered": self.not_registered,
            "timestamps": {kind: self.timestamps.get(kind) for kind in TIMESTAMP_KEYS},
            "timeline": [entry.to_dict() for entry in self.timeline],
        }


#: Keys of TaskView.timestamps: "sent" for task-sent, and so on.
TIMESTAMP_KEYS: Final = tuple(kind.removeprefix("task-") for kind in TASK_EVENT_TYPES)


def _derived(code: int, task: TaskRecord) -> str | None:
    """The note of an entry whose event stored none: made from the task's own fields when read, so the timeline
    says where the task went, how long it ran and why it failed without holding more per task."""
    if code == SENT and task.queue:
        return f"to queue {task.queue}"
    if code == SUCCEEDED and task.runtime is not None:
        return f"ran {task.runtime:.3f} s"
    if code == FAILED and task.exception:
        return clip(task.exception, _DETAIL_CAP)
    return None


def first_timestamp(timeline: bytes) -> float | None:
    """The earliest entry's time in a packed timeline (None when empty)."""
    return _ENTRY.unpack_from(timeline)[0] if timeline else None


def record_from_view(view: TaskView, intern: Interner, hosts: HostTable, text_cap: int,
                     timeline_cap: int) -> TaskRecord:
    """A record rebuilt from a stored snapshot (a warm restart): the inverse of task_view, notes that the record's
    own fields would derive again left out."""
    timeline = view.timeline[-timeline_cap:] if len(view.timeline) > timeline_cap else view.timeline
    last = timeline[-1].timestamp if timeline else 0.0
    task = TaskRecord(view.id, view.state, last)
    task.name = intern(view.name)
    task.queue, task.exchange, task.routing_key = intern(view.queue), intern(view.exchange), intern(view.routing_key)
    task.worker = intern(view.worker)
    task.args, task.kwargs = clip(view.args, text_cap), clip(view.kwargs, text_cap)
    task.result, task.exception = clip(view.result, text_cap), clip(view.exception, text_cap)
    task.traceback = clip(view.traceback, text_cap)
    task.runtime, task.retries = view.runtime, view.retries
    task.eta, task.expires = view.eta, view.expires
    task.root_id = task.id if view.root_id == view.id else view.root_id
    task.parent_id = view.parent_id
    task.not_registered = view.not_registered
    codes = [(entry, TASK_EVENT_CODES.get(entry.type)) for entry in timeline]
    task.timeline = b"".join(_ENTRY.pack(entry.timestamp, code, hosts.index(intern(entry.hostname)))
                             for entry, code in codes if code is not None)
    task.details = tuple((entry.timestamp, code, entry.detail) for entry, code in codes
                         if code is not None and entry.detail and entry.detail != _derived(code, task))
    task.version = 1
    return task


def task_view(task: TaskRecord, hosts: HostTable) -> TaskView:
    """Return an immutable snapshot of task (call under the owner's lock)."""
    notes = {(ts, code): text for ts, code, text in task.details}
    timeline = tuple(
        TimelineEntry(TASK_EVENT_TYPES[code], ts, hosts.name(host), notes.get((ts, code)) or _derived(code, task))
        for ts, code, host in _ENTRY.iter_unpack(task.timeline)
    )
    # The timeline is sorted, so the last entry of each type wins, as in
    # Celery where the latest task-received (of the last retry) sets .received.
    timestamps = {TIMESTAMP_KEYS[TASK_EVENT_CODES[entry.type]]: entry.timestamp for entry in timeline}
    return TaskView(
        id=task.id,
        name=task.name,
        state=task.state,
        queue=task.queue,
        exchange=task.exchange,
        routing_key=task.routing_key,
        worker=task.worker,
        args=task.args,
        kwargs=task.kwargs,
        result=task.result,
        exception=task.exception,
        traceback=task.traceback,
        runtime=task.runtime,
        retries=task.retries,
        eta=task.eta,
        expires=task.expires,
        root_id=task.root_id,
        parent_id=task.parent_id,
        not_registered=task.not_registered,
        timestamps=MappingProxyType(timestamps),
        timeline=timeline,
        version=task.version,
    )
