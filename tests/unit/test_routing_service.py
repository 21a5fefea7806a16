"""RoutingService's alert history (dashboard.services.routing), driven by hand: no broker, no worker, no thread.

The service is built on an unreachable broker URL and never started; names come in as task-sent events, the
comparison runs on demand with no workers and no broker depths, and the monitor's clock is moved by the test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dashboard.model.state import State
from dashboard.services import routing as routing_module
from dashboard.services.client import ClientSettings, SendOnlyClient, build_send_only_app
from dashboard.services.events.hub import Hub
from dashboard.services.events.stream import StreamLog
from dashboard.services.inspection import WorkerInspector
from dashboard.services.routing import RoutingService

T0 = 1_700_000_000.0
UNREACHABLE_BROKER = "redis://127.0.0.1:1/0"


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def service(clock: FakeClock) -> Iterator[RoutingService]:
    settings = ClientSettings(UNREACHABLE_BROKER, None, {}, "celery")
    client = SendOnlyClient(settings)
    built = RoutingService(client, State(clock=clock), Hub(), StreamLog(clock),
                           WorkerInspector(build_send_only_app(settings)), None, [], grace=0.0, inspect_interval=10.0,
                           clock=clock)
    built.inspected_at = T0  # as if the workers had been asked (there are none)
    yield built
    client.close()


def sent(service: RoutingService, name: str) -> None:
    service.note_event({"type": "task-sent", "name": name, "uuid": f"id-{name}"})


def forget_sent(service: RoutingService) -> None:
    service._sent.clear()  # noqa: SLF001 - the way a typo'd name stops mattering without waiting for eviction


def test_a_raise_and_a_clear_between_two_reads_are_both_returned_in_order(
    service: RoutingService, clock: FakeClock
) -> None:
    changes, seen = service.changes_since(0)
    assert (changes, seen) == ([], 0)

    sent(service, "worker.tasks.typo")
    service.run_comparison()
    clock.now += 1.0
    forget_sent(service)
    service.run_comparison()

    changes, seen = service.changes_since(seen)
    assert [(change.status, change.alert.kind, change.alert.task) for change in changes] == [
        ("raised", "unregistered_task", "worker.tasks.typo"),
        ("cleared", "unregistered_task", "worker.tasks.typo"),
    ]
    assert seen == 2
    assert service.changes_since(seen) == ([], 2)


def test_a_reader_that_fell_behind_the_history_gets_what_is_left(
    service: RoutingService, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(routing_module, "MAX_ALERT_HISTORY", 2)
    for name in ("a.one", "a.two", "a.three"):
        sent(service, name)
        service.run_comparison()
        clock.now += 1.0

    changes, seen = service.changes_since(0)

    assert seen == 3
    assert [change.alert.task for change in changes] == ["a.two", "a.three"]


def test_the_guard_says_nothing_while_the_event_stream_is_not_live(service: RoutingService) -> None:
    # Once a dispatch during a broker outage got 409 "no online worker consumes the queue" (the heartbeats had
    # expired) instead of the broker's own 503: silence is not evidence that nobody consumes.
    service.run_comparison()  # a report exists: no worker online, nobody consumes anything
    assert service.report is not None
    assert not service.stream.live

    guard = service.guard("worker.tasks.anything", "some-queue")

    assert not guard.known and not guard.blocks
