"""Bulk actions over a selection of tasks: a preview (how many, which), then a job that acts on each, with progress,
recorded in the audit log once (the selection, the count, and the outcome of each task).

The selection is a function of the filters (`TaskSelector`), so a search over a task history can take the place of
the in-memory state's filters without touching the jobs. A job runs on a thread of its own; jobs are few (one per
operator click) and kept, finished, for a while so that the page polling them sees the end.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ...exceptions import BrokerUnavailable, DispatchRefused, RoutingError
from ...model.actions import (
    BULK_SAMPLE,
    UNFINISHED,
    ActionError,
    BulkKind,
    RevokeRequest,
    Selection,
    bulk_state,
    eligible,
    revoke_unheard,
)
from ...model.search import SearchError, fold_filters, parse_query
from ...model.secrets import reason
from ...model.state import State, TaskView
from ..audit import AuditStore, Origin, action_entry
from ..history import History, HistoryUnavailable
from ..inspection import NoReply
from .control import Control, answer_text
from .tasks import TaskActions, queue_consumers

log = logging.getLogger(__name__)

REVOKE_BATCH = 500  # ids per revoke broadcast
MAX_JOBS = 50  # jobs remembered (running ones are never dropped)
MAX_OUTCOMES_SHOWN = 1000


class TaskSelector(Protocol):
    """Which tasks match a selection: a page of them and how many match in all."""

    def __call__(self, selection: Selection, limit: int, offset: int) -> tuple[list[TaskView], int]: ...


def state_selector(state: State, history: History | None = None,
                   clock: Callable[[], float] = time.time) -> TaskSelector:
    """The selection, newest first: the tasks list's own filters over the in-memory state; with a search (`q`),
    the search with the filters folded in, over history when it is kept (every stored task), else over memory."""

    def select(selection: Selection, limit: int, offset: int) -> tuple[list[TaskView], int]:
        if selection.q is None:
            return state.tasks(selection.state, selection.name, selection.queue, selection.worker, limit, offset)
        try:
            query = parse_query(fold_filters(selection.q, selection.state, selection.name, selection.queue,
                                             selection.worker), clock())
        except SearchError as exc:
            raise ActionError(f"search: {exc}") from None
        if history is not None:
            try:
                found = history.search(query, limit=limit, offset=offset)
            except HistoryUnavailable as exc:
                raise ActionError(f"history cannot answer this search now: {exc}") from None
            return found.tasks, found.total
        return state.search(lambda task, seen: query.matches(task, seen), limit, offset,
                            needs_time=query.needs_time)

    return select


@dataclass(frozen=True)
class Preview:
    """What a bulk action would touch: how many match, how many it takes (capped), the first few."""

    kind: BulkKind
    selection: Selection
    matching: int
    taken: int
    limit: int
    sample: list[TaskView]
    problem: str | None = None

    @property
    def capped(self) -> bool:
        """True when more match than the action takes."""
        return self.matching > self.limit

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"action": self.kind, "filters": self.selection.to_dict(), "matching": self.matching,
                "count": self.taken, "limit": self.limit, "capped": self.capped, "problem": self.problem,
                "sample": [{"id": task.id, "name": task.name, "state": task.state, "queue": task.queue}
                           for task in self.sample]}


@dataclass
class BulkJob:
    """One bulk action under way or done: progress, and the outcome of each task."""

    id: str
    kind: BulkKind
    selection: Selection
    total: int
    who: str
    started: float
    done: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    outcomes: list[dict[str, Any]] = field(default_factory=list)  # the first MAX_OUTCOMES_SHOWN, for the page
    by_outcome: dict[str, list[str]] = field(default_factory=dict)
    again: dict[str, str] = field(default_factory=dict)  # original id -> the new task's id
    reasons: dict[str, int] = field(default_factory=dict)
    finished: float | None = None
    error: str | None = None

    def note(self, task_id: str, outcome: str, detail: str | None = None, new_id: str | None = None) -> None:
        """Record one task's outcome."""
        self.done += 1
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        self.by_outcome.setdefault(outcome, []).append(task_id)
        if detail:
            self.reasons[detail] = self.reasons.get(detail, 0) + 1
        if new_id:
            self.again[task_id] = new_id
        entry: dict[str, Any] = {"id": task_id, "outcome": outcome}
        if detail:
            entry["detail"] = detail
        if new_id:
            entry["task_id"] = new_id
        if len(self.outcomes) < MAX_OUTCOMES_SHOWN:
            self.outcomes.append(entry)

    def audit_detail(self) -> dict[str, Any]:
        """The audit entry's detail: the selection, the count, each task's outcome (ids by outcome, and for a
        dispatch again each original's new id) and the reasons given, with how often."""
        detail: dict[str, Any] = {"job": self.id, "filters": self.selection.to_dict(), "count": self.total,
                                  "counts": dict(self.counts), "outcomes": self.by_outcome, "reasons": self.reasons}
        if self.kind == "redispatch":
            detail["again"] = self.again
        return detail

    def to_dict(self, *, outcomes: bool = True) -> dict[str, Any]:
        """JSON-ready form."""
        body: dict[str, Any] = {
            "job": self.id, "action": self.kind, "filters": self.selection.to_dict(), "total": self.total,
            "done": self.done, "counts": dict(self.counts), "running": self.finished is None, "who": self.who,
            "started": self.started, "finished": self.finished, "error": self.error,
        }
        if outcomes:
            body["outcomes"] = list(self.outcomes)
        return body


class BulkActions:
    """Previews and runs bulk revokes and dispatches again."""

    def __init__(self, select: TaskSelector, tasks: TaskActions, control: Control, audit: AuditStore | None,
                 limit: int, clock: Callable[[], float] = time.time) -> None:
        self.select = select
        self.tasks = tasks
        self.control = control
        self.audit = audit
        self.limit = limit
        self.clock = clock
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, BulkJob] = OrderedDict()

    def preview(self, kind: BulkKind, selection: Selection) -> Preview:
        """How many tasks the action would take and the first few (nothing is done)."""
        taken_selection, problem = bulk_state(kind, selection)
        if problem is not None:
            return Preview(kind, selection, 0, 0, self.limit, [], problem)
        matching, total = self._matching(kind, taken_selection)
        return Preview(kind, taken_selection, total, len(matching), self.limit, matching[:BULK_SAMPLE])

    def _matching(self, kind: BulkKind, selection: Selection) -> tuple[list[TaskView], int]:
        """The tasks the action takes (newest first within each state, at most `limit`) and how many match in all:
        one selection per state it acts on, so the cap counts only tasks it would act on."""
        states = [selection.state] if selection.state else sorted(UNFINISHED) if kind == "revoke" else ["FAILURE"]
        found: list[TaskView] = []
        total = 0
        for state in states:
            page, matching = self.select(replace(selection, state=state), self.limit, 0)
            total += matching
            found.extend(task for task in page if eligible(kind, task.state))
        return found[: self.limit], total

    def start(self, kind: BulkKind, selection: Selection, origin: Origin, *, expected: int | None,
              revoke: RevokeRequest | None = None, force: bool = False) -> BulkJob:
        """Start the action on every task the preview would show; ActionError 409 when more match now than the
        operator was shown (`expected`), or the selection takes nothing."""
        taken_selection, problem = bulk_state(kind, selection)
        if problem is not None:
            raise ActionError(problem, 400)
        matching, _total = self._matching(kind, taken_selection)
        matching = matching[: self.limit]
        if not matching:
            raise ActionError("no task matches: nothing to do", 409)
        if expected is not None and len(matching) > expected:
            raise ActionError(f"{len(matching)} tasks match now, more than the {expected} previewed: preview again",
                              409, count=len(matching))
        job = BulkJob(secrets.token_hex(8), kind, taken_selection, len(matching), origin.who, self.clock())
        with self._lock:
            self._jobs[job.id] = job
            finished = [key for key, old in self._jobs.items() if old.finished is not None]
            for key in finished[: max(0, len(self._jobs) - MAX_JOBS)]:
                del self._jobs[key]
        work = self._revoke_all if kind == "revoke" else self._redispatch_all
        thread = threading.Thread(target=self._run, args=(job, work, matching, origin, revoke or RevokeRequest(),
                                                          force), name=f"bulk-{job.id}", daemon=True)
        thread.start()
        return job

    def job(self, job_id: str) -> BulkJob | None:
        """A job by id (None when unknown or forgotten)."""
        with self._lock:
            return self._jobs.get(job_id)

    def _run(self, job: BulkJob, work: Callable[..., None], tasks: list[TaskView], origin: Origin,
             revoke: RevokeRequest, force: bool) -> None:
        try:
            work(job, tasks, origin, revoke, force)
        except Exception as exc:  # noqa: BLE001 - a bug must end the job visibly, not leave it running for ever
            log.exception("bulk %s %s failed", job.kind, job.id)
            job.error = reason(exc)
        job.finished = self.clock()
        self._record(job, origin)

    def _revoke_all(self, job: BulkJob, tasks: list[TaskView], _origin: Origin, revoke: RevokeRequest,
                    _force: bool) -> None:
        routing = self.tasks.routing
        heard: list[TaskView] = []
        for task in tasks:
            unheard = revoke_unheard(task.state, task.queue, queue_consumers(routing, task.queue))
            if unheard is not None and not revoke.force:
                job.note(task.id, "skipped", f"no consumer for queue {task.queue!r}")
            else:
                heard.append(task)
        online = len(self.tasks.state.online_workers())
        if online == 0 and not revoke.force:
            for task in heard:
                job.note(task.id, "skipped", "no worker is online to hear the revoke")
            return
        for start in range(0, len(heard), REVOKE_BATCH):
            batch = heard[start:start + REVOKE_BATCH]
            try:
                replies = self.control.revoke([task.id for task in batch], terminate=revoke.terminate,
                                              signal=revoke.signal, expected=online or None)
            except BrokerUnavailable as exc:
                for task in batch:
                    job.note(task.id, "failed", str(exc))
                continue
            answers = [answer_text(host, answer) for host, answer in replies.items()]
            if online and not answers:
                outcome, detail = "failed", "no worker answered in time"
            elif answers and not any(ok for ok, _text in answers):
                outcome, detail = "failed", "; ".join(text for _ok, text in answers)[:300]
            else:
                outcome, detail = "revoked", None
            for task in batch:
                job.note(task.id, outcome, detail)

    def _redispatch_all(self, job: BulkJob, tasks: list[TaskView], origin: Origin, _revoke: RevokeRequest,
                        force: bool) -> None:
        body = {"force": True} if force else {}
        for task in tasks:
            try:
                sent, _call = self.tasks.redispatch(task.id, body, origin)
            except ActionError as exc:
                job.note(task.id, "skipped" if exc.status == 409 else "failed", exc.message)
            except DispatchRefused as exc:
                job.note(task.id, "refused", str(exc))
            except (BrokerUnavailable, RoutingError, NoReply) as exc:
                job.note(task.id, "failed", reason(exc))
            else:
                job.note(task.id, "sent", None, sent.task_id)

    def _record(self, job: BulkJob, origin: Origin) -> None:
        if self.audit is None:
            return
        failed = job.error is not None or (job.counts.get("failed", 0) and not (
            job.counts.get("revoked") or job.counts.get("sent")))
        self.audit.record_action(action_entry(origin, self.clock(), f"tasks.bulk_{job.kind}", "tasks",
                                              job.audit_detail(), "failed" if failed else "done", job.error))
