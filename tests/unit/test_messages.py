"""Decoding waiting Celery messages and choosing which ones an action takes (dashboard.model.messages): pure."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from dashboard.model.messages import (
    MAX_VALUE_CHARS,
    Envelope,
    MoveRequest,
    RequestInvalid,
    Selection,
    capped,
    decode_task,
    management_envelope,
    parse_delete,
    parse_move,
    parse_purge,
    queue_name_problem,
    redis_envelope,
    retarget_redis_payload,
    task_name_and_id,
)
from dashboard.services.broker.queues import page_slices

TASK_ID = "9a3c1c9e-5c3e-4c1e-8f7a-2b6d0e4c8a11"


def protocol2_headers(**more: Any) -> dict[str, Any]:
    return {"lang": "py", "task": "billing.charge", "id": TASK_ID, "eta": None, "expires": None, "retries": 0,
            "argsrepr": "(1, 'x')", "kwargsrepr": "{'k': 2}", "root_id": TASK_ID, "parent_id": None,
            "origin": "gen1@api", **more}


def redis_payload(body: Any, headers: dict[str, Any], *, content_type: str = "application/json",
                  priority: int = 0, raw_body: bytes | None = None) -> str:
    """A message as kombu's Redis transport stores it (base64 body)."""
    data = raw_body if raw_body is not None else json.dumps(body).encode()
    return json.dumps({
        "body": base64.b64encode(data).decode(), "content-encoding": "utf-8", "content-type": content_type,
        "headers": headers, "properties": {
            "correlation_id": TASK_ID, "reply_to": "r", "delivery_mode": 2, "priority": priority,
            "body_encoding": "base64", "delivery_tag": "tag-1",
            "delivery_info": {"exchange": "billing", "routing_key": "billing"}},
    })


PROTOCOL1_BODY = {"task": "legacy.add", "id": "p1-id", "args": [2, 3], "kwargs": {"z": 1}, "eta": "2030-01-01T00:00:00",
                  "retries": 4, "expires": None}


@pytest.mark.parametrize(("payload", "expected"), [
    pytest.param(redis_payload([[1, "x"], {"k": 2}, {}], protocol2_headers(), priority=3),
                 {"id": TASK_ID, "name": "billing.charge", "args": [1, "x"], "kwargs": {"k": 2}, "priority": 3,
                  "retries": 0, "protocol": 2, "truncated": False, "problem": None, "origin": "gen1@api"},
                 id="protocol 2 json"),
    pytest.param(redis_payload(PROTOCOL1_BODY, {}),
                 {"id": "p1-id", "name": "legacy.add", "args": [2, 3], "kwargs": {"z": 1},
                  "eta": "2030-01-01T00:00:00", "retries": 4, "protocol": 1, "truncated": False},
                 id="protocol 1 json"),
    pytest.param(redis_payload(None, protocol2_headers(), content_type="application/x-python-serialize",
                               raw_body=b"\x80\x04evil"),
                 {"name": "billing.charge", "args": "(1, 'x')", "kwargs": "{'k': 2}", "truncated": True,
                  "problem": "application/x-python-serialize body not decoded (only JSON is)"},
                 id="pickle is never decoded: the reprs are shown"),
    pytest.param(redis_payload(None, protocol2_headers(compression="application/x-gzip"), raw_body=b"\x1f\x8b"),
                 {"name": "billing.charge", "args": "(1, 'x')", "truncated": True,
                  "problem": "compressed body not decoded"},
                 id="compressed"),
    pytest.param(redis_payload(None, protocol2_headers(), raw_body=b"{not json"),
                 {"name": "billing.charge", "problem": "the body is not valid JSON", "truncated": True},
                 id="broken json"),
    pytest.param(redis_payload({"hello": 1}, {}),
                 {"id": None, "name": None, "problem": "not a Celery task message (no task name and id)"},
                 id="not a task"),
    pytest.param("not json at all", {"name": None, "problem": "not a kombu message (not JSON)"}, id="garbage"),
    pytest.param("[1, 2]", {"name": None, "problem": "not a kombu message (not a JSON object)"}, id="a list"),
    pytest.param(redis_payload([[1], {}, {}], protocol2_headers(retries="7", eta="2030-01-01T00:00:00+00:00")),
                 {"retries": 7, "eta": "2030-01-01T00:00:00+00:00"}, id="retries as text"),
])
def test_redis_messages_decode(payload: str, expected: dict[str, Any]) -> None:
    message = decode_task(redis_envelope(payload))
    for key, value in expected.items():
        assert getattr(message, key) == value, key


def test_long_arguments_are_cut_and_say_so() -> None:
    big = ["x" * (MAX_VALUE_CHARS * 2)]
    message = decode_task(redis_envelope(redis_payload([big, {"a": 1}, {}], protocol2_headers())))
    assert message.truncated and isinstance(message.args, str) and len(message.args) == MAX_VALUE_CHARS
    assert message.args.endswith("…") and message.kwargs == {"a": 1}


@pytest.mark.parametrize(("value", "cut"), [([], False), ({"a": [1, 2]}, False), ("é" * 10, False),
                                            (list(range(2000)), True)])
def test_capped(value: Any, cut: bool) -> None:
    shown, was_cut = capped(value)
    assert was_cut is cut
    assert (shown == value) is (not cut)


def test_hostile_text_is_kept_as_text_for_the_template_to_escape() -> None:
    headers = protocol2_headers(task="<script>alert(1)</script>", id="<b>id</b>")
    message = decode_task(redis_envelope(redis_payload([["<img src=x>"], {}, {}], headers)))
    assert message.name == "<script>alert(1)</script>" and message.args_text == '["<img src=x>"]'


def test_fields_are_capped_in_length() -> None:
    message = decode_task(redis_envelope(redis_payload([[], {}, {}], protocol2_headers(task="t" * 5000))))
    assert message.name is not None and len(message.name) == 255


@pytest.mark.parametrize(("item", "expected"), [
    pytest.param({"payload": json.dumps([[1], {"a": "b"}, {}]), "payload_encoding": "string", "redelivered": True,
                  "properties": {"headers": protocol2_headers(), "content_type": "application/json",
                                 "content_encoding": "utf-8", "priority": 5}},
                 {"name": "billing.charge", "args": [1], "kwargs": {"a": "b"}, "priority": 5, "redelivered": True},
                 id="string payload"),
    pytest.param({"payload": "[[], {}, {}]", "properties": {"content_type": "application/json", "headers":
                  protocol2_headers(eta="undefined", parent_id="undefined")}},
                 {"eta": None, "parent_id": None}, id="the management API's 'undefined' is None"),
    pytest.param({"payload": base64.b64encode(json.dumps(PROTOCOL1_BODY).encode()).decode(),
                  "payload_encoding": "base64", "properties": {"content_type": "application/json"}},
                 {"name": "legacy.add", "protocol": 1, "priority": None}, id="base64 payload, protocol 1"),
    pytest.param({"payload": "!!", "payload_encoding": "base64", "properties": {"headers": protocol2_headers(),
                                                                              "content_type": "application/json"}},
                 {"name": "billing.charge", "truncated": True}, id="bad base64"),
    pytest.param({}, {"name": None}, id="empty"),
])
def test_management_api_messages_decode(item: dict[str, Any], expected: dict[str, Any]) -> None:
    message = decode_task(management_envelope(item))
    for key, value in expected.items():
        assert getattr(message, key) == value, key


@pytest.mark.parametrize(("envelope", "expected"), [
    (Envelope(b"", "application/json", "utf-8", protocol2_headers(), None), ("billing.charge", TASK_ID)),
    (Envelope(json.dumps(PROTOCOL1_BODY).encode(), "application/json", "utf-8", {}, None), ("legacy.add", "p1-id")),
    (Envelope(b"\x80", "application/x-python-serialize", "binary", {}, None), (None, None)),
    (Envelope(b"", "application/json", "utf-8", {"task": 3, "id": None}, None), (None, None)),
])
def test_name_and_id_come_from_the_headers_first(envelope: Envelope, expected: tuple[str | None, str | None]) -> None:
    assert task_name_and_id(envelope) == expected


@pytest.mark.parametrize(("selection", "name", "task_id", "taken"), [
    (Selection(), "a", "1", True),
    (Selection(), None, None, True),
    (Selection(name="a"), "a", "1", True),
    (Selection(name="a"), "b", "1", False),
    (Selection(name="a"), None, "1", False),
    (Selection(ids=frozenset({"1", "2"})), "b", "2", True),
    (Selection(ids=frozenset({"1", "2"})), "b", "3", False),
    (Selection(ids=frozenset({"1"})), "b", None, False),
    (Selection(name="a", ids=frozenset({"1"})), "b", "1", False),
    (Selection(name="a", ids=frozenset({"1"})), "a", "1", True),
])
def test_selection(selection: Selection, name: str | None, task_id: str | None, taken: bool) -> None:
    assert selection.matches(name, task_id) is taken


@pytest.mark.parametrize(("body", "expected"), [
    ({"to": "good"}, MoveRequest("good")),
    ({"to": " good "}, MoveRequest("good")),
    ({"to": "good", "name": "a.b", "limit": 5}, MoveRequest("good", Selection("a.b", None, 5))),
    ({"to": "good", "ids": ["1", "2"]}, MoveRequest("good", Selection(None, frozenset({"1", "2"}), None))),
    ({"to": "good", "ids": "1, 2\n3", "limit": "10", "name": ""},
     MoveRequest("good", Selection(None, frozenset({"1", "2", "3"}), 10))),  # form fields
    ({"to": "good", "ids": "", "limit": ""}, MoveRequest("good")),
])
def test_move_bodies(body: dict[str, Any], expected: MoveRequest) -> None:
    assert parse_move("orphan", body) == expected


@pytest.mark.parametrize(("body", "error"), [
    (None, "send a JSON object"),
    ([], "send a JSON object"),
    ({}, "to: give the name of a queue"),
    ({"to": 3}, "to: give the name of a queue"),
    ({"to": "orphan"}, "already in that queue"),
    ({"to": "x" * 256}, "at most 255"),
    ({"to": "a\nb"}, "control characters"),
    ({"to": "celery@host.celery.pidbox"}, "Celery's own queues"),
    ({"to": "celeryev.1234"}, "Celery's own queues"),
    ({"to": "good", "limit": 0}, "limit:"),
    ({"to": "good", "limit": True}, "limit:"),
    ({"to": "good", "limit": 1.5}, "limit:"),
    ({"to": "good", "ids": []}, "ids:"),
    ({"to": "good", "ids": [1]}, "ids:"),
    ({"to": "good", "ids": {"a": 1}}, "ids:"),
    ({"to": "good", "name": 7}, "name:"),
])
def test_bad_move_bodies_say_what_to_fix(body: Any, error: str) -> None:
    with pytest.raises(RequestInvalid, match=error):
        parse_move("orphan", body)


def test_delete_needs_a_name_and_purge_the_queue_typed_again() -> None:
    assert parse_delete({"name": "a.b"}) == Selection("a.b")
    for body in ({}, {"name": ""}, None):
        with pytest.raises(RequestInvalid, match="name"):
            parse_delete(body)
    parse_purge("orphan", {"confirm": "orphan"})
    bodies: list[Any] = [{}, {"confirm": "orpha"}, {"confirm": "ORPHAN"}, None, {"confirm": 1}]
    for wrong in bodies:
        with pytest.raises(RequestInvalid, match="confirm"):
            parse_purge("orphan", wrong)


@pytest.mark.parametrize(("name", "problem"), [("q", None), ("a/b.c:d", None), ("", "give"), (" q", "spaces"),
                                               ("q\x00", "control"), ("q" * 256, "255")])
def test_queue_names(name: str, problem: str | None) -> None:
    found = queue_name_problem(name)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_retargeting_keeps_everything_but_the_delivery_info() -> None:
    raw = redis_payload([[1], {}, {}], protocol2_headers(), priority=6)
    moved = retarget_redis_payload(raw, "good", "good")
    assert moved is not None
    before, after = json.loads(raw), json.loads(moved)
    assert after["properties"].pop("delivery_info") == {"exchange": "good", "routing_key": "good"}
    before["properties"].pop("delivery_info")
    assert before == after
    assert retarget_redis_payload("nope", "a", "b") is None
    assert retarget_redis_payload(json.dumps({"body": ""}), "a", "b") is None


def test_describe_for_the_audit_log_spells_out_at_most_100_ids() -> None:
    detail = Selection("a", frozenset(str(i) for i in range(150)), 7).describe()
    assert detail["name"] == "a" and detail["ids_count"] == 150 and len(detail["ids"]) == 100
    assert detail["limit"] == 7


@pytest.mark.parametrize(("lengths", "offset", "limit", "expected"), [
    ([5, 0, 0, 0], 0, 3, [(0, 0, 2)]),
    ([5, 0, 0, 0], 3, 10, [(0, 3, 4)]),
    ([2, 3, 0, 4], 1, 5, [(0, 1, 1), (1, 0, 2), (3, 0, 0)]),
    ([2, 3, 0, 4], 5, 50, [(3, 0, 3)]),
    ([2, 3], 9, 5, []),
    ([0, 0, 0, 0], 0, 50, []),
])
def test_a_page_spans_the_priority_lists_in_serving_order(lengths: list[int], offset: int, limit: int,
                                                          expected: list[tuple[int, int, int]]) -> None:
    assert page_slices(lengths, offset, limit) == expected


@pytest.mark.parametrize("info", [
    {"exchange": "billing", "routing_key": "billing"},
    {"exchange": "", "routing_key": "a}b"},  # a "}" in a string: the full decode takes over
    {"exchange": "x", "routing_key": "y", "redelivered": True},  # kombu's restore adds this
])
def test_retargeting_in_place_rewrites_only_the_delivery_info(info: dict[str, Any]) -> None:
    tricky = protocol2_headers(argsrepr='("\\"delivery_info\\": {",)')  # the key's text inside a string
    payload = json.loads(redis_payload([["x"], {}, {}], tricky))
    payload["properties"]["delivery_info"] = info
    raw = json.dumps(payload)

    moved = retarget_redis_payload(raw, "good", "good-key")
    from_bytes = retarget_redis_payload(raw.encode(), "good", "good-key")

    assert moved is not None and moved == from_bytes
    after = json.loads(moved)
    assert after["properties"]["delivery_info"] == {**info, "exchange": "good", "routing_key": "good-key"}
    after["properties"]["delivery_info"] = info
    assert after == payload
    assert retarget_redis_payload(b"\xff\xfe", "a", "b") is None
