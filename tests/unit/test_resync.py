"""The resync after an event-stream gap, with a fake result backend and no broker."""

from __future__ import annotations

from typing import Any

from dashboard.app import build_services
from dashboard.config import config_from_mapping
from dashboard.services.container import Services
from dashboard.services.events.listener import BrokerStatus, StatusReport
from dashboard.services.events.monitor import Monitor
from dashboard.services.events.resync import Resync


class _NoWorkers:
    app = None
    timeout = 0.1


def _services() -> Services:
    config = config_from_mapping({"broker_url": "redis://127.0.0.1:1/0", "audit": {"path": ""}})
    return build_services(config, live=False, clock=lambda: 1000.0)


def _monitor() -> Monitor:
    return _services().monitor


def _resync(monitor: Monitor, reader: Any) -> Resync:
    return Resync(monitor.sink, monitor.stream, _NoWorkers(), reader)  # type: ignore[arg-type]


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

    resync = _resync(monitor, reader)
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

    resync = _resync(monitor, reader)
    _gap(monitor)
    resync.run()
    assert monitor.state.task("t1").state == "PENDING"  # type: ignore[union-attr]
    assert monitor.gaps_total == 1 and monitor.gaps[-1].ended is not None


def test_tasks_the_resync_finds_finished_reach_the_finished_task_counters() -> None:
    # Once resync applied its events through a second path that skipped the hooks: /metrics never counted them.
    services = _services()
    monitor = services.monitor
    monitor.sink.apply({"type": "task-sent", "uuid": "t1", "name": "a.b", "timestamp": 999.0})
    resync = _resync(monitor, lambda task_id: {"state": "FAILURE", "result": "boom", "traceback": "Traceback"})
    _gap(monitor)

    resync.run()

    assert services.stats.snapshot()["finished"] == {("a.b", "FAILURE"): 1}
    assert monitor.gaps[-1].resynced is not None  # the indicator stops saying "resyncing"
