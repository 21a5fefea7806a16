"""Demo tasks for the dashboard: one that always fails, one that reports progress, one that sleeps long (for
"revoke and terminate": only a terminate stops it early)."""

from __future__ import annotations

import time
from typing import Any, NoReturn

from celery import Task

from worker_stub.app import app

FAIL = "worker.tasks.demo.fail"
SLOW = "worker.tasks.demo.slow"
SLEEP = "worker.tasks.demo.sleep"

MAX_SLOW_SECONDS = 300.0


@app.task(name=FAIL)  # type: ignore[untyped-decorator]  # celery ships no type hints
def fail(message: str = "boom") -> NoReturn:
    """Raise RuntimeError(message) every time, so the dashboard can show a failure and its traceback."""
    raise RuntimeError(message)


@app.task(name=SLOW, bind=True)  # type: ignore[untyped-decorator]  # celery ships no type hints
def slow(self: Task, seconds: float = 5.0, steps: int = 5) -> dict[str, Any]:
    """Sleep `seconds` (capped at 300) in `steps` steps, reporting PROGRESS {step, steps} as each starts."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if seconds < 0:
        raise ValueError(f"seconds must not be negative, got {seconds}")
    seconds = min(float(seconds), MAX_SLOW_SECONDS)
    for step in range(1, steps + 1):
        # Called directly (not by a worker) there is no task id to report progress against.
        if self.request.id is not None:
            self.update_state(state="PROGRESS", meta={"step": step, "steps": steps})
        time.sleep(seconds / steps)
    return {"seconds": seconds, "steps": steps}


@app.task(name=SLEEP)  # type: ignore[untyped-decorator]  # celery ships no type hints
def sleep(seconds: float = 60.0) -> float:
    """Sleep `seconds` (capped at 300) in one call, then return them: a task that runs until stopped."""
    seconds = min(max(float(seconds), 0.0), MAX_SLOW_SECONDS)
    time.sleep(seconds)
    return seconds
