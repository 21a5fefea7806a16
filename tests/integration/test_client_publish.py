"""The send-only client against the test Redis: a dispatch is routed once, and its message and task-sent event
are what Celery publishes (the fields other observers, Flower or another replica, read)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from dashboard.model.dispatch import DispatchOptions, DispatchRequest
from dashboard.services.client import ClientSettings, SendOnlyClient

EVENT_DEADLINE = 5.0


class CountingRouter:
    """A task_routes router that sends `counted.*` to its queue, and counts how often Celery asks it."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> Any:
        self.calls += 1
        if name.startswith("counted."):
            return {"queue": "counted-q", "routing_key": "counted-key"}
        return None


@pytest.fixture
def router() -> CountingRouter:
    return CountingRouter()


@pytest.fixture
def client(broker_url: str, router: CountingRouter) -> Iterator[SendOnlyClient]:
    settings = ClientSettings(broker_url=broker_url, result_backend=None,
                              task_routes=[router, {"mapped.*": {"queue": "mapped-q"}}], task_default_queue="celery")
    sender = SendOnlyClient(settings)
    yield sender
    sender.close()


@pytest.fixture
def broker(broker_url: str) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(broker_url, socket_timeout=5)
    yield conn
    conn.close()


def _message(broker: redis.Redis, queue: str, task_id: str) -> dict[str, Any]:
    for raw in broker.lrange(queue, 0, -1):
        message = json.loads(raw)
        if message["headers"]["id"] == task_id:
            return dict(message)
    raise AssertionError(f"{task_id} is not in {queue}")


def test_sending_a_resolved_dispatch_does_not_route_it_again(client: SendOnlyClient, router: CountingRouter,
                                                             broker: redis.Redis) -> None:
    request = DispatchRequest("counted.job", (1,), {})
    resolution = client.resolve(request.name, request.options, request.args, request.kwargs)
    asked = router.calls

    sent = client.send(request, resolution)

    assert router.calls == asked, "send_task asked the router again for a route already resolved"
    assert _message(broker, "counted-q", sent.task_id)["headers"]["task"] == "counted.job"
    broker.delete("counted-q")


@pytest.mark.parametrize(("name", "options", "queue"), [
    ("mapped.job", DispatchOptions(), "mapped-q"),
    ("mapped.job", DispatchOptions(queue="elsewhere", priority=3), "elsewhere"),
    ("unrouted.job", DispatchOptions(countdown=30.0), "celery"),
])
def test_the_message_goes_where_resolve_said_with_the_calls_options(
    client: SendOnlyClient, broker: redis.Redis, name: str, options: DispatchOptions, queue: str
) -> None:
    request = DispatchRequest(name, (), {"x": 1}, options)
    resolution = client.resolve(name, options)
    task_id = str(uuid.uuid4())

    sent = client.send(request, resolution, task_id=task_id)

    assert sent.task_id == task_id
    assert resolution.queue == queue
    keys = [key if isinstance(key, str) else key.decode() for key in broker.keys(f"{queue}*")]
    message = next(m for key in keys for m in [_message_or_none(broker, key, task_id)] if m is not None)
    assert message["headers"]["task"] == name
    if options.priority is not None:
        assert message["properties"]["priority"] == options.priority
    if options.countdown is not None:
        assert message["headers"]["eta"] is not None
    for key in keys:
        broker.delete(key)


def _message_or_none(broker: redis.Redis, key: str, task_id: str) -> dict[str, Any] | None:
    try:
        return _message(broker, key, task_id)
    except AssertionError:
        return None


def test_the_task_sent_event_carries_celerys_fields(client: SendOnlyClient, broker: redis.Redis) -> None:
    listener = broker.pubsub()
    listener.psubscribe("/0.celeryev/task.*")
    listener.get_message(timeout=1.0)  # the subscription's confirmation
    request = DispatchRequest("mapped.job", (1, "a"), {"k": [2]})

    sent = client.send(request)

    event: dict[str, Any] | None = None
    deadline = time.monotonic() + EVENT_DEADLINE
    while event is None and time.monotonic() < deadline:
        raw = listener.get_message(timeout=0.5)
        if raw and raw["type"] == "pmessage":
            envelope = json.loads(raw["data"])
            body = json.loads(base64.b64decode(envelope["body"]))  # kombu's Redis transport: base64 bodies
            if body.get("uuid") == sent.task_id:
                event = body
    listener.close()
    assert event is not None, "no task-sent event for the dispatch"
    assert event["type"] == "task-sent"
    assert (event["name"], event["queue"], event["routing_key"]) == ("mapped.job", "mapped-q", "mapped-q")
    assert event["args"] == "[1, 'a']" and event["kwargs"] == "{'k': [2]}"
    assert event["exchange"] == "" and event["retries"] == 0
    assert "clock" in event and "hostname" in event and "timestamp" in event
    broker.delete("mapped-q")
