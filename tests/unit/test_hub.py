"""Unit tests for the per-client change fan-out (dashboard.services.events.hub): pure threading, no sockets."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from dashboard.services.events.hub import KINDS, Batch, Hub, Subscriber

DEADLINE = 5.0  # seconds a thread gets to finish; far above what any of them needs, so never the limiting factor
LONG_WAIT = 30.0  # a take() timeout that would make a test visibly hang if the wake-up did not happen


class Taker:
    """Runs `subscriber.take(timeout)` on its own thread and keeps the result."""

    def __init__(self, subscriber: Subscriber, timeout: float = LONG_WAIT) -> None:
        self.result: Batch | None = None
        self.entered = threading.Event()
        self._subscriber = subscriber
        self._timeout = timeout
        self.thread = threading.Thread(target=self._run, name="test-taker", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.entered.set()
        self.result = self._subscriber.take(self._timeout)

    def join(self) -> None:
        """Wait for take() to return, failing the test at the deadline instead of hanging."""
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), "take() did not return before the deadline"


def started_taker(subscriber: Subscriber) -> Taker:
    """A taker already inside (or about to enter) its wait."""
    taker = Taker(subscriber)
    assert taker.entered.wait(DEADLINE)
    # Give it a moment to reach Condition.wait; the assertions hold even if it has not, only the path differs.
    taker.thread.join(0.05)
    assert taker.thread.is_alive(), "take() returned before anything was marked"
    return taker


def run_with_deadline(target: Callable[[], None]) -> None:
    """Run `target` on a thread and fail if it has not finished by the deadline (it must never block)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="test-publisher", daemon=True)
    thread.start()
    thread.join(DEADLINE)
    assert not thread.is_alive(), "did not finish before the deadline: it blocked"
    if errors:
        raise errors[0]


# -- Batch -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch", "truthy"),
    [
        (Batch(), False),
        (Batch({"task": []}), False),
        (Batch({"task": ["t1"]}), True),
        (Batch({}, resync=True), True),
    ],
)
def test_batch_is_truthy_only_with_keys_or_resync(batch: Batch, truthy: bool) -> None:
    assert bool(batch) is truthy


def test_batch_get_of_an_absent_kind_is_empty() -> None:
    assert Batch({"task": ["t1"]}).get("worker") == []


# -- Subscriber: marking and taking ------------------------------------------------------------------------------


def test_marks_are_deduplicated_per_kind() -> None:
    subscriber = Subscriber()
    for _ in range(3):
        subscriber.mark("task", "a")
    subscriber.mark("worker", "a")  # the same key under another kind is another change

    batch = subscriber.take(0)

    assert batch is not None
    assert batch.get("task") == ["a"]
    assert batch.get("worker") == ["a"]
    assert batch.resync is False


def test_take_returns_keys_oldest_mark_first() -> None:
    subscriber = Subscriber()
    for key in ("c", "a", "b", "a"):
        subscriber.mark("task", key)

    batch = subscriber.take(0)

    assert batch is not None
    assert batch.get("task") == ["c", "a", "b"]


def test_take_returns_every_kind_and_clears() -> None:
    subscriber = Subscriber()
    for kind in KINDS:
        subscriber.mark(kind, f"{kind}-key")

    batch = subscriber.take(0)
    again = subscriber.take(0)

    assert batch is not None
    assert batch.keys == {kind: [f"{kind}-key"] for kind in KINDS}
    assert again is not None
    assert not again
    assert again.keys == {}


def test_take_without_changes_returns_an_empty_batch_after_the_timeout() -> None:
    batch = Subscriber().take(0.01)

    assert batch is not None
    assert not batch


def test_a_waiting_take_wakes_on_a_mark_from_another_thread() -> None:
    subscriber = Subscriber()
    taker = started_taker(subscriber)

    subscriber.mark("task", "t1")
    taker.join()  # well before LONG_WAIT: the mark woke it

    assert taker.result is not None
    assert taker.result.get("task") == ["t1"]


def test_a_key_marked_again_after_take_is_delivered_again() -> None:
    subscriber = Subscriber()
    subscriber.mark("task", "t1")
    subscriber.take(0)

    subscriber.mark("task", "t1")
    batch = subscriber.take(0)

    assert batch is not None
    assert batch.get("task") == ["t1"]


def test_a_burst_for_one_key_coalesces_to_one_key() -> None:
    subscriber = Subscriber(max_pending=10)
    for _ in range(10_000):
        subscriber.mark("task", "hot")

    batch = subscriber.take(0)

    assert batch is not None
    assert batch.keys == {"task": ["hot"]}
    assert batch.resync is False
    assert subscriber.overflows == 0


# -- Subscriber: overflow and resync -----------------------------------------------------------------------------


def test_max_pending_distinct_keys_fit_without_overflow() -> None:
    subscriber = Subscriber(max_pending=3)
    for key in ("a", "b", "c"):
        subscriber.mark("task", key)
    subscriber.mark("task", "a")  # already pending: no new room needed even at the cap

    batch = subscriber.take(0)

    assert batch is not None
    assert batch.get("task") == ["a", "b", "c"]
    assert batch.resync is False
    assert subscriber.overflows == 0


def test_overflow_past_max_pending_turns_into_a_resync() -> None:
    subscriber = Subscriber(max_pending=3)
    for key in ("a", "b", "c", "d"):
        subscriber.mark("task", key)

    batch = subscriber.take(0)

    assert subscriber.overflows == 1
    assert batch is not None
    assert batch.resync is True
    assert batch.keys == {}  # pending keys were dropped: the snapshot covers them
    assert batch  # a resync alone is something to send


def test_the_pending_limit_counts_keys_of_every_kind() -> None:
    subscriber = Subscriber(max_pending=3)
    subscriber.mark("task", "a")
    subscriber.mark("worker", "a")
    subscriber.mark("alert", "a")
    subscriber.mark("status", "live")

    batch = subscriber.take(0)

    assert subscriber.overflows == 1
    assert batch is not None
    assert batch.resync is True


def test_marks_while_a_resync_is_pending_are_dropped_and_not_counted_as_overflows() -> None:
    subscriber = Subscriber(max_pending=2)
    for key in ("a", "b", "c", "d", "e", "f"):
        subscriber.mark("task", key)

    batch = subscriber.take(0)

    assert subscriber.overflows == 1
    assert batch is not None
    assert batch.resync is True
    assert batch.keys == {}


def test_after_a_resync_is_taken_marks_are_delivered_again_and_overflows_accumulate() -> None:
    subscriber = Subscriber(max_pending=2)
    for key in ("a", "b", "c"):
        subscriber.mark("task", key)
    subscriber.take(0)

    subscriber.mark("task", "x")
    after = subscriber.take(0)
    for key in ("p", "q", "r"):
        subscriber.mark("task", key)
    second = subscriber.take(0)

    assert after is not None
    assert after.resync is False
    assert after.get("task") == ["x"]
    assert second is not None
    assert second.resync is True
    assert subscriber.overflows == 2


def test_request_resync_drops_pending_keys_and_is_taken_once() -> None:
    subscriber = Subscriber()
    subscriber.mark("task", "a")

    subscriber.request_resync()
    batch = subscriber.take(0)
    next_batch = subscriber.take(0)

    assert batch is not None
    assert batch.resync is True
    assert batch.keys == {}
    assert next_batch is not None
    assert next_batch.resync is False
    assert subscriber.overflows == 0  # asked for, not forced


def test_request_resync_wakes_a_waiting_take() -> None:
    subscriber = Subscriber()
    taker = started_taker(subscriber)

    subscriber.request_resync()
    taker.join()

    assert taker.result is not None
    assert taker.result.resync is True


# -- Subscriber: close -------------------------------------------------------------------------------------------


def test_close_makes_a_waiting_take_return_none_promptly() -> None:
    subscriber = Subscriber()
    taker = started_taker(subscriber)

    subscriber.close()
    taker.join()  # well before LONG_WAIT

    assert taker.result is None
    assert subscriber.closed is True


def test_a_closed_subscriber_takes_none_and_ignores_marks() -> None:
    subscriber = Subscriber()
    subscriber.mark("task", "before")
    subscriber.close()

    subscriber.mark("task", "after")
    subscriber.request_resync()

    assert subscriber.take(0) is None
    assert subscriber.take(0.01) is None


def test_a_new_subscriber_is_open() -> None:
    assert Subscriber().closed is False


# -- Hub -----------------------------------------------------------------------------------------------------------


def test_publish_reaches_every_subscriber() -> None:
    hub = Hub()
    subscribers = [hub.subscribe() for _ in range(3)]

    hub.publish("task", "t1")
    hub.publish("status")  # the key defaults to ""

    assert hub.size == 3
    for subscriber in subscribers:
        batch = subscriber.take(0)
        assert batch is not None
        assert batch.keys == {"task": ["t1"], "status": [""]}


def test_publish_many_marks_each_key() -> None:
    hub = Hub()
    subscriber = hub.subscribe()

    hub.publish_many("worker", ["w1", "w2", "w1"])

    batch = subscriber.take(0)
    assert batch is not None
    assert batch.get("worker") == ["w1", "w2"]


def test_a_subscriber_sees_only_changes_published_after_it_subscribed() -> None:
    hub = Hub()
    hub.publish("task", "early")
    subscriber = hub.subscribe()
    hub.publish("task", "late")

    batch = subscriber.take(0)

    assert batch is not None
    assert batch.get("task") == ["late"]


def test_unsubscribe_closes_and_forgets_only_that_subscriber() -> None:
    hub = Hub()
    leaving, staying = hub.subscribe(), hub.subscribe()

    hub.unsubscribe(leaving)
    hub.publish("task", "t1")

    assert hub.size == 1
    assert leaving.closed is True
    assert leaving.take(0) is None
    batch = staying.take(0)
    assert batch is not None
    assert batch.get("task") == ["t1"]


def test_unsubscribe_wakes_the_subscribers_waiting_take() -> None:
    hub = Hub()
    subscriber = hub.subscribe()
    taker = started_taker(subscriber)

    hub.unsubscribe(subscriber)
    taker.join()

    assert taker.result is None


def test_unsubscribing_twice_is_harmless() -> None:
    hub = Hub()
    subscriber = hub.subscribe()

    hub.unsubscribe(subscriber)
    hub.unsubscribe(subscriber)

    assert hub.size == 0


def test_resync_all_asks_every_subscriber_for_a_snapshot() -> None:
    hub = Hub()
    subscribers = [hub.subscribe() for _ in range(2)]
    hub.publish("task", "t1")

    hub.resync_all()

    for subscriber in subscribers:
        batch = subscriber.take(0)
        assert batch is not None
        assert batch.resync is True
        assert batch.keys == {}


def test_subscribers_inherit_the_hubs_max_pending_and_overflows_are_totalled() -> None:
    hub = Hub(max_pending=2)
    first, second = hub.subscribe(), hub.subscribe()

    hub.publish_many("task", ["a", "b", "c"])

    assert first.overflows == second.overflows == 1
    assert hub.overflow_total() == 2


def test_a_slow_subscriber_does_not_block_publish_and_is_resynced() -> None:
    hub = Hub()  # the default bound
    slow = hub.subscribe()  # never takes while the burst runs
    keys = [f"task-{n}" for n in range(100_000)]

    run_with_deadline(lambda: hub.publish_many("task", keys))

    assert slow.overflows >= 1
    batch = slow.take(0)
    assert batch is not None
    assert batch.resync is True
    assert batch.keys == {}


def test_a_slow_subscriber_does_not_hold_back_a_fast_one() -> None:
    hub = Hub(max_pending=100)
    slow = hub.subscribe()
    fast = hub.subscribe()
    seen: list[str] = []

    for start in range(0, 1_000, 50):
        hub.publish_many("task", [f"t{n}" for n in range(start, start + 50)])
        batch = fast.take(0)
        assert batch is not None
        assert batch.resync is False
        seen.extend(batch.get("task"))

    assert seen == [f"t{n}" for n in range(1_000)]
    assert fast.overflows == 0
    assert slow.overflows == 1


def test_concurrent_publisher_and_taker_lose_no_key() -> None:
    hub = Hub(max_pending=1_000_000)  # no overflow: every key must arrive exactly as marked
    subscriber = hub.subscribe()
    keys = [f"t{n}" for n in range(20_000)]
    received: list[str] = []
    resyncs: list[Batch] = []
    done = threading.Event()

    def consume() -> None:
        while True:
            publisher_done = done.is_set()  # read before take(): an empty take after it means fully drained
            batch = subscriber.take(0.01)
            if batch is None:
                return
            if batch.resync:
                resyncs.append(batch)
            received.extend(batch.get("task"))
            if publisher_done and not batch:
                return

    consumer = threading.Thread(target=consume, name="test-consumer", daemon=True)
    consumer.start()
    run_with_deadline(lambda: hub.publish_many("task", keys))
    done.set()
    consumer.join(DEADLINE)

    assert not consumer.is_alive(), "consumer did not drain before the deadline"
    assert resyncs == []
    assert sorted(received) == sorted(keys)  # each distinct key once: none lost, none delivered twice
