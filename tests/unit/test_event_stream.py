"""The Redis event stream's pure parts (topic, envelope decoding), the listener's stream loop, and requests-first
ingest (services/priority.py), without a broker."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest
from celery.utils.time import adjust_timestamp

from dashboard.services.events.listener import BrokerStatus, EventListener
from dashboard.services.events.redis_events import EventDecoder, subscribe_pattern
from dashboard.services.priority import RequestPriority


@pytest.mark.parametrize(
    ("options", "db", "pattern"),
    [
        ({}, 0, "/0.celeryev/*"),
        ({}, 3, "/3.celeryev/*"),
        ({"global_keyprefix": "app1:"}, 0, "app1:/0.celeryev/*"),
        ({"fanout_prefix": False}, 0, "celeryev/*"),
        ({"fanout_prefix": "x.{db}."}, 2, "x.2.celeryev/*"),
        ({"fanout_patterns": False}, 0, "/0.celeryev"),
        ({"global_keyprefix": "p:", "fanout_prefix": False, "fanout_patterns": False}, 1, "p:celeryev"),
    ],
)
def test_the_subscription_is_the_topic_kombu_publishes_events_on(options: dict[str, Any], db: int,
                                                                 pattern: str) -> None:
    assert subscribe_pattern(options, db) == pattern


def envelope(body: Any, *, encoding: str = "base64", content_type: str = "application/json") -> bytes:
    """A message as kombu's Redis transport publishes it."""
    raw = json.dumps(body).encode()
    return json.dumps({
        "body": base64.b64encode(raw).decode() if encoding == "base64" else raw.decode(),
        "content-encoding": "utf-8",
        "content-type": content_type,
        "headers": {"hostname": "celery@w1"},
        "properties": {"delivery_info": {"exchange": "celeryev", "routing_key": "task.sent"},
                       "body_encoding": encoding, "delivery_tag": "x"},
    }).encode()


def test_an_event_is_decoded_with_its_timestamp_in_our_timezone_and_its_receive_time() -> None:
    event = {"type": "task-sent", "uuid": "t1", "timestamp": 1_700_000_000.0, "utcoffset": -5, "clock": 4}
    decoded = EventDecoder().decode(envelope(event), now=123.0)

    assert decoded == [{**event, "timestamp": adjust_timestamp(1_700_000_000.0, -5), "local_received": 123.0}]


def test_a_task_multi_list_is_every_event_and_a_plain_body_is_read_too() -> None:
    events = [{"type": "task-started", "uuid": "a"}, {"type": "task-succeeded", "uuid": "a"}]
    decoded = EventDecoder().decode(envelope(events, encoding="utf-8"), now=1.0)

    assert [(e["type"], e["local_received"]) for e in decoded] == [("task-started", 1.0), ("task-succeeded", 1.0)]


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b'{"no": "body"}',
        envelope({"type": "task-sent"}, content_type="application/x-python-serialize"),
        envelope(["not an event", {"type": 3}]),
        b'{"body": "%%%", "content-type": "application/json", "properties": {"body_encoding": "base64"}}',
    ],
)
def test_what_is_not_a_json_celery_event_is_skipped_and_counted(data: bytes) -> None:
    decoder = EventDecoder()

    assert decoder.decode(data, now=1.0) == []
    assert decoder.rejected >= 1


class ScriptedStream:
    """An EventStream that returns the given batches, then nothing."""

    def __init__(self, batches: list[list[dict[str, Any]]]) -> None:
        self.batches = list(batches)
        self.opened = self.closed = 0

    def open(self) -> None:
        self.opened += 1

    def read(self, wait: float) -> list[dict[str, Any]]:
        if self.batches:
            return self.batches.pop(0)
        time.sleep(min(wait, 0.01))
        return []

    def close(self) -> None:
        self.closed += 1


def until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def test_the_listener_reads_a_stream_and_hands_over_every_event_in_order() -> None:
    stream = ScriptedStream([[{"type": "task-sent", "uuid": "a"}], [{"type": "task-received", "uuid": "a"},
                                                                     {"type": "task-started", "uuid": "a"}]])
    seen: list[str] = []
    statuses: list[BrokerStatus] = []
    listener = EventListener(None, lambda event: seen.append(event["type"]),
                             on_status=lambda report: statuses.append(report.status), stream=lambda: stream)
    listener.start()
    try:
        assert until(lambda: len(seen) == 3)
    finally:
        listener.stop()

    assert seen == ["task-sent", "task-received", "task-started"]
    assert statuses[0] is BrokerStatus.LIVE
    assert (stream.opened, stream.closed) == (1, 1)


def test_a_listener_needs_an_app_or_a_stream() -> None:
    with pytest.raises(ValueError, match="needs"):
        EventListener(None, lambda event: None)


def test_the_event_thread_waits_while_a_request_is_served() -> None:
    priority = RequestPriority(max_pause=10.0)
    stream = ScriptedStream([[{"type": "task-sent", "uuid": "a"}]])
    seen: list[Mapping[str, Any]] = []
    priority.begin()  # a request is in flight before the event arrives
    listener = EventListener(None, seen.append, stream=lambda: stream, priority=priority)
    listener.start()
    try:
        assert until(lambda: priority.pauses == 1)
        assert seen == []  # held back while the request is served
        priority.end()
        assert until(lambda: len(seen) == 1)
    finally:
        priority.end()
        listener.stop()


def test_without_requests_the_event_thread_never_waits() -> None:
    priority = RequestPriority()
    for _ in range(1000):
        priority.yield_to_requests()

    assert priority.pauses == 0


def test_a_pause_ends_when_the_last_request_is_answered() -> None:
    priority = RequestPriority(max_pause=10.0)
    priority.begin()
    priority.begin()
    def answer_both() -> None:
        priority.end()
        priority.end()

    timer = threading.Timer(0.05, answer_both)
    timer.start()
    started = time.monotonic()
    priority.yield_to_requests()

    assert time.monotonic() - started < 5.0
    assert priority.in_flight == 0
    timer.join()


def test_requests_that_never_stop_slow_ingest_but_never_stop_it() -> None:
    now = [0.0]
    priority = RequestPriority(max_pause=0.01, min_run=5.0, clock=lambda: now[0])
    priority.begin()  # never answered

    priority.yield_to_requests()  # waits max_pause, then ingest gets its turn
    assert priority.pauses == 1
    for _ in range(100):
        priority.yield_to_requests()  # within min_run: no more pauses
    assert priority.pauses == 1
    now[0] = 6.0
    priority.yield_to_requests()
    assert priority.pauses == 2
