"""The resync after an event-stream gap, with a fake result backend and no broker."""

from __future__ import annotations

from typing import Any

from dashboard.services.client import ClientSettings
from dashboard.services.events import BrokerStatus, StatusReport
from dashboard.services.monitor import Monitor
from dashboard.services.resync import Resync


class _NoWorkers:
    app = None
    timeout = 0.1


def _monitor() -> Monitor:
    settings = ClientSettings("redis://127.0.0.1:1/0", None, {}, "celery")
    return Monitor(settings, clock=lambda: 1000.0)


def _gap(monitor: Monitor) -> None:
    monitor._on_connect()
    monitor._on_status(StatusReport(BrokerStatus.RECONNECTING, 1001.0, "cut"))
    monitor._on_connect()


def test_after_a_gap_unfinished_tasks_take_the_backend_state_once() -> None:
    monitor = _monitor()
    monitor.state.apply({"type": "task-sent", "uuid": "t1", "name": "a.b", "timestamp": 999.0})
    monitor.state.apply({"type": "task-sent", "uuid": "t2", "name": "a.b", "timestamp": 999.0})
    answers: dict[str, dict[str, Any]] = {
        "t1": {"state": "SUCCESS", "result": 42, "traceback": None},
        "t2": {"state": "PENDING", "result": None, "traceback": None},
    }
    asked: list[str] = []

    def reader(task_id: str) -> dict[str, Any] | None:
        asked.append(task_id)
        return answers[task_id]

    resync = Resync(monitor, _NoWorkers(), reader)  # type: ignore[arg-type]
    resync.run()
    assert asked == []  # no gap yet: nothing to do
    _gap(monitor)
    resync.run()
    task = monitor.state.task("t1")
    assert task is not None and task.state == "SUCCESS" and task.result == "42"
    assert monitor.state.task("t2").state == "PENDING"  # type: ignore[union-attr]
    assert resync.resynced_total == 1
    asked.clear()
    resync.run()
    assert asked == []  # once per gap


def test_a_failing_backend_stops_the_resync_without_raising() -> None:
    monitor = _monitor()
    monitor.state.apply({"type": "task-sent", "uuid": "t1", "name": "a.b", "timestamp": 999.0})

    def reader(task_id: str) -> dict[str, Any] | None:
        raise ConnectionError("backend down")

    resync = Resync(monitor, _NoWorkers(), reader)  # type: ignore[arg-type]
    _gap(monitor)
    resync.run()
    assert monitor.state.task("t1").state == "PENDING"  # type: ignore[union-attr]
    assert monitor.gaps_total == 1 and monitor.gaps[-1].ended is not None
