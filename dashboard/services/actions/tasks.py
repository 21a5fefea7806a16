"""Task actions: revoke (and terminate), dispatch again with the same arguments, and what is known of a call.

Flask-free: the web layer parses, calls one method, renders what it returns or the ActionError it raises.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ...model.actions import (
    UNFINISHED,
    ActionError,
    KnownCall,
    RevokeRequest,
    call_from_audit,
    call_from_backend,
    call_from_events,
    pool_support,
    redispatch_body,
    revoke_unheard,
)
from ...model.catalog import Catalog
from ...model.dispatch import DispatchInvalid, parse_api_body
from ...model.secrets import reason
from ...model.state import State, TaskView
from ..audit import AuditStore, AuditUnavailable, Origin
from ..client import BROKER_ERRORS, SendOnlyClient, SentTask
from ..dispatch import Dispatcher
from ..inspection import NoReply
from ..routing import RoutingService
from .control import Control, answer_text

log = logging.getLogger(__name__)

REDISPATCH_ACTION = "task.redispatch"
BULK_REDISPATCH_ACTION = "tasks.bulk_redispatch"
_BACKEND_ERRORS: tuple[type[BaseException], ...] = (*BROKER_ERRORS, RuntimeError)  # Celery wraps retries
MAX_LINKS = 10_000  # redispatch links remembered in memory (the audit log keeps them all)


@dataclass(frozen=True)
class RevokeOutcome:
    """What the workers said to a revoke: a sentence, and each worker's answer."""

    message: str
    replies: dict[str, str] = field(default_factory=dict)
    terminated: bool = False


@dataclass(frozen=True)
class Links:
    """How a task is linked to others by "dispatch again": the task it repeats, and the tasks that repeat it."""

    original: str | None = None
    again: tuple[str, ...] = ()


def queue_consumers(routing: RoutingService, queue: str | None) -> list[str] | None:
    """The online consumers of `queue` from the latest comparison (None: not compared yet, or no queue)."""
    report = routing.report
    if report is None or queue is None or not routing.stream.live:
        return None
    row = report.queue(queue)
    return list(row.consumers) if row is not None else []


class TaskActions:
    """Revoke, dispatch again, and the arguments of a call, for one task at a time."""

    def __init__(self, state: State, routing: RoutingService, control: Control, client: SendOnlyClient,
                 dispatcher: Dispatcher, audit: AuditStore | None, catalog: Catalog,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.state = state
        self.routing = routing
        self.control = control
        self.client = client
        self.dispatcher = dispatcher
        self.audit = audit
        self.catalog = catalog
        self.now = now
        self._lock = threading.Lock()
        self._originals: OrderedDict[str, str] = OrderedDict()  # new id -> original id

    # -- revoke -------------------------------------------------------------------------------------------------

    def revoke_problem(self, task: TaskView | None) -> tuple[str | None, str | None]:
        """(why nobody would hear a revoke, why terminate cannot work) for the task page's buttons."""
        if task is None:
            return None, None
        unheard = revoke_unheard(task.state, task.queue, queue_consumers(self.routing, task.queue))
        terminate_why = None
        if task.worker is not None:
            worker = self.state.worker(task.worker)
            support = pool_support(worker.stats if worker is not None else None)
            if worker is not None and worker.stats is not None and not support.can_terminate:
                terminate_why = f"{task.worker}: {support.terminate_why}"
        return unheard, terminate_why

    def revoke(self, task_id: str, request: RevokeRequest) -> RevokeOutcome:
        """Revoke one task: every worker marks the id revoked (and the one running it stops it on `terminate`).

        ActionError 409 when no worker could hear it (unless forced) or its pool cannot terminate; BrokerUnavailable
        when the broker does not take the command; NoReply when no worker answered in time."""
        task = self.state.task(task_id)
        if task is not None and task.state not in UNFINISHED and not request.force:
            raise ActionError(f"the task has finished ({task.state}): there is nothing to revoke", 409)
        unheard, terminate_why = self.revoke_problem(task)
        if unheard is not None and not request.force:
            raise ActionError(f"not revoked: {unheard}", 409, queue=task.queue if task else None)
        if request.terminate and terminate_why is not None and task is not None and task.state == "STARTED":
            raise ActionError(f"cannot terminate: {terminate_why}; revoke without terminate instead", 409)
        online = len(self.state.online_workers())
        if online == 0 and not request.force:
            raise ActionError("no worker is online to hear the revoke; send it anyway with force (a worker that "
                              "starts later does not learn of it unless it syncs revokes at start-up)", 409)
        replies = self.control.revoke([task_id], terminate=request.terminate, signal=request.signal,
                                      expected=online or None)
        if online and not replies:
            raise NoReply(f"no worker answered the revoke within {self.control.timeout:.0f}s")
        answers: dict[str, str] = {}
        refused: list[str] = []
        for host, answer in sorted(replies.items()):
            ok, text = answer_text(host, answer)
            answers[host] = text
            if not ok:
                refused.append(text)
        if refused and len(refused) == len(answers):
            raise ActionError(f"the workers refused the revoke: {'; '.join(refused)}", 409)
        how = f"revoked and terminated with {request.signal}" if request.terminate else "revoked"
        heard = f"{len(answers)} worker(s) answered" if answers else "sent (no worker is online to answer)"
        return RevokeOutcome(f"{task_id} {how}: {heard}", answers, request.terminate)

    # -- the call, and dispatch again ------------------------------------------------------------------------------

    def known_call(self, task_id: str) -> KnownCall:
        """The task's call: exact from the audit log (this dashboard sent it) or the result backend (a worker with
        result_extended stored it), else the events' repr (an edit is required)."""
        task = self.state.task(task_id)
        name = task.name if task is not None else None
        if self.audit is not None:
            try:
                entries, _ = self.audit.query(task_id=task_id, outcome="sent", limit=1)
            except AuditUnavailable as exc:
                log.warning("audit log unreadable while looking up %s: %s", task_id, exc)
                entries = []
            if entries:
                entry = entries[0]
                found = call_from_audit(entry.name, entry.args, entry.kwargs, entry.options)
                if found is not None:
                    return found
        backend = self._backend_call(task_id, name)
        if backend is not None:
            return backend
        return call_from_events(name, task.args if task else None, task.kwargs if task else None)

    def _backend_call(self, task_id: str, name: str | None) -> KnownCall | None:
        results = self.client.results
        if results is None:
            return None
        try:
            meta = results.AsyncResult(task_id)._get_task_meta()
        except _BACKEND_ERRORS as exc:
            log.info("result backend unreadable while looking up %s: %s", task_id, reason(exc))
            return None
        if not isinstance(meta, Mapping) or "args" not in meta:
            return None
        stored = meta.get("name")
        return call_from_backend(stored if isinstance(stored, str) and stored else name, meta.get("args"),
                                 meta.get("kwargs"))

    def redispatch(self, task_id: str, body: object, origin: Origin) -> tuple[SentTask, KnownCall]:
        """Dispatch the task again as a new task through the Dispatcher (resolve, guard, send, audit); the
        arguments are the original's exact ones unless the body gives others.

        ActionError 409 (arguments not known exactly), 422 (the resulting dispatch is invalid); DispatchRefused,
        RoutingError and BrokerUnavailable as a dispatch raises them."""
        call = self.known_call(task_id)
        dispatch_body = redispatch_body(call, body)
        try:
            checked = parse_api_body(dispatch_body, self.catalog, self.now())
        except DispatchInvalid as exc:
            raise ActionError(f"not sent: {exc.message}", 422, fields=exc.errors) from None
        sent = self.dispatcher.dispatch(checked, origin)
        with self._lock:
            self._originals[sent.task_id] = task_id
            while len(self._originals) > MAX_LINKS:
                self._originals.popitem(last=False)
        return sent, call

    def links(self, task_id: str) -> Links:
        """The original of a task dispatched again, and the tasks dispatched again from it: from the audit log
        (single and bulk dispatches again), then from what this process remembers (auditing off)."""
        original: str | None = None
        again: list[str] = []
        if self.audit is not None:
            try:
                entries = self.audit.actions_mentioning((REDISPATCH_ACTION, BULK_REDISPATCH_ACTION), task_id)
            except AuditUnavailable as exc:
                log.warning("audit log unreadable while linking %s: %s", task_id, exc)
                entries = []
            for entry in entries:
                detail = _detail(entry.detail)
                if not isinstance(detail, dict):
                    continue
                pairs = detail.get("again") if entry.action == BULK_REDISPATCH_ACTION else \
                    {entry.target: detail.get("task_id")}
                for old, new in (pairs.items() if isinstance(pairs, dict) else ()):
                    if old == task_id and isinstance(new, str) and new not in again:
                        again.append(new)
                    elif new == task_id and original is None and isinstance(old, str):
                        original = old
        with self._lock:
            original = original or self._originals.get(task_id)
            for new, old in reversed(self._originals.items()):
                if old == task_id and new not in again:
                    again.append(new)
        return Links(original, tuple(again))


def _detail(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None
