"""Unit tests for the bounded event-fed state (dashboard.model.state): no broker, no mocks."""

from __future__ import annotations

import dataclasses
import itertools
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dashboard.model.state import TRUNCATION_MARK, Change, State
from dashboard.model.state.store import MAX_EVENT_TYPES, OTHER_TYPE
from dashboard.model.state.tasks import accepts, recover_not_registered_name

CLIENT = "gen42@web-1"
WORKER = "celery@worker-1"
T0 = 1_700_000_000.0


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def event(kind: str, task_id: str = "t1", ts: float = T0, **fields: Any) -> dict[str, Any]:
    """Return a task event shaped like Celery's, with the fields that type carries."""
    body: dict[str, Any] = {"type": kind, "uuid": task_id, "timestamp": ts, "local_received": ts + 0.01}
    body["hostname"] = CLIENT if kind == "task-sent" else WORKER
    defaults: dict[str, dict[str, Any]] = {
        "task-sent": {
            "name": "llm.summarize", "args": "(1,)", "kwargs": "{}", "queue": "llm",
            "routing_key": "llm", "exchange": "", "retries": 0, "eta": None, "expires": None,
            "root_id": task_id, "parent_id": None,
        },
        "task-received": {
            "name": "llm.summarize", "args": "(1,)", "kwargs": "{}", "retries": 0,
            "eta": None, "expires": None, "root_id": task_id, "parent_id": None,
        },
        "task-succeeded": {"result": "'summary'", "runtime": 0.5},
        "task-failed": {"exception": "ValueError('boom')", "traceback": "Traceback ...\nValueError: boom"},
        "task-retried": {"exception": "Timeout('slow')", "traceback": "Traceback ...\nTimeout"},
    }  # fmt: skip
    body.update(defaults.get(kind, {}))
    body.update(fields)
    return body


def heartbeat(
    kind: str = "worker-heartbeat", ts: float = T0, local: float | None = None, **fields: Any
) -> dict[str, Any]:
    """Return a worker event shaped like Celery's."""
    body: dict[str, Any] = {
        "type": kind, "hostname": WORKER, "freq": 2.0, "sw_ident": "py-celery", "sw_ver": "5.7.0",
        "sw_sys": "Linux", "active": 1, "processed": 10, "loadavg": [0.5, 0.4, 0.3], "pid": 77,
        "timestamp": ts, "local_received": ts if local is None else local,
    }  # fmt: skip
    body.update(fields)
    return body


LIFECYCLE = [
    event("task-sent", ts=T0),
    event("task-received", ts=T0 + 1),
    event("task-started", ts=T0 + 2),
    event("task-succeeded", ts=T0 + 3),
]


# -- transitions ---------------------------------------------------------------


def test_in_order_lifecycle_fills_every_field() -> None:
    state = State(clock=FakeClock())
    changes = [state.apply(e) for e in LIFECYCLE]
    assert changes == [Change("task", "t1", True)] + [Change("task", "t1", False)] * 3
    task = state.task("t1")
    assert task is not None
    assert (task.state, task.name, task.args, task.kwargs) == ("SUCCESS", "llm.summarize", "(1,)", "{}")
    assert (task.queue, task.routing_key, task.exchange, task.worker) == ("llm", "llm", "", WORKER)
    assert (task.result, task.runtime, task.exception, task.retries) == ("'summary'", 0.5, None, 0)
    assert task.root_id == "t1"
    assert dict(task.timestamps) == {"sent": T0, "received": T0 + 1, "started": T0 + 2, "succeeded": T0 + 3}


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))), ids=lambda o: "".join(map(str, o)))
def test_any_arrival_order_converges_to_the_same_task(order: tuple[int, ...]) -> None:
    state = State()
    for index in order:
        state.apply(LIFECYCLE[index])
    task = state.task("t1")
    assert task is not None
    assert task.state == "SUCCESS"
    assert (task.name, task.args, task.queue, task.worker, task.result) == (
        "llm.summarize", "(1,)", "llm", WORKER, "'summary'",
    )  # fmt: skip
    assert [entry.type for entry in task.timeline] == [e["type"] for e in LIFECYCLE]
    assert [entry.hostname for entry in task.timeline] == [CLIENT, WORKER, WORKER, WORKER]
    assert state.counts().by_state["SUCCESS"] == 1
    assert sum(state.counts().by_state.values()) == 1


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        pytest.param(
            ["task-succeeded", "task-started", "task-received"], "SUCCESS", id="succeeded-started-received"
        ),
        pytest.param(["task-started", "task-received"], "STARTED", id="late-received"),
        pytest.param(["task-failed", "task-sent"], "FAILURE", id="late-sent"),
        pytest.param(
            ["task-received", "task-revoked", "task-started"], "REVOKED", id="revoked-wins-over-started"
        ),
        pytest.param(["task-rejected", "task-received"], "RECEIVED", id="requeued-after-reject"),
    ],
)
def test_state_never_moves_backwards(events: list[str], expected: str) -> None:
    state = State()
    # Timestamps follow the logical order, whatever the arrival order.
    logical = [
        "task-sent",
        "task-received",
        "task-rejected",
        "task-started",
        "task-revoked",
        "task-failed",
        "task-succeeded",
    ]
    for kind in events:
        state.apply(event(kind, ts=T0 + logical.index(kind)))
    task = state.task("t1")
    assert task is not None and task.state == expected


@pytest.mark.parametrize(
    ("current", "current_ts", "new", "new_ts", "expected"),
    [
        ("PENDING", 1, "RECEIVED", 2, True),
        ("STARTED", 3, "RECEIVED", 2, False),
        ("SUCCESS", 4, "STARTED", 3, False),
        ("SUCCESS", 4, "FAILURE", 5, False),  # Celery's precedence: SUCCESS outranks FAILURE
        ("FAILURE", 4, "SUCCESS", 5, True),
        ("STARTED", 3, "RETRY", 4, True),
        ("RETRY", 4, "RECEIVED", 5, True),  # the next attempt
        ("RETRY", 4, "STARTED", 3, False),  # the earlier attempt, delivered late
        ("SUCCESS", 9, "RETRY", 4, False),  # Celery would accept this one
        ("STARTED", 5, "STARTED", 3, False),
        ("STARTED", 3, "STARTED", 5, True),
    ],
)
def test_accepts_follows_celery_precedence_and_times_retries(
    current: str, current_ts: float, new: str, new_ts: float, expected: bool
) -> None:
    assert accepts(current, current_ts, new, new_ts) is expected


def test_retry_cycle_counts_retries_and_keeps_the_retry_error_in_the_timeline() -> None:
    state = State()
    sequence = [
        event("task-sent", ts=T0),
        event("task-received", ts=T0 + 1),
        event("task-started", ts=T0 + 2),
        event("task-retried", ts=T0 + 3),
        event("task-sent", ts=T0 + 2.9, retries=1),
        event("task-received", ts=T0 + 4, retries=1),
        event("task-started", ts=T0 + 5),
        event("task-succeeded", ts=T0 + 6),
        event("task-received", ts=T0 + 1.5, retries=0),  # duplicate of attempt 1, very late
    ]
    states = []
    for e in sequence:
        state.apply(e)
        task = state.task("t1")
        assert task is not None
        states.append(task.state)
    assert states == [
        "PENDING",
        "RECEIVED",
        "STARTED",
        "RETRY",
        "RETRY",
        "RECEIVED",
        "STARTED",
        "SUCCESS",
        "SUCCESS",
    ]
    final = state.task("t1")
    assert final is not None
    assert final.retries == 1
    assert final.exception is None and final.traceback is None  # the outcome is success
    retried = [entry for entry in final.timeline if entry.type == "task-retried"]
    assert [entry.detail for entry in retried] == ["Timeout('slow')"]
    assert final.timestamps["received"] == T0 + 4  # the last attempt's


def test_late_retry_after_success_neither_moves_state_nor_shows_its_error() -> None:
    state = State()
    state.apply(event("task-succeeded", ts=T0 + 6))
    state.apply(event("task-retried", ts=T0 + 3))
    task = state.task("t1")
    assert task is not None
    assert (task.state, task.exception) == ("SUCCESS", None)


# -- timeline ----------------------------------------------------------------


def test_timeline_is_ordered_by_timestamp_and_stable_for_ties() -> None:
    state = State()
    for kind, ts in [
        ("task-started", 3.0),
        ("task-sent", 1.0),
        ("task-revoked", 3.0),
        ("task-received", 2.0),
    ]:
        state.apply(event(kind, ts=ts, terminated=True, signum=15))
    task = state.task("t1")
    assert task is not None
    assert [(entry.type, entry.timestamp) for entry in task.timeline] == [
        ("task-sent", 1.0), ("task-received", 2.0), ("task-started", 3.0), ("task-revoked", 3.0),
    ]  # fmt: skip
    assert task.timeline[-1].detail == "terminated, signum=15"
    assert [e["type"] for e in task.to_dict()["timeline"]] == [entry.type for entry in task.timeline]


def test_timeline_is_bounded_and_keeps_the_first_entry() -> None:
    state = State(max_timeline=4)
    for step in range(10):
        state.apply(event("task-retried", ts=T0 + step))
    task = state.task("t1")
    assert task is not None
    assert [entry.timestamp - T0 for entry in task.timeline] == [0, 7, 8, 9]


# -- bounds ------------------------------------------------------------------


def test_eviction_drops_the_first_seen_tasks_at_the_cap() -> None:
    state = State(max_tasks=3)
    for number in range(5):
        state.apply(event("task-sent", task_id=f"t{number}", ts=T0 + number))
    state.apply(event("task-succeeded", task_id="t2", ts=T0 + 9))  # touching does not refresh
    state.apply(event("task-sent", task_id="t5", ts=T0 + 10))
    page, total = state.tasks()
    assert [task.id for task in page] == ["t5", "t4", "t3"]
    assert total == 3
    assert state.task("t0") is None and state.task("t2") is None
    counts = state.counts()
    assert (counts.tasks, counts.tasks_evicted, counts.by_state["PENDING"], counts.by_state["SUCCESS"]) == (
        3,
        3,
        3,
        0,
    )


@pytest.mark.parametrize(
    ("value", "cap", "expected"),
    [
        ("(1,)", 10, "(1,)"),
        ("x" * 10, 10, "x" * 10),
        ("x" * 11, 10, "x" * 10 + TRUNCATION_MARK.format(total=11)),
        ([1, 2, 3], 100, "[1, 2, 3]"),  # JSON producers may send lists
    ],
)
def test_long_strings_are_truncated_and_marked(value: object, cap: int, expected: str) -> None:
    state = State(max_text=cap)
    state.apply(event("task-sent", args=value, kwargs=value))
    state.apply(event("task-failed", ts=T0 + 1, traceback=value))
    task = state.task("t1")
    assert task is not None
    assert (task.args, task.kwargs, task.traceback) == (expected, expected, expected)


def test_event_type_counter_is_bounded() -> None:
    state = State()
    for number in range(MAX_EVENT_TYPES + 5):
        state.apply({"type": f"custom-{number}"})
    totals = state.events_total()
    assert len(totals) == MAX_EVENT_TYPES + 1
    assert totals[OTHER_TYPE] == 5


# -- workers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds_later", "status"),
    [(0.0, "online"), (3.9, "online"), (4.0, "offline"), (60.0, "offline")],
)
def test_worker_goes_offline_after_two_heartbeat_periods(seconds_later: float, status: str) -> None:
    clock = FakeClock(T0)
    state = State(clock=clock)
    state.apply(heartbeat(ts=T0 - 5, local=T0))  # worker clock skew does not matter
    clock.now = T0 + seconds_later
    [worker] = state.workers()
    assert worker.status == status
    assert worker.heartbeat_expires == T0 + 4.0  # freq 2 s x HEARTBEAT_EXPIRE_WINDOW 200 %
    assert state.counts().workers_online == (1 if status == "online" else 0)


def test_worker_offline_event_is_immediate_and_late_heartbeats_do_not_revive() -> None:
    clock = FakeClock(T0)
    state = State(clock=clock)
    state.apply(heartbeat("worker-online", ts=T0))
    assert state.apply(heartbeat("worker-offline", ts=T0 + 1)) == Change("worker", WORKER, False)
    view = state.worker(WORKER)
    assert view is not None and view.status == "offline"
    state.apply(heartbeat(ts=T0 + 0.5, local=T0 + 1.5))  # sent before going offline
    view = state.worker(WORKER)
    assert view is not None and view.status == "offline"
    state.apply(heartbeat("worker-online", ts=T0 + 2))  # restarted
    view = state.worker(WORKER)
    assert view is not None and view.status == "online"


def test_heartbeat_fields_come_from_the_newest_report() -> None:
    state = State(clock=FakeClock(T0))
    state.apply(heartbeat(ts=T0 + 2, active=3, processed=50))
    state.apply(heartbeat(ts=T0 + 1, active=9, processed=40))
    view = state.worker(WORKER)
    assert view is not None
    assert (view.active, view.processed, view.loadavg, view.pid, view.freq) == (
        3,
        50,
        (0.5, 0.4, 0.3),
        77,
        2.0,
    )
    assert view.last_heartbeat == T0 + 2
    assert view.to_dict()["sw"] == {"ident": "py-celery", "ver": "5.7.0", "sys": "Linux"}


def test_task_events_from_a_known_worker_count_as_signs_of_life() -> None:
    clock = FakeClock(T0)
    state = State(clock=clock)
    state.apply(heartbeat(ts=T0))
    clock.now = T0 + 10
    state.apply(event("task-started", ts=T0 + 9.9, local_received=T0 + 10))
    view = state.worker(WORKER)
    assert view is not None and view.status == "online"
    state.apply(event("task-sent", ts=T0 + 10, hostname="gen1@client"))
    assert [w.hostname for w in state.workers()] == [WORKER]  # clients are not workers


def test_inspection_results_are_copied_into_the_worker() -> None:
    clock = FakeClock(T0)
    state = State(clock=clock)
    pool: dict[str, Any] = {"max-concurrency": 4, "processes": [1, 2]}
    change = state.update_worker_inspection(
        WORKER, queues=["llm", "default"], registered=["llm.summarize"], pool=pool
    )
    assert change == Change("worker", WORKER, True)
    pool["processes"].append(3)  # the poller's dict changing later must not leak in
    view = state.worker(WORKER)
    assert view is not None
    assert (view.queues, view.registered, view.status, view.inspected_at) == (
        ("llm", "default"), ("llm.summarize",), "offline", T0,
    )  # fmt: skip
    as_dict = view.to_dict()
    assert as_dict["pool"] == {"max-concurrency": 4, "processes": [1, 2]}
    state.update_worker_inspection(WORKER, stats={"total": {}})
    view = state.worker(WORKER)
    assert view is not None and view.queues == ("llm", "default") and view.stats == {"total": {}}


def test_worker_cap_forgets_offline_workers_first() -> None:
    clock = FakeClock(T0)
    state = State(clock=clock, max_workers=2)
    state.apply(heartbeat(hostname="celery@a", ts=T0))
    state.apply(heartbeat("worker-offline", hostname="celery@b", ts=T0))
    state.apply(heartbeat(hostname="celery@c", ts=T0))
    assert [w.hostname for w in state.workers()] == ["celery@a", "celery@c"]


# -- NotRegistered -------------------------------------------------------------

NOT_REGISTERED: dict[str, Any] = {"exception": "NotRegistered('llm.summarize')", "traceback": None}


def not_registered_failure(ts: float) -> dict[str, Any]:
    """Return the task-failed event a worker sends for an unknown task name (no name field)."""
    failed = event("task-failed", ts=ts, **NOT_REGISTERED)
    assert "name" not in failed
    return failed


@pytest.mark.parametrize("sent_first", [True, False], ids=["sent-first", "failed-first"])
def test_not_registered_keeps_the_name_from_task_sent(sent_first: bool) -> None:
    state = State()
    sent = event("task-sent", ts=T0, name="llm.summarize")
    failed = not_registered_failure(T0 + 1)
    for e in [sent, failed] if sent_first else [failed, sent]:
        state.apply(e)
    task = state.task("t1")
    assert task is not None
    assert (task.name, task.state, task.not_registered, task.queue, task.worker) == (
        "llm.summarize", "FAILURE", True, "llm", WORKER,
    )  # fmt: skip
    assert task.to_dict()["not_registered"] is True


def test_not_registered_without_task_sent_recovers_the_name() -> None:
    state = State()
    state.apply(not_registered_failure(T0))
    task = state.task("t1")
    assert task is not None
    assert (task.name, task.not_registered) == ("llm.summarize", True)


def test_an_ordinary_failure_is_not_not_registered() -> None:
    state = State()
    state.apply(event("task-failed", exception="NotRegistered('other.task')", name="llm.summarize"))
    task = state.task("t1")
    assert task is not None and task.not_registered is False


@pytest.mark.parametrize(
    ("exception", "name"),
    [
        ("NotRegistered('llm.summarize')", "llm.summarize"),
        ('NotRegistered("it\'s.odd")', "it's.odd"),
        ("NotRegistered('caf\\xe9.t')", "caf\xe9.t"),
        ("NotRegistered(__import__('os').system('true'))", None),
        ("NotRegistered(42)", None),
        ("NotRegistered('')", None),
        ("NotRegistered('unterminated)", None),
        ("KeyError('llm.summarize')", None),
        ("NotRegistered('" + "x" * 5000 + "')", None),
    ],
)
def test_recover_not_registered_name_parses_without_eval(exception: str, name: str | None) -> None:
    assert recover_not_registered_name(exception) == name


# -- readers -----------------------------------------------------------------


@pytest.fixture()
def mixed_state() -> State:
    """Return a state of 12 tasks over 3 names, 2 queues, 2 workers and 3 end states."""
    state = State()
    for number in range(12):
        task_id = f"t{number:02d}"
        name = ("a.one", "b.two", "c.three")[number % 3]
        queue = ("q1", "q2")[number % 2]
        worker = ("celery@w1", "celery@w2")[number % 2]
        final = ("task-succeeded", "task-failed", "task-started")[number % 3]
        state.apply(
            event("task-sent", task_id=task_id, ts=T0 + number, name=name, queue=queue, routing_key=queue)
        )
        state.apply(event(final, task_id=task_id, ts=T0 + number + 0.5, hostname=worker))
    return state


def ids_of(number_list: list[int]) -> list[str]:
    """Return task ids for numbers, newest first."""
    return [f"t{number:02d}" for number in sorted(number_list, reverse=True)]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, ids_of(list(range(12)))),
        ({"state": "SUCCESS"}, ids_of([0, 3, 6, 9])),
        ({"state": "REVOKED"}, []),
        ({"state": "NOPE"}, []),
        ({"name": "b.two"}, ids_of([1, 4, 7, 10])),
        ({"queue": "q2"}, ids_of([1, 3, 5, 7, 9, 11])),
        ({"worker": "celery@w1"}, ids_of([0, 2, 4, 6, 8, 10])),
        ({"state": "FAILURE", "queue": "q2"}, ids_of([1, 7])),
        ({"name": "c.three", "worker": "celery@w1", "queue": "q1"}, ids_of([2, 8])),
        ({"name": "c.three", "worker": "celery@w1", "queue": "q2"}, []),
    ],
    ids=lambda value: json.dumps(value) if isinstance(value, dict) else None,
)
def test_filters_return_newest_first_with_totals(
    mixed_state: State, filters: dict[str, Any], expected: list[str]
) -> None:
    page, total = mixed_state.tasks(**filters, limit=100)
    assert [task.id for task in page] == expected
    assert total == len(expected)


@pytest.mark.parametrize(
    ("filters", "limit", "offset", "expected", "total"),
    [
        ({}, 5, 0, ids_of([11, 10, 9, 8, 7]), 12),
        ({}, 5, 10, ids_of([1, 0]), 12),
        ({}, 5, 20, [], 12),
        ({}, 0, 0, [], 12),
        ({"queue": "q1"}, 2, 2, ids_of([6, 4]), 6),
        ({"queue": "q1"}, 2, 6, [], 6),
    ],
)
def test_pagination(
    mixed_state: State, filters: dict[str, Any], limit: int, offset: int, expected: list[str], total: int
) -> None:
    page, matching = mixed_state.tasks(**filters, limit=limit, offset=offset)
    assert [task.id for task in page] == expected
    assert matching == total


@pytest.mark.parametrize(("limit", "offset"), [(-1, 0), (10, -1)])
def test_negative_paging_is_rejected(mixed_state: State, limit: int, offset: int) -> None:
    with pytest.raises(ValueError):
        mixed_state.tasks(limit=limit, offset=offset)


def test_counts(mixed_state: State) -> None:
    counts = mixed_state.counts()
    assert (counts.tasks, counts.events, counts.workers, counts.workers_online) == (12, 24, 0, 0)
    assert {k: v for k, v in counts.by_state.items() if v} == {"SUCCESS": 4, "FAILURE": 4, "STARTED": 4}
    assert mixed_state.events_total() == {
        "task-sent": 12,
        "task-succeeded": 4,
        "task-failed": 4,
        "task-started": 4,
    }
    json.dumps(counts.to_dict())


def test_views_are_immutable_json_ready_snapshots() -> None:
    state = State(clock=FakeClock())
    state.apply(LIFECYCLE[0])
    before = state.task("t1")
    for e in LIFECYCLE[1:]:
        state.apply(e)
    state.apply(heartbeat())
    assert before is not None and before.state == "PENDING" and len(before.timeline) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.state = "SUCCESS"  # type: ignore[misc]
    after = state.task("t1")
    assert after is not None
    task_dict = after.to_dict()
    api_keys = {"id", "name", "state", "queue", "routing_key", "worker", "args", "kwargs", "result"}
    api_keys |= {"exception", "traceback", "runtime", "timestamps", "retries", "not_registered", "timeline"}
    assert api_keys <= task_dict.keys()
    assert set(task_dict["timeline"][0]) >= {"type", "timestamp", "hostname"}
    [worker] = state.workers()
    worker_dict = worker.to_dict()
    assert {"hostname", "status", "last_heartbeat", "active", "processed", "loadavg", "pool", "queues",
            "registered", "sw"} <= worker_dict.keys()  # fmt: skip
    json.dumps([task_dict, worker_dict, state.counts().to_dict()])


def test_readers_can_run_while_the_owner_applies() -> None:
    state = State(max_tasks=500)
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                page, total = state.tasks(state="SUCCESS", limit=10)
                assert all(task.state == "SUCCESS" for task in page) and total >= len(page)
                state.counts()
                time.sleep(0.001)  # a web reader, not a spin loop that starves the owner
        except BaseException as error:  # noqa: BLE001 - reported to the main thread
            errors.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    for number in range(2_000):
        for e in LIFECYCLE:
            state.apply({**e, "uuid": f"t{number}"})
    done.set()
    reader.join(timeout=10)
    assert not errors and not reader.is_alive()
    assert state.counts().tasks == 500


def _random_history(seed: int, events: int, max_tasks: int) -> State:
    """Tasks sent, received, started, finished, retried by another worker and failed as NotRegistered, at random,
    with eviction: every way a task's state, name, queue or worker can change."""
    rng = __import__("random").Random(seed)
    state = State(max_tasks=max_tasks)
    names = [f"app.tasks.t{i}" for i in range(6)]
    queues = ["default", "llm", "stt"]
    workers = [f"celery@w{i}" for i in range(4)]
    now = 1_700_000_000.0
    for step in range(events):
        now += 0.01
        task_id = f"t{rng.randrange(events // 3)}"
        kind = rng.choice(["task-sent", "task-received", "task-started", "task-succeeded", "task-failed",
                           "task-retried", "task-sent"])
        event: dict[str, Any] = {"type": kind, "uuid": task_id, "timestamp": now, "local_received": now}
        if kind == "task-sent":
            event.update(name=rng.choice(names), queue=rng.choice(queues))
        else:
            event["hostname"] = rng.choice(workers)
        if kind == "task-received" and rng.random() < 0.5:
            event["name"] = rng.choice(names)
        if kind == "task-failed" and step % 5 == 0:
            event["exception"] = f"NotRegistered('app.tasks.typo{step % 3}')"
        state.apply(event)
    return state


@pytest.mark.parametrize("seed", range(5))
def test_filtered_pages_and_totals_match_a_full_scan(seed: int) -> None:
    state = _random_history(seed, events=3000, max_tasks=250)
    everything, total = state.tasks(limit=10_000)
    assert total == len(everything) <= 250

    filters: list[dict[str, str]] = []
    for field in ("state", "name", "queue", "worker"):
        values = {getattr(task, field) for task in everything if getattr(task, field) is not None}
        filters += [{field: value} for value in sorted(values)] + [{field: "no-such-value"}]
    some = everything[len(everything) // 2]
    filters.append({"state": some.state, "name": some.name or "x", "worker": some.worker or "x"})
    filters.append({"queue": some.queue or "x", "name": some.name or "x"})

    for query in filters:
        expected = [task.id for task in everything if all(getattr(task, k) == v for k, v in query.items())]
        page, found_total = state.tasks(**query, limit=7, offset=3)
        assert found_total == len(expected), query
        assert [task.id for task in page] == expected[3:10], query


# -- robustness --------------------------------------------------------------


def test_resync_events_are_applied_but_not_counted_as_events_taken_in() -> None:
    state = State()
    state.apply({"type": "task-sent", "uuid": "t1", "name": "a.b", "timestamp": 1.0})
    change = state.apply({"type": "task-started", "uuid": "t1", "hostname": WORKER, "timestamp": 2.0, "resync": True})

    assert change is not None
    task = state.task("t1")
    assert task is not None and task.state == "STARTED"
    assert state.events_total() == {"task-sent": 1}


@pytest.mark.parametrize("kind", ["task-custom", "worker-something", "cluster-x", ""])
def test_unknown_event_types_are_counted_and_ignored(kind: str) -> None:
    state = State()
    assert state.apply({"type": kind, "uuid": "t1", "hostname": WORKER}) is None
    assert state.events_total() == {kind: 1}
    assert state.counts().tasks == 0 and state.workers() == []


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"type": None},
        {"type": 5},
        {"type": "task-sent"},
        {"type": "task-sent", "uuid": None},
        {"type": "task-sent", "uuid": ""},
        {"type": "task-sent", "uuid": 123},
        {"type": "worker-heartbeat"},
        {"type": "worker-offline", "hostname": None},
    ],
)
def test_events_without_an_identity_are_ignored(bad: dict[str, Any]) -> None:
    state = State()
    assert state.apply(bad) is None
    assert state.counts().events == 1 and state.counts().tasks == 0 and state.workers() == []


@pytest.mark.parametrize(
    "odd",
    [
        {"type": "task-started", "uuid": "t1"},
        {"type": "task-sent", "uuid": "t1", "timestamp": "yesterday", "retries": "two", "args": ["x"]},
        {
            "type": "task-succeeded",
            "uuid": "t1",
            "timestamp": float("nan"),
            "runtime": "fast",
            "result": None,
        },
        {"type": "task-revoked", "uuid": "t1", "timestamp": True, "hostname": 7, "signum": 9},
        {"type": "task-failed", "uuid": "t1", "exception": 12, "name": None},
        {"type": "task-received", "uuid": "t1", "name": {"odd": 1}, "eta": 5},
    ],
)
def test_task_events_missing_fields_do_not_crash(odd: dict[str, Any]) -> None:
    clock = FakeClock(T0)
    state = State(clock=clock)
    assert state.apply(odd) == Change("task", "t1", True)
    task = state.task("t1")
    assert task is not None
    assert task.timeline[0].timestamp == T0  # no usable timestamp: the clock's
    json.dumps(task.to_dict())


@pytest.mark.parametrize(
    "odd",
    [
        {"type": "worker-heartbeat", "hostname": WORKER},
        {"type": "worker-online", "hostname": WORKER, "freq": "x", "loadavg": "high", "active": None},
        {"type": "worker-heartbeat", "hostname": WORKER, "freq": -1, "loadavg": [1, "x", 2], "pid": 1.5},
        {"type": "worker-offline", "hostname": WORKER, "timestamp": None},
    ],
)
def test_worker_events_missing_fields_do_not_crash(odd: dict[str, Any]) -> None:
    state = State(clock=FakeClock(T0))
    assert state.apply(odd) == Change("worker", WORKER, True)
    [worker] = state.workers()
    assert worker.freq == 60.0  # Celery's default when none is usable
    json.dumps(worker.to_dict())


def test_state_package_imports_only_the_standard_library() -> None:
    root = Path(__file__).resolve().parents[2]
    code = (
        "import sys; before = set(sys.modules); import dashboard.model.state; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print('\\n'.join(sorted(new - set(sys.stdlib_module_names) - {'dashboard'})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split() == []


def test_the_timeline_says_where_the_task_went_how_long_it_ran_and_why_it_failed() -> None:
    # Once the Detail column was empty for every entry but retries and revocations.
    state = State()
    state.apply({"type": "task-sent", "uuid": "ok", "name": "a.b", "queue": "llm", "timestamp": 1.0})
    state.apply({"type": "task-succeeded", "uuid": "ok", "runtime": 0.25, "result": "1", "timestamp": 2.0,
                 "hostname": "celery@w"})
    state.apply({"type": "task-sent", "uuid": "ko", "name": "a.b", "queue": "llm", "timestamp": 1.0})
    state.apply({"type": "task-failed", "uuid": "ko", "exception": "ValueError('no')", "timestamp": 2.0,
                 "hostname": "celery@w"})

    ok, ko = state.task("ok"), state.task("ko")
    assert ok is not None and ko is not None
    assert [entry.detail for entry in ok.timeline] == ["to queue llm", "ran 0.250 s"]
    assert [entry.detail for entry in ko.timeline] == ["to queue llm", "ValueError('no')"]


def test_a_name_filter_that_is_no_task_name_matches_parts_of_names() -> None:
    # Once only an exact name matched: "billing" found nothing among billing.refund and billing.charge.
    state = State()
    for task_id, name in (("a", "billing.refund"), ("b", "billing.charge"), ("c", "mail.send"), ("d", "Billing.x")):
        state.apply({"type": "task-sent", "uuid": task_id, "name": name, "queue": "q", "timestamp": 1.0})
    state.apply({"type": "task-started", "uuid": "b", "hostname": "celery@w", "timestamp": 2.0})

    page, total = state.tasks(name="billing")
    assert total == 3 and {task.id for task in page} == {"a", "b", "d"}  # case-insensitive
    assert state.tasks(name="mail.send")[1] == 1  # an exact name is exact
    page, total = state.tasks(name="billing", state="STARTED")
    assert total == 1 and [task.id for task in page] == ["b"]
    assert state.tasks(name="nothing-like-it") == ([], 0)


def test_tasks_sort_by_runtime_name_state_or_sighting_missing_values_last() -> None:
    state = State()
    for task_id, name, runtime in (("a", "n.b", 0.5), ("b", "n.a", 2.0), ("c", "n.c", None), ("d", "n.d", 0.1)):
        state.apply({"type": "task-sent", "uuid": task_id, "name": name, "timestamp": 1.0})
        if runtime is not None:
            state.apply({"type": "task-succeeded", "uuid": task_id, "runtime": runtime, "hostname": "celery@w",
                         "timestamp": 2.0})

    def ids(sort: str, **filters: str) -> list[str]:
        return [task.id for task in state.tasks(sort=sort, **filters)[0]]  # type: ignore[arg-type]

    assert ids("-runtime") == ["b", "a", "d", "c"]  # longest first; no runtime last
    assert ids("runtime") == ["d", "a", "b", "c"]
    assert ids("name") == ["b", "a", "c", "d"]
    assert ids("seen") == ["a", "b", "c", "d"] and ids("-seen") == ["d", "c", "b", "a"]
    assert ids("-runtime", state="SUCCESS") == ["b", "a", "d"]
    page, total = state.tasks(sort="-runtime", limit=2, offset=1)
    assert [task.id for task in page] == ["a", "d"] and total == 4
    with pytest.raises(ValueError):
        state.tasks(sort="worker")
