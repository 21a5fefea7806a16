"""Dispatch input checks: JSON bodies and forms against the catalog's typed params and option bounds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dashboard.model.catalog import Catalog, ParamSpec, TaskSpec
from dashboard.model.dispatch import DispatchInvalid, json_depth, parse_api_body, parse_form

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
CATALOG = Catalog.of(
    [
        TaskSpec(
            "t.typed",
            "every type",
            (
                ParamSpec("s", "str", required=True),
                ParamSpec("i", "int", default=1),
                ParamSpec("f", "float"),
                ParamSpec("b", "bool"),
                ParamSpec("j", "json"),
            ),
        ),
        TaskSpec("t.none"),
    ]
)


def api(**body: Any) -> Any:
    return parse_api_body(body, CATALOG, NOW)


def api_errors(body: Any) -> dict[str, str]:
    with pytest.raises(DispatchInvalid) as caught:
        parse_api_body(body, CATALOG, NOW)
    return caught.value.errors


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], ""),
        ({"name": ""}, "name"),
        ({"name": "has space"}, "name"),
        ({"name": 5}, "name"),
        ({"name": "x" * 256}, "name"),
        ({"name": "a.b", "args": {}}, "args"),
        ({"name": "a.b", "kwargs": []}, "kwargs"),
        ({"name": "a.b", "kwargs": {"not-ident": 1}}, "kwargs"),
        ({"name": "a.b", "surprise": 1}, ""),
        ({"name": "a.b", "force": "yes"}, "force"),
        ({"name": "a.b", "options": []}, "options"),
        ({"name": "a.b", "options": {"colour": 1}}, "options"),
        ({"name": "a.b", "options": {"queue": ""}}, "options.queue"),
        ({"name": "a.b", "options": {"queue": "a b"}}, "options.queue"),
        ({"name": "a.b", "options": {"countdown": -1}}, "options.countdown"),
        ({"name": "a.b", "options": {"countdown": True}}, "options.countdown"),
        ({"name": "a.b", "options": {"countdown": 10**9}}, "options.countdown"),
        ({"name": "a.b", "options": {"eta": "tomorrow"}}, "options.eta"),
        ({"name": "a.b", "options": {"eta": "2029-01-01T00:00:00Z"}}, "options.eta"),
        ({"name": "a.b", "options": {"eta": "2040-01-01T00:00:00Z"}}, "options.eta"),
        ({"name": "a.b", "options": {"eta": "2030-01-02T00:00:00Z", "countdown": 5}}, "options.countdown"),
        ({"name": "a.b", "options": {"expires": 0}}, "options.expires"),
        ({"name": "a.b", "options": {"expires": "2029-01-01T00:00:00Z"}}, "options.expires"),
        ({"name": "a.b", "options": {"expires": 5, "countdown": 10}}, "options.expires"),
        ({"name": "a.b", "options": {"priority": 10}}, "options.priority"),
        ({"name": "a.b", "options": {"priority": 1.5}}, "options.priority"),
        ({"name": "a.b", "args": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}, "args"),
        ({"name": "t.typed"}, "kwargs.s"),
        ({"name": "t.typed", "kwargs": {"s": 1}}, "kwargs.s"),
        ({"name": "t.typed", "kwargs": {"s": "x", "i": "1"}}, "kwargs.i"),
        ({"name": "t.typed", "kwargs": {"s": "x", "i": True}}, "kwargs.i"),
        ({"name": "t.typed", "kwargs": {"s": "x", "f": "1.5"}}, "kwargs.f"),
        ({"name": "t.typed", "kwargs": {"s": "x", "b": 1}}, "kwargs.b"),
        ({"name": "t.typed", "kwargs": {"s": "x", "zzz": 1}}, "kwargs.zzz"),
        ({"name": "t.typed", "args": ["x"], "kwargs": {"s": "y"}}, "kwargs.s"),
        ({"name": "t.typed", "args": [1]}, "args[0]"),
        ({"name": "t.none", "args": [1]}, "args"),
    ],
)
def test_api_refusals_name_the_field(body: Any, field: str) -> None:
    errors = api_errors(body)
    assert field in errors, errors
    assert all(message for message in errors.values())


def test_api_accepts_a_full_request() -> None:
    request = api(
        name="t.typed",
        args=["hello"],
        kwargs={"i": 2, "f": 3, "b": False, "j": {"deep": [1, 2]}},
        options={"queue": "q1", "countdown": 5, "expires": 60, "priority": 9},
        force=True,
    )
    assert request.args == ("hello",)
    assert request.kwargs == {"i": 2, "f": 3.0, "b": False, "j": {"deep": [1, 2]}}
    assert request.options.as_celery_options() == {"queue": "q1", "countdown": 5.0, "expires": 60.0, "priority": 9}
    assert request.force and request.in_catalog


def test_api_outside_catalog_passes_raw_values() -> None:
    request = api(name="other.task", args=[1, "x"], kwargs={"k": None})
    assert (request.args, request.kwargs, request.in_catalog) == ((1, "x"), {"k": None}, False)


def test_eta_without_zone_is_utc_and_expires_accepts_datetime() -> None:
    request = api(name="a.b", options={"eta": "2030-01-01T13:00:00", "expires": "2030-01-01T14:00:00+00:00"})
    assert request.options.eta == NOW + timedelta(hours=1)
    assert request.options.expires == NOW + timedelta(hours=2)


def test_error_message_lists_every_problem() -> None:
    with pytest.raises(DispatchInvalid) as caught:
        parse_api_body({"name": "t.typed", "kwargs": {"i": "x"}}, CATALOG, NOW)
    assert "kwargs.s: is required" in caught.value.message
    assert "kwargs.i: must be a whole number" in caught.value.message


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ({"name": "t.typed", "arg.s": "x"}, {"s": "x"}),
        ({"name": "t.typed", "arg.s": "x", "arg.i": " 7 ", "arg.f": "2.5", "arg.b": "true", "arg.j": "[1]"},
         {"s": "x", "i": 7, "f": 2.5, "b": True, "j": [1]}),
        ({"name": "t.typed", "arg.s": "x", "arg.i": "", "arg.b": ""}, {"s": "x"}),  # empty optional: task default
        ({"name": "t.typed", "arg.s": "x", "arg.b": "off"}, {"s": "x", "b": False}),
    ],
)
def test_form_typed_fields(form: dict[str, str], expected: dict[str, Any]) -> None:
    assert parse_form(form, CATALOG, NOW).kwargs == expected


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"name": "t.typed"}, "kwargs.s"),
        ({"name": "t.typed", "arg.s": "x", "arg.i": "seven"}, "kwargs.i"),
        ({"name": "t.typed", "arg.s": "x", "arg.f": "nan"}, "kwargs.f"),
        ({"name": "t.typed", "arg.s": "x", "arg.b": "maybe"}, "kwargs.b"),
        ({"name": "t.typed", "arg.s": "x", "arg.j": "{oops"}, "kwargs.j"),
        ({"name": "t.typed", "arg.s": "x", "opt.countdown": "soon"}, "options.countdown"),
        ({"name": "t.typed", "arg.s": "x", "opt.priority": "high"}, "options.priority"),
        ({"mode": "raw", "name": "bad name"}, "name"),
        ({"mode": "raw", "name": "a.b", "args": "{}"}, "args"),
        ({"mode": "raw", "name": "a.b", "args": "[1,"}, "args"),
        ({"mode": "raw", "name": "a.b", "kwargs": "[]"}, "kwargs"),
        ({"mode": "raw", "name": "t.typed", "kwargs": "{\"s\": 1}"}, "kwargs.s"),  # raw form still checks catalog names
    ],
)
def test_form_refusals(form: dict[str, str], field: str) -> None:
    with pytest.raises(DispatchInvalid) as caught:
        parse_form(form, CATALOG, NOW)
    assert field in caught.value.errors, caught.value.errors


def test_raw_form() -> None:
    request = parse_form(
        {"mode": "raw", "name": "x.y", "args": "[1, \"a\"]", "kwargs": "{\"k\": true}", "opt.queue": "q",
         "opt.countdown": "3", "force": "on"},
        CATALOG,
        NOW,
    )
    assert (request.args, request.kwargs, request.options.queue, request.options.countdown, request.force) == (
        (1, "a"), {"k": True}, "q", 3.0, True
    )


def test_json_depth() -> None:
    assert json_depth(5) == 0
    assert json_depth([]) == 1
    assert json_depth({"a": [1, {"b": 2}]}) == 3
    deep: Any = 1
    for _ in range(100):
        deep = [deep]
    assert json_depth(deep, limit=32) == 33  # stops early
