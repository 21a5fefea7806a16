"""How a task is stored (pure): one flat row per task, the same columns in every store.

Encoding runs on the history writer's thread for every changed task, so it reads the compact record directly
(under the state's lock) instead of building a snapshot first, and it builds no JSON: the timeline is one text
of entries "code US timestamp US host" separated by RS (ASCII unit and record separators; a host name holding
either loses them), and the rare notes (retries, revokes) are JSON only when there are any.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, Final

from .fields import Interner
from .tasks import _ENTRY, HostTable, TaskRecord, TaskView, record_from_view, task_view

#: The task columns, in the order every store reads and writes them.
COLUMNS: Final = ("id", "name", "state", "queue", "worker", "seen", "updated", "runtime", "retries", "root_id",
                  "parent_id", "args", "kwargs", "result", "exception", "traceback", "exchange", "routing_key",
                  "eta", "expires", "not_registered", "timeline", "details")
TEXT_COLUMNS: Final = ("args", "kwargs", "result", "exception", "traceback")
NAME, QUEUE, SEEN, UPDATED = (COLUMNS.index(column) for column in ("name", "queue", "seen", "updated"))
_US: Final = "\x1f"
_RS: Final = "\x1e"
_SEPARATORS: Final = str.maketrans({_US: "?", _RS: "?"})


def record_row(task: TaskRecord, hosts: HostTable) -> tuple[Any, ...]:
    """The row of a record (call under the state's lock)."""
    entries = []
    seen = updated = task.state_ts
    first = True
    for ts, code, host in _ENTRY.iter_unpack(task.timeline):
        if first:
            seen, first = ts, False
        updated = ts
        name = hosts.name(host) if host else None
        if name is None:
            entries.append(f"{code}{_US}{ts!r}")
        else:
            if _US in name or _RS in name:
                name = name.translate(_SEPARATORS)
            entries.append(f"{code}{_US}{ts!r}{_US}{name}")
    details = json.dumps(task.details, ensure_ascii=False) if task.details else None
    return (task.id, task.name, task.state, task.queue, task.worker, seen, updated, task.runtime, task.retries,
            task.root_id, task.parent_id, task.args, task.kwargs, task.result, task.exception, task.traceback,
            task.exchange, task.routing_key, task.eta, task.expires, 1 if task.not_registered else 0,
            _RS.join(entries), details)


def view_row(view: TaskView) -> tuple[Any, ...]:
    """The row of a snapshot (tests and benchmarks; the writer encodes records)."""
    hosts = HostTable()
    return record_row(record_from_view(view, Interner(), hosts, 1 << 30, 1 << 16), hosts)


def row_view(row: Sequence[Any]) -> TaskView:
    """The snapshot a stored row holds (COLUMNS order)."""
    hosts = HostTable()
    return task_view(row_record(row, _same, hosts), hosts)


def row_record(row: Sequence[Any], intern: Callable[[object], str | None], hosts: HostTable) -> TaskRecord:
    """The record a stored row holds (a warm restart builds these straight into the state), its strings shared
    through `intern` and its hosts numbered in `hosts`."""
    (task_id, name, state, queue, worker, seen, updated, runtime, retries, root_id, parent_id, args, kwargs,
     result, exception, traceback, exchange, routing_key, eta, expires, not_registered, timeline, details) = row
    task = TaskRecord(task_id, state, float(updated))
    task.name, task.queue, task.worker = intern(name), intern(queue), intern(worker)
    task.runtime, task.retries = runtime, int(retries or 0)
    task.root_id = task_id if root_id == task_id else root_id
    task.parent_id = parent_id
    task.args, task.kwargs, task.result, task.exception, task.traceback = args, kwargs, result, exception, traceback
    task.exchange, task.routing_key = intern(exchange), intern(routing_key)
    task.eta, task.expires = eta, expires
    task.not_registered = bool(not_registered)
    packed = []
    for entry in timeline.split(_RS) if timeline else ():
        parts = entry.split(_US)
        host = intern(parts[2]) if len(parts) > 2 else None
        packed.append(_ENTRY.pack(float(parts[1]), int(parts[0]), hosts.index(host)))
    task.timeline = b"".join(packed)
    if details:
        task.details = tuple((float(ts), int(code), str(text)) for ts, code, text in json.loads(details))
    task.version = 1
    return task


def _same(value: object) -> str | None:
    return value if isinstance(value, str) else None
