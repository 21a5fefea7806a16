"""The search language, table-driven: parsing, every form's meaning in memory, and every bad query's message."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest

from dashboard.model.search import SearchError, TaskQuery, glob_prefix, glob_to_like, parse_query, sort_order, words
from dashboard.model.state import State, TaskView

NOW = 1_900_000_000.0


def task(uuid: str = "3f2a0000-0000-0000-0000-000000000001", name: str = "acme.billing.charge",
         state: str = "task-failed", at: float = NOW - 60, **fields: Any) -> TaskView:
    """A task seen at `at` (task-sent), then `state` with `fields` (args, result, exception...)."""
    memory = State(clock=lambda: NOW)
    memory.apply({"type": "task-sent", "uuid": uuid, "name": name, "queue": fields.pop("queue", "billing"),
                  "args": fields.pop("args", "[42, 'eur']"), "kwargs": fields.pop("kwargs", "{'retry': True}"),
                  "timestamp": at})
    memory.apply({"type": state, "uuid": uuid, "hostname": fields.pop("worker", "celery@a"), "timestamp": at + 1,
                  **fields})
    found = memory.task(uuid)
    assert found is not None
    return found


FAILED = task(exception="TimeoutError('upstream took 30 s')", traceback="Traceback...\nTimeoutError: upstream")


@pytest.mark.parametrize(("query", "expected"), [
    ("", True),
    ("name:acme.billing.charge", True),
    ("name:acme.billing.*", True),
    ("name:acme.*.charge", True),
    ("name:acme.billing", False),  # exact unless it has a wildcard
    ("name:ACME.billing.*", False),  # names are case-sensitive
    ("name:acme.billing.charg?", True),
    ("name:other,acme.billing.*", True),
    ("name:other name:acme.billing.*", True),  # repeated: any of them
    ("-name:acme.*", False),
    ("state:FAILURE", True),
    ("state:failure", True),
    ("state:SUCCESS,FAILURE", True),
    ("state:SUCCESS", False),
    ("-state:SUCCESS", True),
    ("worker:celery@a", True),
    ("worker:celery@*", True),
    ("worker:celery@b", False),
    ("queue:billing", True),
    ("queue:bill*", True),
    ("queue:default", False),
    ("id:3f2a", True),
    ("id:3F2A", True),
    ("id:3f2b", False),
    ("since:1h", True),
    ("since:30s", False),
    ("until:1h", False),
    ("until:2031-01-01", True),
    ("since:2031-01-01", False),
    (f"since:{NOW - 120:.0f} until:{NOW:.0f}", True),
    ("args:42", True),
    ("args:4", True),  # a word prefix
    ("args:eur", True),
    ("args:usd", False),
    ("kwargs:retry", True),
    ("result:timeout", False),
    ("exception:timeout", True),
    ("exception:TIMEOUT", True),
    ("traceback:upstream", True),
    ("timeout", True),  # free text looks in every text field
    ("upstream 30", True),
    ('"upstream took"', True),
    ("upstream missing", False),  # every word must match
    ("-timeout", False),
    ("name:acme.billing.* state:FAILURE worker:celery@a queue:billing since:1h args:42 timeout", True),
])
def test_each_form_means_what_the_docs_say(query: str, expected: bool) -> None:
    assert parse_query(query, NOW).matches(FAILED) is expected


@pytest.mark.parametrize(("query", "says"), [
    ("colour:red", "unknown key 'colour'"),
    ("state:DONE", "'DONE' is not a state"),
    ("since:yesterday", "neither a duration"),
    ("since:1h until:2h", "since: must be before until"),
    ('"not closed', "not closed"),
    ("name:", "give a value"),
    ("id:3f*", "without * or ?"),
    ("args:!!!", "no letters or digits"),
    ("-since:1h", "cannot be negated"),
    ("x" * 1001, "too long"),
    (" ".join(f"w{i}" for i in range(40)), "too many parts"),
    ("since:-5", "not a time"),
])
def test_a_malformed_query_names_the_problem(query: str, says: str) -> None:
    with pytest.raises(SearchError, match=re.escape(says)):
        parse_query(query, NOW)


def test_parse_keeps_the_parts() -> None:
    parsed = parse_query('name:a.* -state:SUCCESS args:42 "free Text"', NOW)
    assert [(f.key, f.values, f.negated) for f in parsed.filters] == [("name", ("a.*",), False),
                                                                       ("state", ("SUCCESS",), True)]
    assert [(t.field, t.words) for t in parsed.terms] == [("args", ("42",)), (None, ("free", "text"))]
    assert parsed.text == 'name:a.* -state:SUCCESS args:42 "free Text"'
    assert not parsed.empty and parse_query("  ", NOW).empty


def test_times_are_utc_unless_they_say_otherwise() -> None:
    assert parse_query("until:2026-12-01", NOW).until == datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    assert parse_query("since:2026-12-01T08:00+01:00", NOW).since == datetime(2026, 12, 1, 7, tzinfo=UTC).timestamp()
    assert parse_query("since:2d", NOW).since == NOW - 2 * 86_400
    assert parse_query("since:1.5h", NOW).since == NOW - 5400


def test_words_fold_case_and_accents_and_split_on_punctuation() -> None:
    assert words("TimeoutError('Café_au-lait', 42)") == ["timeouterror", "cafe", "au", "lait", "42"]


def test_globs_translate_for_the_stores() -> None:
    assert glob_prefix("acme.billing.*") == "acme.billing."
    assert glob_prefix("*x") == ""
    assert glob_to_like("a_b%c*?") == "a\\_b\\%c%_"


def test_a_task_with_no_value_fails_a_filter_on_it_and_passes_its_negation() -> None:
    no_queue = task(queue=None)
    assert not parse_query("queue:billing", NOW).matches(no_queue)
    assert parse_query("-queue:billing", NOW).matches(no_queue)


def test_sort_orders() -> None:
    assert sort_order("-seen") == ("seen", True)
    assert sort_order("runtime") == ("runtime", False)
    with pytest.raises(SearchError, match="sort"):
        sort_order("worker")


def test_an_empty_query_is_the_default() -> None:
    assert TaskQuery().empty


def test_fold_filters_adds_the_lists_filters_to_a_search() -> None:
    from dashboard.model.search import fold_filters

    assert fold_filters("timeout", "FAILURE", "billing", "q1", "celery@a") == \
        'timeout state:FAILURE queue:"q1" worker:"celery@a" name:"*billing*"'
    assert parse_query(fold_filters("", name="acme.billing"), NOW).matches(FAILED)
    with pytest.raises(SearchError, match="double quote"):
        fold_filters("x", queue='a"b')
