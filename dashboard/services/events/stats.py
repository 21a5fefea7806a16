"""Counters beyond the event state, for /metrics: finished tasks by name and state, runtimes, dispatch outcomes.

Updated on the event thread (a hook of the event sink: one dict increment and one bisect per finished task, resynced
ones included) and by the dispatcher;
read at scrape time. Distinct task names are capped so a storm of typo'd names cannot grow memory.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Mapping
from typing import Any, Final

from ...model.state import State

RUNTIME_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
MAX_NAMES: Final = 1_000
OTHER_NAME: Final = "(other)"
_FINAL_STATES: Final = {"task-succeeded": "SUCCESS", "task-failed": "FAILURE", "task-revoked": "REVOKED",
                        "task-rejected": "REJECTED", "task-retried": "RETRY"}


class TaskStats:
    """Finished tasks by (name, state), a runtime histogram, and dispatches by outcome."""

    def __init__(self, state: State) -> None:
        self._state = state
        self._lock = threading.Lock()
        self.finished: dict[tuple[str, str], int] = {}
        self.runtime_counts = [0] * (len(RUNTIME_BUCKETS) + 1)  # the last one is +Inf
        self.runtime_sum = 0.0
        self.runtime_count = 0
        self.dispatches: dict[str, int] = {}
        self._names: set[str] = set()

    def note_event(self, event: Mapping[str, Any]) -> None:
        """Count a finished task (event thread)."""
        state = _FINAL_STATES.get(str(event.get("type")))
        if state is None:
            return
        task = self._state.task(str(event.get("uuid", "")))
        name = (task.name if task is not None else None) or "(unknown)"
        runtime = event.get("runtime")
        with self._lock:
            if name not in self._names:
                if len(self._names) >= MAX_NAMES:
                    name = OTHER_NAME
                else:
                    self._names.add(name)
            key = (name, state)
            self.finished[key] = self.finished.get(key, 0) + 1
            if state == "SUCCESS" and isinstance(runtime, (int, float)) and runtime >= 0:
                self.runtime_counts[bisect_left(RUNTIME_BUCKETS, runtime)] += 1
                self.runtime_sum += float(runtime)
                self.runtime_count += 1

    def note_dispatch(self, outcome: str) -> None:
        """Count a dispatch attempt: sent, refused, invalid, unavailable, error."""
        with self._lock:
            self.dispatches[outcome] = self.dispatches.get(outcome, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy for one scrape."""
        with self._lock:
            return {
                "finished": dict(self.finished),
                "runtime_counts": list(self.runtime_counts),
                "runtime_sum": self.runtime_sum,
                "runtime_count": self.runtime_count,
                "dispatches": dict(self.dispatches),
            }
