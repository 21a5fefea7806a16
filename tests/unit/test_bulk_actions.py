"""Bulk jobs without a broker: the real state, selection and audit log (in memory), a recording control channel."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, cast

import pytest

from dashboard.model.actions import ActionError, RevokeRequest, Selection
from dashboard.model.state import State
from dashboard.services.actions import BulkActions, Control, TaskActions, state_selector
from dashboard.services.audit import AuditLog, Origin

WORKER = "w1@host"
NAME = "worker.tasks.demo.sleep"


class RecordingControl:
    """Answers every revoke as the one online worker would, and remembers what was asked."""

    timeout = 2.0

    def __init__(self) -> None:
        self.revokes: list[tuple[list[str], bool, str, int | None]] = []

    def revoke(self, task_ids: Sequence[str], *, terminate: bool, signal: str,
               expected: int | None) -> dict[str, Any]:
        self.revokes.append((list(task_ids), terminate, signal, expected))
        return {WORKER: {"ok": f"tasks {', '.join(task_ids)} flagged as revoked"}} if expected else {}


def routing(orphaned: frozenset[str] = frozenset()) -> Any:
    """What TaskActions reads of the routing service: the report's consumers per queue, and a live stream."""
    def queue(name: str) -> Any:
        return SimpleNamespace(consumers=() if name in orphaned else (WORKER,))

    return SimpleNamespace(report=SimpleNamespace(queue=queue), stream=SimpleNamespace(live=True))


def state_with(tasks: list[tuple[str, str, str]], *, online: bool = True) -> State:
    """(id, event type, queue) tasks, and worker w1 online (or not)."""
    state = State(1000)
    now = time.time()
    if online:
        state.apply({"type": "worker-online", "hostname": WORKER, "timestamp": now, "freq": 60})
    for task_id, kind, queue in tasks:
        state.apply({"type": "task-sent", "uuid": task_id, "name": NAME, "queue": queue, "timestamp": now,
                     "hostname": "api"})
        if kind != "task-sent":
            state.apply({"type": kind, "uuid": task_id, "hostname": WORKER, "timestamp": now + 0.1})
    return state


def bulk(state: State, control: RecordingControl, audit: AuditLog, *, limit: int = 100,
         orphaned: frozenset[str] = frozenset()) -> BulkActions:
    tasks = TaskActions(state, routing(orphaned), cast(Control, control), cast(Any, None), cast(Any, None), audit,
                        cast(Any, None))
    return BulkActions(state_selector(state), tasks, cast(Control, control), audit, limit)


def finished(actions: BulkActions, job_id: str) -> Any:
    deadline = time.monotonic() + 5
    while (job := actions.job(job_id)) is not None and job.finished is None:
        assert time.monotonic() < deadline, "the bulk job did not finish"
        time.sleep(0.01)
    return job


@pytest.fixture
def audit() -> Any:
    with AuditLog(":memory:") as log:
        yield log


def test_a_preview_counts_the_unfinished_tasks_and_caps_them(audit: AuditLog) -> None:
    state = state_with([("a", "task-started", "q"), ("b", "task-sent", "q"), ("c", "task-received", "q"),
                        ("d", "task-succeeded", "q")])
    actions = bulk(state, RecordingControl(), audit, limit=2)

    preview = actions.preview("revoke", Selection(name=NAME))

    assert (preview.matching, preview.taken, preview.capped) == (3, 2, True)  # the finished one is not counted
    assert preview.problem is None and len(preview.sample) == 2
    assert actions.preview("revoke", Selection(state="SUCCESS")).problem is not None


def test_a_run_revokes_each_task_once_and_is_audited_once(audit: AuditLog) -> None:
    state = state_with([("a", "task-started", "q"), ("b", "task-received", "q"), ("c", "task-sent", "orphan"),
                        ("d", "task-succeeded", "q")])
    control = RecordingControl()
    actions = bulk(state, control, audit, orphaned=frozenset({"orphan"}))

    job = actions.start("revoke", Selection(name=NAME), Origin("ops"), expected=3,
                        revoke=RevokeRequest(terminate=True, signal="SIGKILL"))
    job = finished(actions, job.id)

    assert job.counts == {"skipped": 1, "revoked": 2} and job.done == job.total == 3
    assert control.revokes == [(["b", "a"], True, "SIGKILL", 1)]
    [entry], total = audit.actions(action="tasks.bulk_revoke")
    detail = json.loads(entry.detail)
    assert (total, entry.outcome, entry.who) == (1, "done", "ops")
    assert detail["outcomes"] == {"skipped": ["c"], "revoked": ["b", "a"]} and detail["count"] == 3
    assert detail["filters"] == {"name": NAME}


def test_more_matching_than_previewed_is_refused(audit: AuditLog) -> None:
    state = state_with([("a", "task-started", "q"), ("b", "task-started", "q")])
    actions = bulk(state, RecordingControl(), audit)

    with pytest.raises(ActionError) as refused:
        actions.start("revoke", Selection(), Origin(), expected=1)

    assert refused.value.status == 409 and "preview again" in refused.value.message
    with pytest.raises(ActionError, match="nothing to do"):
        actions.start("revoke", Selection(name="no.such.task"), Origin(), expected=None)


def test_without_an_online_worker_nothing_is_sent(audit: AuditLog) -> None:
    state = state_with([("a", "task-received", "q")], online=False)
    control = RecordingControl()
    actions = bulk(state, control, audit)

    job = finished(actions, actions.start("revoke", Selection(), Origin(), expected=1).id)

    assert job.counts == {"skipped": 1} and control.revokes == []
