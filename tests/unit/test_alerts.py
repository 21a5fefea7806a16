"""Unit tests for alert conditions and the grace-period AlertBook (dashboard.model.alerts): no mocks."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import pytest

from dashboard.model.alerts import ALERT_KINDS, Alert, AlertBook, Condition, conditions_from
from dashboard.model.routing import ApiRoute, BrokerQueue, RoutingReport, WorkerSnapshot, compare

T0 = 1_700_000_000.0


def worker(
    host: str,
    queues: tuple[str, ...] = (),
    registered: tuple[str, ...] = (),
    routes: Mapping[str, str] | None = None,
    *,
    online: bool = True,
) -> WorkerSnapshot:
    """A worker snapshot with short arguments."""
    return WorkerSnapshot(host, online, frozenset(queues), frozenset(registered), routes)


def report_of(
    routes: Mapping[str, str],
    workers: list[WorkerSnapshot],
    depths: Mapping[str, int] | None = None,
    sent: tuple[str, ...] = (),
) -> RoutingReport:
    """compare() with routes given as name -> queue."""
    api_routes = {name: ApiRoute(queue, name, "route") for name, queue in routes.items()}
    broker = [BrokerQueue(name, depth) for name, depth in (depths or {}).items()]
    return compare(api_routes, workers, broker, "celery", sent_names=sent)


# -- conditions_from -----------------------------------------------------------------------------

HEALTHY = [worker("w1", ("celery", "llm"), ("llm.a",))]

# Each case: report, extra facts, and the expected (key, queue, task, depth) of every condition.
CONDITION_CASES = {
    "healthy": (report_of({"llm.a": "llm"}, HEALTHY), {}, []),
    "orphaned_queue-with-depth": (
        report_of({"llm.a": "llm2"}, HEALTHY, {"llm2": 4}),
        {},
        [("orphaned_queue:llm2", "llm2", None, 4)],
    ),
    "orphaned_queue-needs-depth": (report_of({"llm.a": "llm2"}, HEALTHY, {"llm2": 0}), {}, []),
    "unregistered_task-sent": (
        report_of({"llm.a": "llm", "llm.typo": "llm"}, HEALTHY, sent=("llm.typo",)),
        {},
        [("unregistered_task:llm.typo", "llm", "llm.typo", None)],
    ),
    "unregistered_task-catalog-only-is-silent": (
        report_of({"llm.a": "llm", "llm.typo": "llm"}, HEALTHY),
        {},
        [],
    ),
    "unregistered_task-not-registered-failure": (
        report_of({"llm.a": "llm", "llm.typo": "llm"}, HEALTHY),
        {"not_registered_names": ["llm.typo"]},
        [("unregistered_task:llm.typo", "llm", "llm.typo", None)],
    ),
    "unregistered_task-failure-outside-the-report": (
        report_of({"llm.a": "llm"}, HEALTHY),
        {"not_registered_names": ["ghost.task"]},
        [("unregistered_task:ghost.task", None, "ghost.task", None)],
    ),
    "not-registered-failure-now-registered-is-silent": (
        report_of({"llm.a": "llm"}, HEALTHY),
        {"not_registered_names": ["llm.a"]},
        [],
    ),
    "route_drift": (
        report_of({"llm.a": "llm"}, [worker("w1", ("celery", "llm"), ("llm.a",), {"llm.a": "gpu"})]),
        {},
        [("route_drift:llm.a", "llm", "llm.a", None)],
    ),
    "queue_lost_consumer": (
        report_of(
            {"llm.a": "llm"}, [worker("w1", ("celery",), ("llm.a",)), worker("w2", ("llm",), online=False)]
        ),
        {"previously_consumed": ["llm"]},
        [("queue_lost_consumer:llm", "llm", None, None)],
    ),
    "queue_lost_consumer-needs-previous-consumer": (
        report_of({"llm.a": "llm"}, [worker("w1", ("celery",), ("llm.a",))]),
        {},
        [],
    ),
    "queue_lost_consumer-needs-routed-tasks": (
        report_of({}, [worker("w1", ("celery",), ())]),
        {"previously_consumed": ["old"]},
        [],
    ),
    "queue_lost_consumer-and-orphaned": (
        report_of({"llm.a": "llm"}, [worker("w1", ("celery",), ("llm.a",))], {"llm": 3}),
        {"previously_consumed": ["llm"]},
        [("orphaned_queue:llm", "llm", None, 3), ("queue_lost_consumer:llm", "llm", None, 3)],
    ),
}


@pytest.mark.parametrize(
    ("report", "facts", "expected"), CONDITION_CASES.values(), ids=CONDITION_CASES.keys()
)
def test_conditions_from(
    report: RoutingReport,
    facts: dict[str, list[str]],
    expected: list[tuple[str, str | None, str | None, int | None]],
) -> None:
    conditions = conditions_from(report, **facts)
    assert [(c.key, c.queue, c.task, c.depth) for c in conditions] == expected
    for condition in conditions:
        assert condition.kind in ALERT_KINDS and condition.key.startswith(f"{condition.kind}:")
        assert condition.message


# -- AlertBook: grace, update, clear, re-raise ---------------------------------------------------


def orphan(depth: int) -> Condition:
    """An orphaned_queue condition for llm2."""
    return Condition.for_queue("orphaned_queue", "llm2", f"{depth} waiting", depth)


# Each step: (seconds after T0, conditions holding, expected changes as (status, since offset, depth)).
GRACE_STEPS = [
    (0, [orphan(1)], []),  # starts pending
    (5, [orphan(1)], []),  # still in grace
    (9.9, [orphan(2)], []),  # a change while pending is silent
    (10, [orphan(2)], [("raised", 0, 2)]),  # held for the whole grace: raised, since = start
    (11, [orphan(2)], []),  # unchanged: nothing to say
    (12, [orphan(5)], [("updated", 0, 5)]),  # depth changed
    (14, [], [("cleared", 0, 5)]),  # gone: cleared at once
    (15, [orphan(1)], []),  # back: a new stretch, pending again
    (24, [orphan(1)], []),
    (25, [orphan(1)], [("raised", 15, 1)]),  # re-raised with the new since
]


def test_grace_period_lifecycle() -> None:
    book = AlertBook(grace=10)
    for offset, conditions, expected in GRACE_STEPS:
        changes = book.evaluate(conditions, T0 + offset)
        got = [(change.status, change.alert.since - T0, change.alert.depth) for change in changes]
        assert got == expected, f"at +{offset}s"
    [alert] = book.active()
    assert (alert.since, alert.raised_at, alert.updated_at) == (T0 + 15, T0 + 25, T0 + 25)


def test_cleared_alert_carries_its_timestamps() -> None:
    book = AlertBook(grace=0)
    book.evaluate([orphan(1)], T0)
    book.evaluate([orphan(2)], T0 + 3)
    [change] = book.evaluate([], T0 + 7)
    assert change.status == "cleared"
    assert (change.alert.since, change.alert.raised_at, change.alert.updated_at) == (T0, T0, T0 + 7)
    assert change.alert.cleared_at == T0 + 7
    assert book.active() == []


def test_pending_condition_that_goes_away_is_dropped_silently() -> None:
    book = AlertBook(grace=10)
    assert book.evaluate([orphan(1)], T0) == []
    assert book.evaluate([], T0 + 5) == []  # no "cleared" for something never raised
    assert book.evaluate([orphan(1)], T0 + 6) == []
    assert book.evaluate([orphan(1)], T0 + 15) == []  # the clock restarted at +6
    [change] = book.evaluate([orphan(1)], T0 + 16)
    assert (change.status, change.alert.since) == ("raised", T0 + 6)


def test_grace_zero_raises_immediately() -> None:
    book = AlertBook(grace=0)
    [change] = book.evaluate([orphan(3)], T0)
    assert (change.status, change.alert.since, change.alert.raised_at) == ("raised", T0, T0)


@pytest.mark.parametrize("grace", [-1.0, math.nan])
def test_bad_grace_is_refused(grace: float) -> None:
    with pytest.raises(ValueError, match="grace"):
        AlertBook(grace)


def test_every_kind_raises_and_changes_come_in_a_stable_order() -> None:
    report = report_of(
        {"llm.a": "llm", "llm.typo": "llm", "llm.b": "llm2"},
        [
            worker("w1", ("celery",), ("llm.a", "llm.b"), {"llm.a": "gpu"}),
            worker("w2", ("llm",), online=False),
        ],
        {"llm2": 6},
        sent=("llm.typo",),
    )
    conditions = conditions_from(report, previously_consumed=["llm"])
    book = AlertBook(grace=0)
    changes = book.evaluate(conditions, T0)
    assert [(change.status, change.alert.kind) for change in changes] == [
        ("raised", "orphaned_queue"),
        ("raised", "queue_lost_consumer"),
        ("raised", "route_drift"),
        ("raised", "unregistered_task"),
    ]
    assert {alert.kind for alert in book.active()} == set(ALERT_KINDS)
    # One clears, one updates: cleared come first.
    later = [c for c in conditions if c.kind != "route_drift"]
    later = [orphan(7) if c.kind == "orphaned_queue" else c for c in later]
    changes = book.evaluate(later, T0 + 1)
    assert [(change.status, change.alert.key) for change in changes] == [
        ("cleared", "route_drift:llm.a"),
        ("updated", "orphaned_queue:llm2"),
    ]


def test_alert_to_dict_omits_missing_fields_and_gives_iso_time() -> None:
    alert = Alert("route_drift", "route_drift:a", None, "a", None, T0, T0 + 1, T0 + 2, "moved")
    body = alert.to_dict()
    json.dumps(body)
    assert body == {
        "kind": "route_drift",
        "key": "route_drift:a",
        "task": "a",
        "since": T0,
        "since_iso": "2023-11-14T22:13:20+00:00",
        "raised_at": T0 + 1,
        "updated_at": T0 + 2,
        "message": "moved",
    }
    queue_alert = Alert(
        "orphaned_queue", "orphaned_queue:q", "q", None, 0, T0, T0, T0, "m", cleared_at=T0 + 5
    )
    assert {"queue": "q", "depth": 0, "cleared_at": T0 + 5}.items() <= queue_alert.to_dict().items()
