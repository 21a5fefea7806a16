"""Operator actions: on one task (revoke, terminate, dispatch again), on many (bulk), on one worker. No Flask."""

from __future__ import annotations

from dataclasses import dataclass

from .bulk import BulkActions, BulkJob, Preview, TaskSelector, state_selector
from .control import Control
from .tasks import BULK_REDISPATCH_ACTION, REDISPATCH_ACTION, Links, RevokeOutcome, TaskActions, queue_consumers
from .workers import RegisteredTask, WorkerControl, WorkerDetail


@dataclass(frozen=True)
class Actions:
    """The action services of one app, built once by the composition root."""

    tasks: TaskActions
    bulk: BulkActions
    workers: WorkerControl


__all__ = [
    "BULK_REDISPATCH_ACTION", "REDISPATCH_ACTION", "Actions", "BulkActions", "BulkJob", "Control", "Links",
    "Preview", "RegisteredTask", "RevokeOutcome", "TaskActions", "TaskSelector", "WorkerControl", "WorkerDetail",
    "queue_consumers", "state_selector",
]
