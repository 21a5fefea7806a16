"""After the event stream was cut, recover what can be recovered; events sent meanwhile are lost for good.

Redis pub/sub keeps nothing for an absent subscriber, and it disconnects one that falls 32 MB behind. So after
every reconnect that follows a live stream, this job (on the monitor's jobs thread):
- asks the workers for their active and reserved tasks (inspect), and marks those tasks started / received;
- asks the result backend for the state of the retained tasks that are not finished yet, and applies the
  terminal states it knows (SUCCESS, FAILURE, REVOKED) with their result or traceback.
What it learns goes through the event sink, the one path every event takes (State, whose lock makes this second
writer safe, Hub and hooks: finished-task counters included), as synthetic task events stamped with the time of
the resync, so pages and streams update the usual way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..client import BROKER_ERRORS
from ..inspection import WorkerInspector
from .jobs import Job
from .sink import EventSink
from .stream import StreamLog

log = logging.getLogger(__name__)

MAX_TASKS_CHECKED = 1_000  # newest unfinished tasks asked of the result backend per resync
UNFINISHED = ("PENDING", "RECEIVED", "STARTED", "RETRY")
_BACKEND_EVENTS = {"SUCCESS": "task-succeeded", "FAILURE": "task-failed", "REVOKED": "task-revoked"}

ResultReader = Callable[[str], "dict[str, Any] | None"]


class Resync:
    """The job; `run()` does nothing unless a gap closed since the last run."""

    def __init__(self, sink: EventSink, stream: StreamLog, inspector: WorkerInspector,
                 results: ResultReader | None) -> None:
        self.sink = sink
        self.state = sink.state
        self.stream = stream
        self.inspector = inspector
        self.results = results
        self.resynced_total = 0
        self.runs = 0

    def job(self) -> Job:
        """The monitor's job: checked every second, cheap when there is nothing to do."""
        return Job("resync", 1.0, self.run)

    def run(self) -> None:
        """Resync once per closed gap."""
        number = self.stream.unresynced_gap()
        if number is None:
            return
        self.runs += 1
        started = time.monotonic()
        recovered = self._from_workers() + self._from_backend()
        self.resynced_total += recovered
        if self.stream.resynced(number):
            self.sink.publish("gap", str(number))
        log.warning("event stream gap: resynced %d task(s) in %.2fs (events sent during the gap are lost)",
                    recovered, time.monotonic() - started)

    def _apply(self, event: dict[str, Any]) -> None:
        self.sink.apply(event)

    def _from_workers(self) -> int:
        online = self.state.online_workers()
        if not online:
            return 0
        try:
            active = self.inspector.ask(lambda inspector: inspector.active(), limit=len(online)) or {}
            reserved = self.inspector.ask(lambda inspector: inspector.reserved(), limit=len(online)) or {}
        except BROKER_ERRORS as exc:
            log.warning("resync: worker inspection failed: %s", type(exc).__name__)
            return 0
        count = 0
        now = time.time()
        for kind, replies in (("task-started", active), ("task-received", reserved)):
            for hostname, tasks in replies.items():
                for task in tasks if isinstance(tasks, list) else []:
                    if isinstance(task, Mapping) and isinstance(task.get("id"), str):
                        delivery = task.get("delivery_info") if isinstance(task.get("delivery_info"), Mapping) else {}
                        self._apply({
                            "type": kind, "uuid": task["id"], "hostname": hostname, "timestamp": now,
                            "local_received": now, "name": task.get("name"), "args": str(task.get("args")),
                            "kwargs": str(task.get("kwargs")), "routing_key": (delivery or {}).get("routing_key"),
                            "resync": True,
                        })
                        count += 1
        return count

    def _from_backend(self) -> int:
        if self.results is None:
            return 0
        count = 0
        checked = 0
        for state in UNFINISHED:
            tasks, _ = self.state.tasks(state=state, limit=MAX_TASKS_CHECKED)
            for task in tasks:
                if checked >= MAX_TASKS_CHECKED:
                    return count
                checked += 1
                try:
                    found = self.results(task.id)
                except Exception:  # noqa: BLE001 - the backend may be down too: stop asking, try next gap
                    log.warning("resync: the result backend did not answer; task states stay as they were")
                    return count
                if not found or found.get("state") not in _BACKEND_EVENTS:
                    continue
                now = time.time()
                event: dict[str, Any] = {"type": _BACKEND_EVENTS[found["state"]], "uuid": task.id,
                                         "timestamp": now, "local_received": now, "resync": True}
                if found["state"] == "SUCCESS":
                    event["result"] = repr(found.get("result"))
                elif found["state"] == "FAILURE":
                    event["exception"] = repr(found.get("result"))
                    event["traceback"] = found.get("traceback")
                self._apply(event)
                count += 1
        return count
