"""Route resolution through Celery's own router (the code path send_task takes); no broker needed."""

from __future__ import annotations

from typing import Any

import pytest

from dashboard.config import config_from_mapping
from dashboard.exceptions import RoutingError
from dashboard.model.dispatch import DispatchOptions
from dashboard.services.client import ClientSettings, SendOnlyClient

ROUTES = {
    "worker.tasks.stt.*": "stt",
    "worker.tasks.llm.summarize_note": "llm-exact",
    "worker.tasks.llm.*": "llm",
    "worker.tasks.link.*": {"queue": "default"},
    "worker.tasks.keyed": {"queue": "keyed", "routing_key": "keyed.rk"},
}


@pytest.fixture(scope="module")
def client() -> SendOnlyClient:
    config = config_from_mapping({"routes": ROUTES, "task_default_queue": "fallback"})
    return SendOnlyClient(ClientSettings.from_config(config))


@pytest.mark.parametrize(
    ("name", "queue", "kind", "pattern"),
    [
        ("worker.tasks.llm.summarize_note", "llm-exact", "route", "worker.tasks.llm.summarize_note"),  # exact wins
        ("worker.tasks.llm.other", "llm", "route", "worker.tasks.llm.*"),  # glob
        ("worker.tasks.stt.batch.run", "stt", "route", "worker.tasks.stt.*"),  # '*' crosses dots, as in Celery
        ("worker.tasks.link.unfurl", "default", "route", "worker.tasks.link.*"),  # table form
        ("worker.tasks.nothing", "fallback", "default", None),  # no route: task_default_queue
    ],
)
def test_resolution(client: SendOnlyClient, name: str, queue: str, kind: str, pattern: str | None) -> None:
    resolution = client.resolve(name)
    assert (resolution.queue, resolution.source.kind, resolution.source.pattern) == (queue, kind, pattern)


def test_queue_override_beats_routes(client: SendOnlyClient) -> None:
    resolution = client.resolve("worker.tasks.stt.transcribe", DispatchOptions(queue="elsewhere"))
    assert (resolution.queue, resolution.source.kind) == ("elsewhere", "override")


def test_table_route_keeps_routing_key(client: SendOnlyClient) -> None:
    resolution = client.resolve("worker.tasks.keyed")
    assert (resolution.queue, resolution.routing_key) == ("keyed", "keyed.rk")


def test_matches_what_send_task_would_use(client: SendOnlyClient) -> None:
    """Our preview asks the very router object send_task uses."""
    route: dict[str, Any] = client.app.amqp.router.route({}, "worker.tasks.llm.other", (), {})
    assert route["queue"].name == client.resolve("worker.tasks.llm.other").queue


def test_missing_queue_with_create_missing_off_is_a_routing_error() -> None:
    config = config_from_mapping({"routes": {"a.*": "nowhere"}})
    settings = ClientSettings.from_config(config)
    strict = SendOnlyClient(
        ClientSettings(**{**settings.__dict__, "task_create_missing_queues": False, "task_queues": []})
    )
    with pytest.raises(RoutingError, match="nowhere"):
        strict.resolve("a.b")


def test_callable_router_is_described() -> None:
    def my_router(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> Any:
        return {"queue": "from-callable"} if name.startswith("x.") else None

    config = config_from_mapping({})
    settings = ClientSettings.from_config(config)
    custom = SendOnlyClient(ClientSettings(**{**settings.__dict__, "task_routes": (my_router,)}))
    resolution = custom.resolve("x.y")
    assert resolution.queue == "from-callable"
    assert resolution.source.kind == "route" and "my_router" in (resolution.source.router or "")
