"""The Redis event stream against a real redis-server, fed by Celery's own event dispatcher: it reads what kombu's
EventReceiver reads, with the same fields, honours the transport options that move the topic, and reports a
dropped connection as a lost stream."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from dashboard.services.events.redis_events import CLIENT_NAME, RedisEventStream, StreamLost


def read_until(stream: RedisEventStream, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(events) < count and time.monotonic() < deadline:
        events.extend(stream.read(0.2))
    return events


@pytest.fixture
def publisher(broker_url: str) -> Iterator[Celery]:
    app = Celery("publisher", broker=broker_url, set_as_current=False)
    yield app
    app.close()


def publish(app: Celery, *events: tuple[str, dict[str, Any]], group: set[str] | None = None) -> None:
    with app.connection_for_write() as connection:
        dispatcher = app.events.Dispatcher(connection, hostname="celery@stub", buffer_group=group,
                                           buffer_limit=100 if group else None)
        for kind, fields in events:
            dispatcher.send(kind, **fields)
        dispatcher.flush()
        dispatcher.close()


def test_it_reads_what_kombus_receiver_reads(broker_url: str, publisher: Celery) -> None:
    received: list[dict[str, Any]] = []
    ready = threading.Event()
    receiver_app = Celery("receiver", broker=broker_url, set_as_current=False)

    def kombu_side() -> None:
        with receiver_app.connection_for_read() as connection:
            receiver = receiver_app.events.Receiver(connection, handlers={"*": received.append}, app=receiver_app)
            consumer = receiver.consume(limit=None, timeout=None, wakeup=False)
            next(consumer, None)
            ready.set()
            receiver.should_stop = False
            for _ in consumer:
                if len(received) >= 3:
                    receiver.should_stop = True

    thread = threading.Thread(target=kombu_side, daemon=True)
    thread.start()
    stream = RedisEventStream(broker_url, {}, timeout=2.0)
    stream.open()
    try:
        assert ready.wait(10)
        publish(publisher, ("task-sent", {"uuid": "id-1", "name": "stub.add", "args": "(1, 2)", "queue": "math"}),
                ("task-received", {"uuid": "id-1", "name": "stub.add"}), ("worker-heartbeat", {"active": 0}))
        ours = read_until(stream, 3)
    finally:
        stream.close()
    thread.join(10)

    assert [event["type"] for event in ours] == ["task-sent", "task-received", "worker-heartbeat"]
    for mine, theirs in zip(ours, received, strict=True):
        # the same event: every field the sender wrote, the timestamp moved the same way; only the receive time and
        # the Lamport clock (which the receiver rewrites for task-sent; the dashboard's state never reads it) differ
        assert {k: v for k, v in mine.items() if k not in ("local_received", "clock")} == \
            {k: v for k, v in theirs.items() if k not in ("local_received", "clock")}
        assert abs(mine["local_received"] - time.time()) < 60


def test_a_workers_batched_events_arrive_one_by_one(broker_url: str, publisher: Celery) -> None:
    stream = RedisEventStream(broker_url, {}, timeout=2.0)
    stream.open()
    try:
        publish(publisher, *[("task-succeeded", {"uuid": f"t{i}", "result": "1", "runtime": 0.1}) for i in range(5)],
                group={"task"})
        events = read_until(stream, 5)
    finally:
        stream.close()

    assert [event["uuid"] for event in events] == [f"t{i}" for i in range(5)]


def test_a_global_key_prefix_moves_the_topic_and_the_stream_follows(broker_url: str) -> None:
    options = {"global_keyprefix": "tenant-a:"}
    app = Celery("prefixed", broker=broker_url, set_as_current=False)
    app.conf.broker_transport_options = options
    stream = RedisEventStream(broker_url, options, timeout=2.0)
    unprefixed = RedisEventStream(broker_url, {}, timeout=2.0)
    stream.open()
    unprefixed.open()
    try:
        assert stream.pattern.startswith("tenant-a:")
        publish(app, ("task-sent", {"uuid": "prefixed", "name": "stub.add"}))
        events = read_until(stream, 1)
        others = list(unprefixed.read(0.3))
    finally:
        stream.close()
        unprefixed.close()
        app.close()

    assert [event["uuid"] for event in events] == ["prefixed"]
    # the unprefixed topic may carry the session's stub worker's heartbeats, never this event
    assert [event for event in others if event.get("uuid") == "prefixed"] == []


def test_a_connection_the_server_drops_is_a_lost_stream(broker_url: str) -> None:
    stream = RedisEventStream(broker_url, {}, timeout=2.0)
    stream.open()
    client = redis.Redis.from_url(broker_url, socket_timeout=5)
    try:
        killed = 0
        for entry in client.client_list():
            if entry.get("name") == CLIENT_NAME:
                killed += int(client.client_kill_filter(_id=entry["id"]))
        assert killed >= 1
        with pytest.raises(StreamLost):  # a ConnectionError: the listener reconnects
            for _ in range(20):
                list(stream.read(0.2))
    finally:
        stream.close()
        client.close()


def test_an_unreachable_broker_fails_within_the_timeout() -> None:
    stream = RedisEventStream("redis://127.0.0.1:9/0", {}, timeout=1.0)
    started = time.monotonic()
    with pytest.raises((redis.ConnectionError, OSError)):
        stream.open()
    stream.close()

    assert time.monotonic() - started < 5
