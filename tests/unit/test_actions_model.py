"""The actions' decisions, table-driven and pure: signals, revokes nobody hears, what is known of a call, bulk
selections, what a pool supports, command bodies, masked settings."""

from __future__ import annotations

from typing import Any

import pytest

from dashboard.model.actions import (
    ActionError,
    KnownCall,
    Selection,
    bulk_state,
    call_from_audit,
    call_from_backend,
    call_from_events,
    mask_settings,
    parse_autoscale,
    parse_count,
    parse_rate_limit,
    parse_revoke,
    parse_signal,
    parse_time_limit,
    pool_size,
    pool_support,
    redispatch_body,
    revoke_unheard,
)
from dashboard.model.secrets import MASK


@pytest.mark.parametrize(("given", "expected"), [
    (None, "SIGTERM"), ("", "SIGTERM"), ("KILL", "SIGKILL"), ("sigkill", "SIGKILL"), (" SIGINT ", "SIGINT"),
    ("usr1", "SIGUSR1"), ("QUIT", "SIGQUIT"),
])
def test_signal_names(given: Any, expected: str) -> None:
    assert parse_signal(given) == expected


@pytest.mark.parametrize("given", ["SIGBOGUS", "9", 9, True, ["SIGKILL"], "SIGSTOP"])
def test_other_signals_are_refused(given: Any) -> None:
    with pytest.raises(ActionError, match="signal: must be one of"):
        parse_signal(given)


def test_a_revoke_body_from_json_or_a_form() -> None:
    assert parse_revoke({"terminate": True, "signal": "KILL"}).signal == "SIGKILL"
    assert parse_revoke({"terminate": "1", "force": "on"}).force is True
    assert parse_revoke(None).terminate is False
    with pytest.raises(ActionError, match="unknown field"):
        parse_revoke({"terminat": True})
    with pytest.raises(ActionError, match="terminate: must be true or false"):
        parse_revoke({"terminate": 3})


@pytest.mark.parametrize(("state", "queue", "consumers", "unheard"), [
    ("PENDING", "llm-gpu", [], True),
    ("PENDING", "llm", ["w1"], False),
    ("PENDING", "llm", None, False),  # not compared yet: nothing can be said
    ("STARTED", "llm-gpu", [], False),  # a worker has it: it hears the revoke
    ("RECEIVED", "llm-gpu", [], False),
    ("PENDING", None, [], False),
])
def test_a_revoke_nobody_would_hear(state: str, queue: str | None, consumers: list[str] | None, unheard: bool) -> None:
    assert (revoke_unheard(state, queue, consumers) is not None) is unheard


def test_the_audit_logs_call_is_exact_and_keeps_relative_options_only() -> None:
    call = call_from_audit("t", '[1, "a"]', '{"x": {"y": [1]}}',
                           '{"queue": "q", "eta": "2030-01-01T00:00:00+00:00", "countdown": 5, "expires": 60}')
    assert call is not None and call.exact and call.source == "audit"
    assert (call.args, call.kwargs, call.options) == ([1, "a"], {"x": {"y": [1]}}, {"queue": "q", "countdown": 5,
                                                                                     "expires": 60})
    assert call_from_audit("t", '[1, "a… [truncated: 20000 characters in all]', "{}", "{}") is None


@pytest.mark.parametrize(("args", "kwargs", "exact"), [
    ([1, 2], {"a": "b"}, True), ((1, 2), {}, True), (None, {}, False), ([{1, 2}], {}, False), ([1], {1: 2}, False),
])
def test_the_backends_call(args: Any, kwargs: Any, exact: bool) -> None:
    call = call_from_backend("t", args, kwargs)
    assert (call is not None and call.exact) is exact


@pytest.mark.parametrize(("args_repr", "kwargs_repr", "args", "kwargs"), [
    ("(1, 'a')", "{'x': 1}", [1, "a"], {"x": 1}),
    ("[1, 2, ...]", "{}", None, {}),  # saferepr cut a list: Ellipsis is no JSON
    ("('abc...',)", "{}", ["abc..."], {}),  # a cut string still parses: never exact for that reason
    ("(<object object at 0x1>,)", "{'k': {1, 2}}", None, None),
    (None, None, None, None),
])
def test_the_events_repr_is_never_exact(args_repr: str | None, kwargs_repr: str | None, args: Any,
                                        kwargs: Any) -> None:
    call = call_from_events("t", args_repr, kwargs_repr)
    assert not call.exact and call.reason
    assert (call.args, call.kwargs) == (args, kwargs)


def test_dispatch_again_needs_the_exact_arguments_or_both_given() -> None:
    exact = KnownCall("t", [1], {"a": 2}, {"queue": "q"}, "audit")
    inexact = call_from_events("t", "(1,)", "{}")
    assert redispatch_body(exact, {}) == {"name": "t", "args": [1], "kwargs": {"a": 2}, "options": {"queue": "q"}}
    assert redispatch_body(exact, {"options": {"priority": 3}})["options"] == {"queue": "q", "priority": 3}
    assert redispatch_body(inexact, {"args": [2], "kwargs": {}, "name": "u"})["name"] == "u"
    with pytest.raises(ActionError) as refused:
        redispatch_body(inexact, {"args": [2]})
    assert refused.value.status == 409 and refused.value.extra["call"]["exact"] is False
    with pytest.raises(ActionError, match="name is not known"):
        redispatch_body(KnownCall(None, [], {}, {}, "audit"), {})


@pytest.mark.parametrize(("kind", "state", "taken", "problem"), [
    ("redispatch", None, "FAILURE", False), ("redispatch", "FAILURE", "FAILURE", False),
    ("redispatch", "SUCCESS", "SUCCESS", True), ("revoke", None, None, False), ("revoke", "STARTED", "STARTED", False),
    ("revoke", "SUCCESS", "SUCCESS", True),
])
def test_what_a_bulk_action_takes(kind: Any, state: str | None, taken: str | None, problem: bool) -> None:
    selection, why = bulk_state(kind, Selection(state, "n"))
    assert (selection.state, why is not None) == (taken, problem)
    assert selection.name == "n"


def stats(implementation: str, **more: Any) -> dict[str, Any]:
    return {"pool": {"implementation": implementation, "max-concurrency": 4, **more.pop("pool", {})}, **more}


@pytest.mark.parametrize(("implementation", "extra", "resize", "autoscale", "terminate"), [
    ("celery.concurrency.prefork:TaskPool", {}, True, False, True),
    ("celery.concurrency.prefork:TaskPool", {"autoscaler": {"max": 4}}, False, True, True),
    ("celery.concurrency.thread:TaskPool", {}, False, False, False),
    ("celery.concurrency.solo:TaskPool", {}, False, False, False),
    ("celery.concurrency.gevent:TaskPool", {}, True, False, True),
])
def test_what_a_pool_supports(implementation: str, extra: dict[str, Any], resize: bool, autoscale: bool,
                              terminate: bool) -> None:
    support = pool_support(stats(implementation, **extra))
    assert (support.can_resize, support.can_autoscale, support.can_terminate) == (resize, autoscale, terminate)
    assert all(getattr(support, f"{key}_why") for key, can in (("resize", resize), ("autoscale", autoscale),
                                                               ("terminate", terminate)) if not can)


def test_an_unknown_pool_supports_nothing_and_sizes() -> None:
    assert not pool_support(None).can_resize and "not known" in (pool_support(None).resize_why or "")
    assert pool_size(stats("x:P", pool={"processes": [1, 2, 3]})) == 3
    assert pool_size(stats("x:P")) == 4 and pool_size(None) is None


def test_command_bodies() -> None:
    assert parse_count({"grow": 2}, ("grow", "shrink")) == ("grow", 2)
    assert parse_count({"shrink": "1"}, ("grow", "shrink")) == ("shrink", 1)
    assert parse_autoscale({"max": 8}) == (8, 0)
    assert parse_rate_limit({"task": "a.b", "rate": "10/m"}) == ("a.b", "10/m")
    assert parse_rate_limit({"task": "a.b", "rate": ""}) == ("a.b", "")
    assert parse_time_limit({"task": "a.b", "soft": "50", "hard": 60}) == ("a.b", 50.0, 60.0)
    for parse, body in [(lambda b: parse_count(b, ("grow", "shrink")), {"grow": 1, "shrink": 1}),
                        (lambda b: parse_count(b, ("grow", "shrink")), {"grow": 0}),
                        (lambda b: parse_count(b, ("grow", "shrink")), {"grow": 1000}),
                        (parse_autoscale, {"max": 1, "min": 2}), (parse_rate_limit, {"task": "a", "rate": "x/y"}),
                        (parse_rate_limit, {"task": "bad name", "rate": "1/s"}),
                        (parse_time_limit, {"task": "a", "soft": 60, "hard": 50}),
                        (parse_time_limit, {"task": "a", "soft": "nan"})]:
        with pytest.raises(ActionError):
            parse(body)


def test_settings_are_shown_with_secrets_masked() -> None:
    shown = mask_settings({"broker_url": "redis://:hunter2@host:6379/0", "secret_key": "s3",
                           "broker_transport_options": {"sentinel_kwargs": {"password": "p"}}, "worker_concurrency": 4,
                           "empty_token": ""})
    assert shown["broker_url"] == f"redis://:{MASK}@host:6379/0" and shown["secret_key"] == MASK
    assert shown["broker_transport_options"]["sentinel_kwargs"]["password"] == MASK
    assert shown["worker_concurrency"] == 4 and shown["empty_token"] == ""
