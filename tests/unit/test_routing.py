"""Unit tests for the routing comparison (dashboard.model.routing): plain data in, no broker, no mocks."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping

import pytest

from dashboard.model.routing import (
    SEVERITY,
    ApiRoute,
    BrokerQueue,
    RoutingReport,
    TaskRouting,
    WorkerSnapshot,
    compare,
    hosts_phrase,
)

DEFAULT = "celery"


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


def route(queue: str, pattern: str | None = None) -> ApiRoute:
    """An API route that came from task_routes."""
    return ApiRoute(queue, pattern, "route")


def task_row(report: RoutingReport, name: str) -> TaskRouting:
    """The row of `name` in the report."""
    [row] = [row for row in report.tasks if row.task == name]
    return row


# -- task statuses -------------------------------------------------------------------------------

# Each case: API routes, workers, and the expected problems of task "a" (most severe first).
TASK_CASES = {
    "ok": ({"a": route("q")}, [worker("w1", ("q",), ("a",))], ()),
    "ok-worker-route-agrees": ({"a": route("q")}, [worker("w1", ("q",), ("a",), {"a": "q"})], ()),
    "ok-worker-routes-do-not-match-it": ({"a": route("q")}, [worker("w1", ("q",), ("a",), {"b": "r"})], ()),
    # Contract: wrong_queue needs *none* of the consumers to register the name.
    "ok-one-consumer-of-two-registers": (
        {"a": route("q")},
        [worker("w1", ("q",), ("a",)), worker("w2", ("q",), ("b",))],
        (),
    ),
    "unregistered": ({"a": route("q")}, [worker("w1", ("q",), ("b",))], ("unregistered",)),
    "orphaned": ({"a": route("q2")}, [worker("w1", ("q",), ("a",))], ("orphaned",)),
    "wrong_queue": (
        {"a": route("q")},
        [worker("w1", ("q",), ("b",)), worker("w2", ("r",), ("a",))],
        ("wrong_queue",),
    ),
    "drift": ({"a": route("q")}, [worker("w1", ("q",), ("a",), {"a": "r"})], ("drift",)),
    "unregistered+orphaned": (
        {"a": route("nowhere")},
        [worker("w1", ("q",), ("b",))],
        ("unregistered", "orphaned"),
    ),
    "unregistered+drift": (
        {"a": route("q")},
        [worker("w1", ("q",), ("b",), {"a": "r"})],
        ("unregistered", "drift"),
    ),
    "orphaned+drift": ({"a": route("q2")}, [worker("w1", ("q",), ("a",), {"a": "q"})], ("orphaned", "drift")),
    "wrong_queue+drift": (
        {"a": route("q")},
        [worker("w1", ("q",), ("b",)), worker("w2", ("r",), ("a",), {"a": "r"})],
        ("wrong_queue", "drift"),
    ),
    "unregistered+orphaned+drift": (
        {"a": route("q2")},
        [worker("w1", ("q",), ("b",), {"a": "q"})],
        ("unregistered", "orphaned", "drift"),
    ),
    # Offline workers count for nothing: not as registrar, consumer or route declarer.
    "offline-registrar-ignored": (
        {"a": route("q")},
        [worker("w1", ("q",), ("b",)), worker("w2", ("q",), ("a",), online=False)],
        ("unregistered",),
    ),
    "offline-consumer-ignored": (
        {"a": route("q")},
        [worker("w1", ("r",), ("a",)), worker("w2", ("q",), ("a",), online=False)],
        ("orphaned",),
    ),
    "offline-route-ignored": (
        {"a": route("q")},
        [worker("w1", ("q",), ("a",)), worker("w2", ("q",), ("a",), {"a": "r"}, online=False)],
        (),
    ),
    "no-workers-at-all": ({"a": route("q")}, [], ("unregistered", "orphaned")),
}


@pytest.mark.parametrize(("api_routes", "workers", "expected"), TASK_CASES.values(), ids=TASK_CASES.keys())
def test_task_status_and_problems(
    api_routes: dict[str, ApiRoute], workers: list[WorkerSnapshot], expected: tuple[str, ...]
) -> None:
    row = task_row(compare(api_routes, workers, [], DEFAULT), "a")
    assert [problem.code for problem in row.problems] == list(expected)
    assert row.status == (expected[0] if expected else "ok")
    assert row.ok is (not expected)
    # problems come in severity order and each carries a sentence naming the task or its queue
    assert [SEVERITY.index(code) for code in expected] == sorted(SEVERITY.index(code) for code in expected)
    for problem in row.problems:
        assert "'a'" in problem.explanation or f"'{row.api_queue}'" in problem.explanation
    as_json = row.to_dict()
    assert as_json["problems"] == list(expected)
    assert len(as_json["explanations"]) == len(expected)


def test_orphaned_explanation_is_plain_english() -> None:
    row = task_row(compare({"a": route("llm2")}, [worker("w1", ("llm",), ("a",))], [], DEFAULT), "a")
    assert row.problems[0].explanation == (
        "No online worker consumes queue 'llm2', so tasks routed there wait forever."
    )


def test_wrong_queue_and_drift_explanations_name_the_workers() -> None:
    workers = [worker("w1", ("q",), ("b",)), worker("w2", ("r",), ("a",), {"a": "r"})]
    row = task_row(compare({"a": route("q")}, workers, [], DEFAULT), "a")
    wrong, drift = (problem.explanation for problem in row.problems)
    assert "consumed by w1" in wrong and "registered on w2" in wrong
    assert "'r' on w2" in drift


def test_row_fields_consumers_registrars_and_worker_route() -> None:
    workers = [
        worker("w3", ("q", "r"), ("a",), {"a": "r"}),
        worker("w1", ("q",), ("a",), {"a": "q"}),
        worker("w2", ("q",), ("b",), {"a": "r"}),
        worker("w0", ("q",), ("a",), online=False),
    ]
    row = task_row(compare({"a": route("q", "x.*")}, workers, [], DEFAULT), "a")
    assert row.api_queue == "q" and row.api_pattern == "x.*" and row.api_source == "route"
    assert row.consumers == ("w1", "w2", "w3")  # sorted, online only
    assert row.registered_on == ("w1", "w3")
    assert row.worker_routes == (("q", 1), ("r", 2))
    assert row.drifting == (("r", ("w2", "w3")),)
    assert row.worker_route == "r"  # the majority of declaring workers
    assert row.problems[-1].code == "drift"


def test_worker_route_tie_goes_to_first_queue_by_name() -> None:
    workers = [worker("w1", ("q",), ("a",), {"a": "z"}), worker("w2", ("q",), ("a",), {"a": "m"})]
    assert task_row(compare({"a": route("q")}, workers, [], DEFAULT), "a").worker_route == "m"


# -- which names are compared, default routing ---------------------------------------------------


def test_names_come_from_api_routes_registered_names_and_sent_names() -> None:
    workers = [
        worker("w1", ("celery",), ("registered.only",)),
        worker("w9", ("celery",), ("offline.only",), online=False),
    ]
    report = compare({"catalog.task": route("celery")}, workers, [], DEFAULT, sent_names=["sent.only"])
    assert [row.task for row in report.tasks] == ["catalog.task", "registered.only", "sent.only"]
    assert [row.sent for row in report.tasks] == [False, False, True]


@pytest.mark.parametrize(
    ("api_routes", "expected"),
    [
        ({}, ApiRoute(DEFAULT, None, "default")),  # missing: Celery's fallback, the default queue
        ({"a": ApiRoute(DEFAULT, None, "default")}, ApiRoute(DEFAULT, None, "default")),
        ({"a": ApiRoute("manual", None, "override")}, ApiRoute("manual", None, "override")),
    ],
    ids=["missing-entry", "resolved-to-default", "override"],
)
def test_default_queue_routing(api_routes: dict[str, ApiRoute], expected: ApiRoute) -> None:
    workers = [worker("w1", (DEFAULT, "manual"), ("a",))]
    report = compare(api_routes, workers, [], DEFAULT, sent_names=["a"])
    row = task_row(report, "a")
    assert (row.api_queue, row.api_pattern, row.api_source) == (
        expected.queue,
        expected.pattern,
        expected.source,
    )
    assert row.ok
    [queue] = [queue for queue in report.queues if queue.name == expected.queue]
    assert queue.routed_tasks == ("a",)


def test_later_snapshot_of_a_hostname_wins() -> None:
    workers = [worker("w1", ("q",), ("a",)), worker("w1", ("q",), ("a",), online=False)]
    report = compare({"a": route("q")}, workers, [], DEFAULT)
    assert task_row(report, "a").status == "unregistered"
    assert report.offline_workers == ("w1",)


def test_equal_but_distinct_sets_and_tables_are_grouped_without_losing_hosts() -> None:
    # Each worker gets its own (equal) frozenset and dict, listed out of order.
    workers = [
        WorkerSnapshot(host, True, frozenset({"q"}), frozenset({"a", "b"}), dict({"a": "r"}))
        for host in ("w3", "w1", "w2")
    ] + [WorkerSnapshot("w0", True, frozenset({"r"}), frozenset({"a"}), None)]
    report = compare({"a": route("q"), "b": route("q")}, workers, [], DEFAULT)
    a, b = report.tasks
    assert a.registered_on == ("w0", "w1", "w2", "w3")
    assert b.registered_on == ("w1", "w2", "w3")
    assert a.worker_routes == (("r", 3),)
    assert a.drifting == (("r", ("w1", "w2", "w3")),)
    assert a.consumers == b.consumers == ("w1", "w2", "w3")


# -- queues --------------------------------------------------------------------------------------

# Each case: routes, workers, broker queues, and the expected (status, has_consumers, depth, note part)
# of queue "q".
QUEUE_CASES = {
    "ok-consumed-and-routed": (
        {"a": route("q")},
        [worker("w1", ("q",), ("a",))],
        [],
        ("ok", True, None, None),
    ),
    "ok-depth-known": (
        {"a": route("q")},
        [worker("w1", ("q",), ("a",))],
        [BrokerQueue("q", 3)],
        ("ok", True, 3, None),
    ),
    "orphaned-with-depth": (
        {"a": route("q")},
        [],
        [BrokerQueue("q", 7)],
        ("orphaned", False, 7, "7 message(s) waiting"),
    ),
    "orphaned-broker-only": ({}, [], [BrokerQueue("q", 2)], ("orphaned", False, 2, "2 message(s) waiting")),
    "routed-no-consumer-empty": (
        {"a": route("q")},
        [],
        [BrokerQueue("q", 0)],
        ("ok", False, 0, "Routed here but no consumer yet"),
    ),
    "routed-no-consumer-depth-unknown": (
        {"a": route("q")},
        [],
        [BrokerQueue("q", None)],
        ("ok", False, None, "Routed here but no consumer yet"),
    ),
    "unrouted": ({}, [worker("w1", ("q",), ())], [], ("unrouted", True, None, "the API routes nothing here")),
    "unrouted-with-depth": (
        {},
        [worker("w1", ("q",), ())],
        [BrokerQueue("q", 4)],
        ("unrouted", True, 4, "the API routes nothing here"),
    ),
    "broker-only-empty": ({}, [], [BrokerQueue("q", 0)], ("ok", False, 0, "Nothing routes here")),
    "offline-consumer-named": (
        {"a": route("q")},
        [worker("w1", ("q",), ("a",), online=False)],
        [BrokerQueue("q", 5)],
        ("orphaned", False, 5, "(offline: w1)"),
    ),
    "duplicate-broker-entry-keeps-known-depth": (
        {"a": route("q")},
        [worker("w1", ("q",), ("a",))],
        [BrokerQueue("q", 9), BrokerQueue("q", None)],
        ("ok", True, 9, None),
    ),
}


@pytest.mark.parametrize(
    ("api_routes", "workers", "broker", "expected"), QUEUE_CASES.values(), ids=QUEUE_CASES.keys()
)
def test_queue_status(
    api_routes: dict[str, ApiRoute],
    workers: list[WorkerSnapshot],
    broker: list[BrokerQueue],
    expected: tuple[str, bool, int | None, str | None],
) -> None:
    report = compare(api_routes, workers, broker, DEFAULT)
    [queue] = [queue for queue in report.queues if queue.name == "q"]
    status, has_consumers, depth, note = expected
    assert (queue.status, queue.has_consumers, queue.depth) == (status, has_consumers, depth)
    if note is None:
        assert queue.note is None
    else:
        assert queue.note is not None and note in queue.note


def test_default_queue_is_never_unrouted() -> None:
    report = compare({}, [worker("w1", (DEFAULT,), ())], [], DEFAULT)
    [queue] = report.queues
    assert (queue.name, queue.is_default, queue.status, queue.routed) == (DEFAULT, True, "ok", True)


def test_queues_come_from_routes_default_workers_and_broker() -> None:
    workers = [worker("w1", ("consumed",), ()), worker("w2", ("offline-only",), (), online=False)]
    report = compare({"a": route("routed")}, workers, [BrokerQueue("on-broker", 0)], "dflt")
    assert [queue.name for queue in report.queues] == ["consumed", "dflt", "on-broker", "routed"]


# -- report --------------------------------------------------------------------------------------


def sample_report() -> RoutingReport:
    """A small cluster with one of each problem."""
    workers = [
        worker("w1", ("llm", "celery"), ("llm.summarize", "mail.send"), {"mail.send": "mail"}),
        worker("w2", ("stt",), ("stt.transcribe",)),
        worker("w3", ("spare",), ()),
        worker("w4", ("llm2",), ("llm.embed",), online=False),
    ]
    api_routes = {
        "llm.summarize": route("llm", "llm.*"),
        "llm.embed": route("llm2", "llm.embed"),
        "mail.send": ApiRoute("celery", None, "default"),
        "stt.transcribe": route("llm", "llm.*"),  # routed to a queue whose consumer lacks it
    }
    broker = [BrokerQueue("llm", 0), BrokerQueue("llm2", 12)]
    return compare(api_routes, workers, broker, "celery", sent_names=["llm.summarise"])


def test_to_dict_has_the_api_contract_shape() -> None:
    body = sample_report().to_dict()
    json.dumps(body)
    task_keys = {"task", "api_queue", "worker_route", "consumers", "registered_on", "status", "problems"}
    queue_keys = {"name", "depth", "consumers", "routed_tasks", "status"}
    assert all(task_keys | {"explanations", "api_pattern"} <= set(row) for row in body["tasks"])
    assert all(queue_keys | {"has_consumers", "note"} <= set(row) for row in body["queues"])
    assert [row["task"] for row in body["tasks"]] == sorted(row["task"] for row in body["tasks"])
    assert [row["name"] for row in body["queues"]] == sorted(row["name"] for row in body["queues"])
    statuses = {row["task"]: row["status"] for row in body["tasks"]}
    assert statuses == {
        "llm.embed": "unregistered",
        "llm.summarise": "unregistered",  # the typo, sent to the default queue
        "llm.summarize": "ok",
        "mail.send": "drift",
        "stt.transcribe": "wrong_queue",
    }
    queues = {row["name"]: row["status"] for row in body["queues"]}
    assert queues == {"celery": "ok", "llm": "ok", "llm2": "orphaned", "spare": "unrouted", "stt": "unrouted"}


def test_mismatches_and_consistent() -> None:
    report = sample_report()
    assert not report.consistent
    mismatches = report.mismatches()
    assert [row.task for row in mismatches.tasks] == [
        "llm.embed",
        "llm.summarise",
        "mail.send",
        "stt.transcribe",
    ]
    assert [queue.name for queue in mismatches.queues] == ["llm2", "spare", "stt"]
    assert report.consumed_queues() == {"celery", "llm", "spare", "stt"}
    assert report.offline_workers == ("w4",)


def test_consistent_ignores_informational_unrouted_queues() -> None:
    report = compare({"a": route("q")}, [worker("w1", ("q", "extra"), ("a",))], [], "q")
    assert report.consistent
    assert [queue.status for queue in report.mismatches().queues] == ["unrouted"]


@pytest.mark.parametrize(
    ("hosts", "expected"),
    [
        ((), "no worker"),
        (("a",), "a"),
        (("a", "b"), "a and b"),
        (("a", "b", "c"), "a, b and c"),
        (("a", "b", "c", "d", "e"), "a, b, c and 2 more"),
    ],
)
def test_hosts_phrase(hosts: tuple[str, ...], expected: str) -> None:
    assert hosts_phrase(hosts) == expected


# -- the grouped computation agrees with a naive one -------------------------------------------


def naive_rows(
    api_routes: Mapping[str, ApiRoute], workers: list[WorkerSnapshot], sent: list[str]
) -> dict[str, tuple[tuple[str, ...], tuple[str, ...], dict[str, int], dict[str, list[str]], list[str]]]:
    """Per task, straight from the definitions: consumers, registrars, route counts, drifters, problems."""
    online = sorted((w for w in workers if w.online), key=lambda w: w.hostname)
    names = set(api_routes).union(sent, *(w.registered for w in online))
    rows = {}
    for name in names:
        queue = api_routes.get(name, ApiRoute(DEFAULT, None, "default")).queue
        consumers = tuple(w.hostname for w in online if queue in w.queues)
        registered_on = tuple(w.hostname for w in online if name in w.registered)
        counts: dict[str, int] = {}
        drifting: dict[str, list[str]] = {}
        for w in online:
            declared = w.routes.get(name) if w.routes is not None else None
            if declared is not None:
                counts[declared] = counts.get(declared, 0) + 1
                if declared != queue:
                    drifting.setdefault(declared, []).append(w.hostname)
        problems = []
        if not registered_on:
            problems.append("unregistered")
        if not consumers:
            problems.append("orphaned")
        elif registered_on and not set(consumers) & set(registered_on):
            problems.append("wrong_queue")
        if drifting:
            problems.append("drift")
        rows[name] = (consumers, registered_on, counts, drifting, problems)
    return rows


@pytest.mark.parametrize("seed", range(12))
def test_grouped_comparison_matches_naive_definition(seed: int) -> None:
    rng = random.Random(seed)
    names = [f"t{i}" for i in range(12)]
    queues = ["q0", "q1", "q2", DEFAULT]
    api_routes = {
        name: rng.choice(
            [
                route(rng.choice(queues), "t*"),
                ApiRoute(DEFAULT, None, "default"),
                ApiRoute("q1", None, "override"),
            ]
        )
        for name in rng.sample(names, 9)
    }
    shared = {name: r.queue for name, r in api_routes.items() if r.source == "route"}
    tables: list[Mapping[str, str] | None] = [None, shared, dict(shared)]
    for _ in range(3):
        table = dict(shared)
        for name in rng.sample(names, 3):
            if rng.random() < 0.5:
                table.pop(name, None)
            else:
                table[name] = rng.choice(queues)
        tables.append(table)
    workers = [
        WorkerSnapshot(
            f"w{i:02d}",
            rng.random() < 0.85,
            frozenset(rng.sample(queues, rng.randint(0, 2))),
            frozenset(rng.sample(names, rng.randint(0, 8))),
            rng.choice(tables),
        )
        for i in rng.sample(range(20), 20)  # hostnames out of order
    ]
    sent = rng.sample(names + ["typo"], 4)
    report = compare(api_routes, workers, [], DEFAULT, sent_names=sent)
    expected = naive_rows(api_routes, workers, sent)
    assert {row.task for row in report.tasks} == set(expected)
    for row in report.tasks:
        consumers, registered_on, counts, drifting, problems = expected[row.task]
        assert row.consumers == consumers
        assert row.registered_on == registered_on
        assert dict(row.worker_routes) == counts
        assert {q: list(hosts) for q, hosts in row.drifting} == drifting
        assert [problem.code for problem in row.problems] == problems
