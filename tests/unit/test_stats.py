"""Finished-task counters, the runtime histogram and dispatch outcomes (no broker)."""

from __future__ import annotations

from dashboard.app import build_services
from dashboard.config import config_from_mapping
from dashboard.model.state import State
from dashboard.services.events.monitor import Monitor
from dashboard.services.events.stats import MAX_NAMES, OTHER_NAME, RUNTIME_BUCKETS, TaskStats


def _wired() -> tuple[Monitor, TaskStats]:
    """The monitor and the stats as the composition root wires them (the stats are a hook of the event sink)."""
    config = config_from_mapping({"broker_url": "redis://127.0.0.1:1/0", "audit": {"path": ""}})
    services = build_services(config, live=False, clock=lambda: 1000.0)
    return services.monitor, services.stats


def test_finished_tasks_are_counted_by_the_name_from_task_sent_and_runtimes_bucketed() -> None:
    monitor, stats = _wired()
    monitor.sink.apply({"type": "task-sent", "uuid": "a", "name": "x.y", "timestamp": 1.0})
    monitor.sink.apply({"type": "task-succeeded", "uuid": "a", "runtime": 0.03, "timestamp": 2.0, "hostname": "w"})
    monitor.sink.apply({"type": "task-sent", "uuid": "b", "name": "x.y", "timestamp": 1.0})
    monitor.sink.apply({"type": "task-failed", "uuid": "b", "timestamp": 2.0, "hostname": "w"})
    snap = stats.snapshot()
    assert snap["finished"] == {("x.y", "SUCCESS"): 1, ("x.y", "FAILURE"): 1}
    assert snap["runtime_count"] == 1 and abs(snap["runtime_sum"] - 0.03) < 1e-9
    assert snap["runtime_counts"][RUNTIME_BUCKETS.index(0.05)] == 1


def test_distinct_names_are_capped() -> None:
    monitor, stats = _wired()
    for i in range(MAX_NAMES + 5):
        monitor.sink.apply({"type": "task-sent", "uuid": f"t{i}", "name": f"n{i}", "timestamp": 1.0})
        monitor.sink.apply({"type": "task-succeeded", "uuid": f"t{i}", "timestamp": 2.0})
    finished = stats.snapshot()["finished"]
    assert finished[(OTHER_NAME, "SUCCESS")] == 5
    assert len(finished) == MAX_NAMES + 1


def test_dispatch_outcomes() -> None:
    stats = TaskStats(State())
    for outcome in ("sent", "sent", "refused"):
        stats.note_dispatch(outcome)
    assert stats.snapshot()["dispatches"] == {"sent": 2, "refused": 1}
