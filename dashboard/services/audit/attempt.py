"""One dispatch attempt, recorded in the audit log when its `with` block ends, whatever its outcome; with `begin`,
written durably while it is being published, and its outcome filled in when the block ends."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import TracebackType

from ...exceptions import DispatchRefused
from ...model.dispatch import DispatchRequest, outcome_of
from .entries import AuditEntry, Origin, error_text, request_entry
from .store import WRITE_WAIT, AuditStore
from .writer import Write

log = logging.getLogger(__name__)


class DispatchAttempt:
    """One dispatch, recorded when its `with` block ends: sent (after `sent()`), or what its exception means.

    `begin(task_id)` just before publishing queues the attempt (outcome "unknown", that task id) for a durable
    write that runs while the task is published; the block's end waits for that write and queues the outcome in
    its place. It never suppresses the dispatch's exception and never raises one of its own. With no audit log it
    does nothing.
    """

    def __init__(
        self,
        audit: AuditStore | None,
        request: DispatchRequest,
        origin: Origin,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.audit = audit
        self.request = request
        self.origin = origin
        self.at = clock()
        self.queue: str | None = None  # set as soon as the route is resolved, so a failure records it too
        self.task_id: str | None = None
        self.entry: AuditEntry | None = None
        self.entry_id: int | None = None
        self._begun: Write | None = None  # begin()'s durable write, once queued

    def begin(self, task_id: str) -> None:
        """The task is about to be published as `task_id`: write that down (durably, in the background)."""
        if self.audit is None:
            return
        try:
            intent = request_entry(self.request, self.origin, self.at, "unknown", queue=self.queue, task_id=task_id)
        except Exception:  # as in __exit__: the outcome is recorded on its own then
            log.exception("audit: could not describe the dispatch of %r", self.request.name[:200])
            return
        self._begun = self.audit.begin(intent)

    def sent(self, task_id: str, queue: str) -> None:
        """The broker took the task."""
        self.task_id, self.queue = task_id, queue

    def __enter__(self) -> DispatchAttempt:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.audit is None:
            return
        try:
            self.entry = self._describe(exc)
        except Exception:  # describing must not replace the dispatch's own outcome; the traceback goes to the log
            count = self.audit.count_failure()
            log.exception("audit: could not describe the dispatch of %r (%d failed so far)",
                          self.request.name[:200], count)
            if self._begun is not None:
                self._begun.wait(WRITE_WAIT)  # the begun entry stays, outcome unknown; durable before the answer
            return
        self.entry_id = self.audit.finish(self._begun, self.entry)  # without a begun write: recorded anew

    def _describe(self, exc: BaseException | None) -> AuditEntry:
        if exc is None:
            if self.task_id is None:
                return request_entry(self.request, self.origin, self.at, "error", queue=self.queue,
                                     error="the dispatch ended without a task id")
            return request_entry(self.request, self.origin, self.at, "sent", queue=self.queue,
                                 task_id=self.task_id)
        queue = exc.queue if isinstance(exc, DispatchRefused) else self.queue
        return request_entry(self.request, self.origin, self.at, outcome_of(exc), queue=queue,
                             error=error_text(exc))
