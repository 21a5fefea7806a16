"""The dispatch guard, from the routing comparison alone (pure): table-driven, no broker."""

from __future__ import annotations

import pytest

from dashboard.model.guard import dispatch_guard
from dashboard.model.routing import ApiRoute, BrokerQueue, RoutingReport, WorkerSnapshot, compare

WORKER = WorkerSnapshot("celery@a", True, frozenset({"stt"}), frozenset({"app.transcribe"}))
OFFLINE = WorkerSnapshot("celery@b", False, frozenset({"llm"}), frozenset({"app.summarize"}))


def report(*workers: WorkerSnapshot) -> RoutingReport:
    routes = {"app.transcribe": ApiRoute("stt", "app.*", "route"), "app.summarize": ApiRoute("llm", "app.*", "route")}
    return compare(routes, workers, [BrokerQueue("stt", 0)], "celery")


@pytest.mark.parametrize(
    ("name", "queue", "no_consumer", "unregistered"),
    [
        ("app.transcribe", "stt", False, False),
        ("app.summarize", "llm", True, True),  # its only worker is offline
        ("app.transcribe", "nowhere", True, False),  # a queue nobody consumes, not even known to the broker
        ("app.typo", "stt", False, True),  # a name no online worker registers
    ],
)
def test_the_guard_reads_consumers_and_registrars_from_the_comparison(
    name: str, queue: str, no_consumer: bool, unregistered: bool
) -> None:
    guard = dispatch_guard(report(WORKER, OFFLINE), name, queue, stream_live=True)

    assert (guard.known, guard.no_consumer, guard.unregistered) == (True, no_consumer, unregistered)
    assert guard.blocks is (no_consumer or unregistered)
    assert len(guard.warnings) == no_consumer + unregistered


@pytest.mark.parametrize("live", [True, False])
def test_nothing_is_said_before_the_first_comparison_or_while_the_stream_is_down(live: bool) -> None:
    for found in (None, report(WORKER)) if not live else (None,):
        guard = dispatch_guard(found, "app.typo", "nowhere", stream_live=live)
        assert not guard.known and not guard.blocks and guard.warnings == []


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("app.transcibe", "app.transcribe"),  # one letter missing
        ("app.transcribes", "app.transcribe"),
        ("app.Transcribe", "app.transcribe"),
        ("app.summarize", None),  # registered only by an offline worker: nothing online to suggest
        ("billing.refund", None),  # nothing close
    ],
)
def test_an_unregistered_name_close_to_a_registered_one_gets_a_did_you_mean(name: str, suggestion: str | None) -> None:
    guard = dispatch_guard(report(WORKER, OFFLINE), name, "stt", stream_live=True)

    assert guard.unregistered and guard.suggestion == suggestion
    if suggestion:
        assert f"did you mean {suggestion!r}?" in guard.warnings[-1]
