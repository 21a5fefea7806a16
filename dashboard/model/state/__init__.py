"""Bounded in-memory cluster state fed by Celery events: tasks, workers, counts."""

from __future__ import annotations

from .fields import TRUNCATION_MARK
from .store import DEFAULT_SORT, SORT_KEYS, Change, Counts, State
from .tasks import EVENT_STATES, TASK_EVENT_TYPES, TaskView, TimelineEntry
from .workers import HEARTBEAT_EXPIRE_WINDOW, WorkerView, heartbeat_expires

__all__ = [
    "DEFAULT_SORT",
    "SORT_KEYS",
    "EVENT_STATES",
    "HEARTBEAT_EXPIRE_WINDOW",
    "TASK_EVENT_TYPES",
    "TRUNCATION_MARK",
    "Change",
    "Counts",
    "State",
    "TaskView",
    "TimelineEntry",
    "WorkerView",
    "heartbeat_expires",
]
