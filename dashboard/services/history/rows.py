"""How a task is stored: one row per task, the same columns in every store (encoding only, no I/O).

The columns a search filters or sorts on are columns of their own (name, state, queue, worker, seen, runtime and
the five text fields); what is only shown (exchange, routing key, eta, expires, the timeline) travels as one
compact JSON text, `extra`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any, Final

from ...model.search import first_seen
from ...model.state import TASK_EVENT_TYPES, TaskView, TimelineEntry

#: The task columns, in the order every store reads and writes them.
COLUMNS: Final = ("id", "name", "state", "queue", "worker", "seen", "updated", "runtime", "retries", "root_id",
                  "parent_id", "args", "kwargs", "result", "exception", "traceback", "extra")
TEXT_COLUMNS: Final = ("args", "kwargs", "result", "exception", "traceback")
_CODES: Final = {kind: code for code, kind in enumerate(TASK_EVENT_TYPES)}
_EXTRA_KEYS: Final = (("exchange", "e"), ("routing_key", "r"), ("eta", "eta"), ("expires", "x"))
_TIMESTAMP_KEYS: Final = tuple(kind.removeprefix("task-") for kind in TASK_EVENT_TYPES)


def row_of(task: TaskView) -> tuple[Any, ...]:
    """The row for a snapshot, in COLUMNS order."""
    timeline = [[_CODES[entry.type], round(entry.timestamp, 6), entry.hostname, entry.detail]
                for entry in task.timeline]
    for entry in timeline:  # trailing nulls are dropped: most entries carry no host (sent) or no note
        while entry and entry[-1] is None:
            entry.pop()
    extra: dict[str, Any] = {"t": timeline}
    for key, short in _EXTRA_KEYS:
        value = getattr(task, key)
        if value is not None:
            extra[short] = value
    if task.not_registered:
        extra["nr"] = 1
    seen = first_seen(task)
    updated = task.timeline[-1].timestamp if task.timeline else seen
    return (task.id, task.name, task.state, task.queue, task.worker, seen if seen is not None else 0.0,
            updated if updated is not None else 0.0, task.runtime, task.retries, task.root_id, task.parent_id,
            task.args, task.kwargs, task.result, task.exception, task.traceback,
            json.dumps(extra, separators=(",", ":"), ensure_ascii=False))


def view_of(row: Sequence[Any]) -> TaskView:
    """The snapshot a stored row holds (COLUMNS order)."""
    (task_id, name, state, queue, worker, _seen, _updated, runtime, retries, root_id, parent_id, args, kwargs,
     result, exception, traceback, extra_text) = row
    extra = json.loads(extra_text) if extra_text else {}
    timeline = tuple(_entry(raw) for raw in extra.get("t", ()) if _known(raw))
    timestamps = {_TIMESTAMP_KEYS[_CODES[entry.type]]: entry.timestamp for entry in timeline}
    return TaskView(
        id=task_id, name=name, state=state, queue=queue, exchange=extra.get("e"), routing_key=extra.get("r"),
        worker=worker, args=args, kwargs=kwargs, result=result, exception=exception, traceback=traceback,
        runtime=runtime, retries=int(retries or 0), eta=extra.get("eta"), expires=extra.get("x"), root_id=root_id,
        parent_id=parent_id, not_registered=bool(extra.get("nr")), timestamps=MappingProxyType(timestamps),
        timeline=timeline, version=0,
    )


def _known(raw: Any) -> bool:
    return isinstance(raw, list) and len(raw) >= 2 and isinstance(raw[0], int) and 0 <= raw[0] < len(TASK_EVENT_TYPES)


def _entry(raw: list[Any]) -> TimelineEntry:
    host = raw[2] if len(raw) > 2 else None
    detail = raw[3] if len(raw) > 3 else None
    return TimelineEntry(TASK_EVENT_TYPES[raw[0]], float(raw[1]), host, detail)
