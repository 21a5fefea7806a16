"""Unit tests for the helpers of dashboard.web.views: the tasks page's filters, selector-safe element ids, row links."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

import pytest
from flask import Flask, url_for
from hypothesis import given
from hypothesis import strategies as st
from werkzeug.datastructures import MultiDict

from dashboard.app import create_app
from dashboard.config import Config
from dashboard.model.state import EVENT_STATES
from dashboard.web.query import MAX_OFFSET
from dashboard.web.views import FILTER_KEYS, PAGE_SIZE, FilterError, TaskFilters, _row_links, dom_id

# -- TaskFilters.from_args ---------------------------------------------------------------------------------------


def test_no_arguments_give_the_defaults() -> None:
    filters = TaskFilters.from_args({})

    assert filters == TaskFilters()
    assert (filters.limit, filters.offset) == (PAGE_SIZE, 0)
    assert filters.active is False
    assert filters.query() == ""


def test_valid_arguments_are_parsed() -> None:
    args = {"state": "SUCCESS", "name": "llm.summarize", "queue": "llm", "worker": "celery@w1", "limit": "10",
            "offset": "20"}  # fmt: skip

    filters = TaskFilters.from_args(args)

    assert filters == TaskFilters("SUCCESS", "llm.summarize", "llm", "celery@w1", 10, 20)


def test_values_are_stripped_and_blank_ones_mean_unset() -> None:
    filters = TaskFilters.from_args({"name": "  llm.summarize ", "queue": "   ", "worker": "", "limit": " 7 "})

    assert (filters.name, filters.queue, filters.worker, filters.limit) == ("llm.summarize", None, None, 7)


def test_a_multidict_uses_the_first_value() -> None:
    filters = TaskFilters.from_args(MultiDict([("state", "failure"), ("state", "nonsense")]))

    assert filters.state == "FAILURE"


@pytest.mark.parametrize("raw", ["success", "Success", "SUCCESS", "  sUcCeSs  "])
def test_state_is_case_insensitive(raw: str) -> None:
    assert TaskFilters.from_args({"state": raw}).state == "SUCCESS"


@pytest.mark.parametrize("state", EVENT_STATES)
def test_every_event_state_is_accepted(state: str) -> None:
    assert TaskFilters.from_args({"state": state.lower()}).state == state


@pytest.mark.parametrize("raw", ["SENT", "done", "success!", "SUCCESS,FAILURE", "SUCCESS\x00"])
def test_an_unknown_state_is_rejected_with_the_states_listed(raw: str) -> None:
    with pytest.raises(FilterError) as caught:
        TaskFilters.from_args({"state": raw})

    message = str(caught.value)
    assert message.startswith("state:")
    for state in EVENT_STATES:
        assert state in message


def test_filter_error_is_a_value_error() -> None:
    assert issubclass(FilterError, ValueError)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"limit": "1"}, (1, 0)),
        ({"limit": "1000"}, (1000, 0)),
        ({"limit": "+5"}, (5, 0)),
        ({"offset": "0"}, (PAGE_SIZE, 0)),
        ({"offset": str(MAX_OFFSET)}, (PAGE_SIZE, MAX_OFFSET)),
        ({"limit": "", "offset": ""}, (PAGE_SIZE, 0)),
    ],
)
def test_limit_and_offset_within_bounds(args: dict[str, str], expected: tuple[int, int]) -> None:
    filters = TaskFilters.from_args(args)

    assert (filters.limit, filters.offset) == expected


@pytest.mark.parametrize(
    ("key", "raw"),
    [
        ("limit", "0"),
        ("limit", "-1"),
        ("limit", "1001"),
        ("offset", "-1"),
        ("offset", str(MAX_OFFSET + 1)),
    ],
)
def test_limit_and_offset_out_of_bounds_name_the_parameter(key: str, raw: str) -> None:
    with pytest.raises(FilterError, match=rf"^{key}: must be between \d+ and \d+$"):
        TaskFilters.from_args({key: raw})


@pytest.mark.parametrize("key", ["limit", "offset"])
@pytest.mark.parametrize("raw", ["ten", "1.5", "1e3", "0x10", "5;drop", "9" * 5_000])
def test_limit_and_offset_must_be_whole_numbers(key: str, raw: str) -> None:
    with pytest.raises(FilterError, match=rf"^{key}: expected a whole number") as caught:
        TaskFilters.from_args({key: raw})

    assert len(str(caught.value)) < 100  # the echoed value is clipped


def test_max_limit_and_default_limit_are_the_callers_choice() -> None:
    assert TaskFilters.from_args({}, default_limit=20).limit == 20
    assert TaskFilters.from_args({"limit": "500"}, max_limit=500).limit == 500
    with pytest.raises(FilterError, match=r"^limit: must be between 1 and 500$"):
        TaskFilters.from_args({"limit": "501"}, max_limit=500)


@pytest.mark.parametrize("key", FILTER_KEYS)
def test_values_over_255_characters_are_rejected(key: str) -> None:
    with pytest.raises(FilterError, match=rf"^{key}: at most 255 characters$"):
        TaskFilters.from_args({key: "x" * 256})


@pytest.mark.parametrize("key", ["name", "queue", "worker"])
def test_255_characters_are_accepted_and_surrounding_blanks_do_not_count(key: str) -> None:
    value = "x" * 255

    filters = TaskFilters.from_args({key: f"  {value}  "})

    assert getattr(filters, key) == value


# -- TaskFilters.active and .query -------------------------------------------------------------------------------


@pytest.mark.parametrize("key", FILTER_KEYS)
def test_any_filter_makes_the_filters_active(key: str) -> None:
    value = "SUCCESS" if key == "state" else "x"

    assert TaskFilters.from_args({key: value}).active is True


def test_paging_alone_is_not_an_active_filter() -> None:
    assert TaskFilters.from_args({"limit": "10", "offset": "30"}).active is False


def reparse(filters: TaskFilters) -> TaskFilters:
    """Parse the query string the filters produce, as the next request would."""
    return TaskFilters.from_args(MultiDict(parse_qsl(filters.query(), keep_blank_values=True)))


@pytest.mark.parametrize(
    "args",
    [
        {},
        {"state": "failure"},
        {"name": "a&b=c d", "queue": "q/1?#", "worker": "celery@host:1", "offset": "100"},
        {"name": "tâche.été", "worker": "gen42@web-1"},
        {"state": "RETRY", "name": "x", "queue": "y", "worker": "z", "offset": "50"},
    ],
)
def test_query_round_trips(args: dict[str, str]) -> None:
    filters = TaskFilters.from_args(args)

    assert reparse(filters) == filters


def test_query_round_trips_a_non_default_limit() -> None:
    filters = TaskFilters.from_args({"state": "success", "limit": "10", "offset": "20"})

    assert reparse(filters) == filters


def test_query_leaves_out_unset_values_and_offset_zero() -> None:
    filters = TaskFilters.from_args({"state": "success", "offset": "0"})

    assert filters.query() == "state=SUCCESS"


def test_query_with_changes_is_the_link_to_another_page() -> None:
    filters = TaskFilters.from_args({"queue": "llm", "offset": "50"})

    assert dict(parse_qsl(filters.query(offset=100))) == {"queue": "llm", "offset": "100"}
    assert filters.query(offset=0) == "queue=llm"
    assert filters.query(queue=None) == "offset=50"
    assert filters.query(queue="") == "offset=50"
    assert filters == TaskFilters.from_args({"queue": "llm", "offset": "50"})  # frozen: query() changed nothing


def test_query_percent_encodes_values() -> None:
    filters = TaskFilters.from_args({"name": "a&b=c d"})

    assert filters.query() == "name=a%26b%3Dc+d"


# -- dom_id ----------------------------------------------------------------------------------------------------------

SAFE_SUFFIX = re.compile(r"[A-Za-z0-9_-]*")
# A CSS identifier usable in `#id` without escaping, as long as the prefix starts with a letter.
CSS_IDENT = re.compile(r"-?[A-Za-z_][A-Za-z0-9_-]*")
PREFIXES = ("t-", "fix-")  # the prefixes the templates use
SAMPLE_KEYS = (
    "",
    "d9b1c6a2-7f3e-4a55-9f0e-3c2b1a0f9e8d",
    "celery@worker-1.example.com",
    "a.b",
    "a_2e_b",
    "a_b",
    "a__b",
    "_",
    "__",
    "_2e_",
    "a:b",
    "a@b",
    "a/b",
    "a b",
    "a\tb",
    "a\nb",
    "a#b",
    "a\"b'c",
    "<script>",
    "é",
    "e\u0301",  # e + combining acute: another string than "é"
    "日本",
    "😀",
    "\x00",
    "A",
    "a",
    "_41_",
    "-",
    "--",
    "1",
)


def decode(escaped: str) -> str:
    """Invert dom_id's escaping: `_<hex>_` is one code point, anything else stands for itself."""
    out: list[str] = []
    index = 0
    while index < len(escaped):
        char = escaped[index]
        if char == "_":
            end = escaped.index("_", index + 1)
            out.append(chr(int(escaped[index + 1 : end], 16)))
            index = end + 1
        else:
            out.append(char)
            index += 1
    return "".join(out)


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("key", SAMPLE_KEYS)
def test_dom_id_is_the_prefix_and_selector_safe_characters(prefix: str, key: str) -> None:
    element_id = dom_id(prefix, key)

    assert element_id.startswith(prefix)
    assert SAFE_SUFFIX.fullmatch(element_id[len(prefix) :])
    assert CSS_IDENT.fullmatch(element_id)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("d9b1c6a2-7f3e-4a55-9f0e-3c2b1a0f9e8d", "t-d9b1c6a2-7f3e-4a55-9f0e-3c2b1a0f9e8d"),  # a uuid is kept as is
        ("AZaz09-", "t-AZaz09-"),
        ("a.b", "t-a_2e_b"),
        ("a_b", "t-a_5f_b"),
        ("celery@w1:2/3", "t-celery_40_w1_3a_2_2f_3"),
        ("😀", "t-_1f600_"),
        ("", "t-"),
    ],
)
def test_dom_id_escapes_each_other_character_as_its_code_point(key: str, expected: str) -> None:
    assert dom_id("t-", key) == expected


def test_dom_id_gives_distinct_keys_distinct_ids() -> None:
    ids = {dom_id("t-", key) for key in SAMPLE_KEYS}

    assert len(ids) == len(set(SAMPLE_KEYS))


def test_a_key_that_looks_escaped_does_not_collide_with_the_key_it_looks_like() -> None:
    assert dom_id("t-", "a.b") != dom_id("t-", "a_2e_b")
    assert dom_id("t-", "A") != dom_id("t-", "_41_")


@pytest.mark.parametrize("key", SAMPLE_KEYS)
def test_dom_id_can_be_decoded_back_to_its_key(key: str) -> None:
    assert decode(dom_id("t-", key)[len("t-") :]) == key


@given(st.text())
def test_dom_id_is_one_to_one_for_any_text(key: str) -> None:
    # Decodable means injective: no two keys can share an id under one prefix.
    element_id = dom_id("t-", key)

    assert SAFE_SUFFIX.fullmatch(element_id[2:])
    assert decode(element_id[2:]) == key


# -- the tasks table's row links ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def row_app() -> Flask:
    return create_app(Config(broker_url="redis://127.0.0.1:1/0"), audit=None, live=False)


@given(task_id=st.text(min_size=1, max_size=40).filter(lambda text: "\x00" not in text))
@pytest.mark.parametrize("prefix", ["", "/prefix/0", "/0"])
def test_row_links_are_what_url_for_builds(row_app: Flask, prefix: str, task_id: str) -> None:
    with row_app.test_request_context(base_url=f"http://dashboard.test{prefix}"):
        link = _row_links()
        for endpoint in ("pages.task", "act.task_revoke", "act.task_redispatch", "act.edit_page"):
            assert link(endpoint, task_id) == url_for(endpoint, task_id=task_id)
