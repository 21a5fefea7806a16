"""QueueService without a broker: a page's messages get the routing report's standing (registered, did you mean,
where they belong, the prefilled target); a broker that cannot peek still gives the depth. A fake QueueBrowser and
a stand-in for the routing service (only `.report` is read); no sockets."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from dashboard.exceptions import CannotPeek, DashboardError
from dashboard.model.messages import QueuedMessage, Selection
from dashboard.model.routing import ApiRoute, BrokerQueue, RoutingReport, WorkerSnapshot, compare
from dashboard.model.state import State
from dashboard.services.broker.queues import QueueBrowser, QueuePeek
from dashboard.services.queues import QueueService, QueuesUnavailable

TRANSCRIBE, SUMMARIZE = "app.transcribe", "app.summarize"
WORKER = WorkerSnapshot("celery@a", True, frozenset({"stt", "llm"}), frozenset({TRANSCRIBE, SUMMARIZE}),
                        routes={TRANSCRIBE: "stt", SUMMARIZE: "llm"})


def report() -> RoutingReport:
    routes = {TRANSCRIBE: ApiRoute("stt", "app.*", "route"), SUMMARIZE: ApiRoute("llm-gpu", SUMMARIZE, "route")}
    return compare(routes, [WORKER], [BrokerQueue("llm-gpu", 3)], "celery")


class FakeBrowser(QueueBrowser):
    """Holds one queue's messages in memory; can refuse to peek like RabbitMQ without the management API."""

    def __init__(self, messages: list[QueuedMessage], *, can_peek: bool = True) -> None:
        self.messages = messages
        self.can_peek = can_peek

    def peek(self, queue: str, limit: int, offset: int = 0) -> QueuePeek:
        if not self.can_peek:
            raise CannotPeek("cannot peek without the management API")
        page = tuple(self.messages[offset:offset + limit])
        return QueuePeek(queue, len(self.messages), offset, page, exists=bool(self.messages))

    def depth(self, queue: str) -> int:
        return len(self.messages)

    def move(self, queue: str, to: str, selection: Selection) -> int:
        return 0

    def delete(self, queue: str, selection: Selection) -> int:
        return 0

    def purge(self, queue: str) -> int:
        return len(self.messages)

    def close(self) -> None:
        pass


class Client:
    """The send-only client's router, as far as the service asks it (the API's routes by name)."""

    def resolve(self, name: str) -> Any:
        if name.startswith("bad."):
            raise DashboardError("the router failed")
        return SimpleNamespace(queue="celery")


def service(messages: list[QueuedMessage], *, compared: bool = True, can_peek: bool = True) -> QueueService:
    routing = SimpleNamespace(report=report() if compared else None)
    return QueueService(FakeBrowser(messages, can_peek=can_peek), cast(Any, routing), State(100), cast(Any, Client()))


def message(name: str | None, task_id: str) -> QueuedMessage:
    return QueuedMessage(task_id, name, [], {})


def test_each_message_gets_its_name_standing_and_where_it_belongs() -> None:
    page = service([message(SUMMARIZE, "1"), message("app.sumarize", "2"), message(TRANSCRIBE, "3"),
                    message(None, "4")]).page("llm-gpu", 50)

    rows = {row.message.id: row for row in page.rows}
    assert page.registered_known and page.depth == 4
    assert (rows["1"].registered, rows["1"].target, rows["1"].suggestion) == (True, "llm", None)  # workers' route
    assert (rows["2"].registered, rows["2"].target, rows["2"].suggestion) == (False, "celery", SUMMARIZE)
    assert (rows["3"].registered, rows["3"].target) == (True, "stt")
    assert (rows["4"].registered, rows["4"].target) == (False, None)
    assert page.unregistered == ("", "app.sumarize")
    assert page.suggested_target == "llm"  # the most frequent name that belongs elsewhere
    assert rows["2"].to_dict()["did_you_mean"] == SUMMARIZE and rows["1"].to_dict()["registered"] is True


def test_before_the_first_comparison_nothing_is_called_unregistered_on_the_page() -> None:
    page = service([message(SUMMARIZE, "1")], compared=False).page("llm-gpu", 50)

    assert not page.registered_known and page.rows[0].registered is False and page.rows[0].suggestion is None
    assert page.to_dict()["registered_known"] is False


@pytest.mark.parametrize(("queue", "expected"), [("llm-gpu", "llm"), ("stt", None), ("nowhere", None)])
def test_an_empty_queue_is_prefilled_from_the_tasks_routed_to_it(queue: str, expected: str | None) -> None:
    assert service([]).suggested_target(queue, ()) == expected


def test_a_router_that_fails_for_a_name_leaves_its_target_unknown() -> None:
    assert service([]).target_for("bad.name") is None


def test_a_broker_that_cannot_peek_still_gives_the_depth() -> None:
    page = service([message(SUMMARIZE, "1")], can_peek=False).page("llm-gpu", 50)

    assert page.peek_error == "cannot peek without the management API" and page.depth == 1 and page.rows == ()
    assert page.suggested_target == "llm"


def test_without_a_browser_every_call_says_why() -> None:
    queues = QueueService(None, cast(Any, SimpleNamespace(report=None)), State(10), cast(Any, Client()),
                          unavailable="the queue browser is unavailable: no transport")
    with pytest.raises(QueuesUnavailable, match="no transport"):
        queues.page("q", 10)
    with pytest.raises(QueuesUnavailable):
        queues.purge("q")
    assert queues.peek_method == ""
