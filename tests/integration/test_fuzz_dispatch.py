"""Property-based fuzzing (hypothesis) of the dispatch API, the dispatch form and the task filters: never a 5xx
other than the broker's 503.

The app runs open (no users) with the sample catalog and a broker port where nothing listens, so whatever
passes validation fails fast with 503 and nothing is ever published. One more property runs the same app on the
session's real Redis, every dispatch forced into a throwaway queue, so the 202 path (serialization, publish) is
fuzzed too. The test client sends no cookie, Origin or Sec-Fetch-Site header: a script, which needs no CSRF token.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from dashboard import create_app
from dashboard.config import MAX_BODY_BYTES, load_config
from dashboard.model.dispatch import FORM_OPTION_PREFIX, FORM_PARAM_PREFIX, OPTION_NAMES
from dashboard.resources import sample_config
from dashboard.web.context import services

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,  # no .hypothesis/ directory left in the checkout
)
API_STATUSES = {202, 400, 409, 413, 503}
FORM_STATUSES = {200, 400, 409, 413, 422, 503}
FILTER_STATUSES = {200, 400}
CATALOG_NAMES = ["worker.tasks.stt.transcribe", "worker.tasks.llm.summarize_note", "worker.tasks.link.unfurl",
                 "worker.tasks.demo.fail", "worker.tasks.demo.slow", "worker.tasks.llm.translate"]


@pytest.fixture(scope="module")
def app() -> Iterator[Flask]:
    dead = "redis://127.0.0.1:1"  # nothing listens on port 1: a send is refused at once
    config = load_config(sample_config(), {"CELERY_BROKER_URL": f"{dead}/0", "DASHBOARD_AUDIT_PATH": ""})
    config = dataclasses.replace(config, result_backend=None, auth=dataclasses.replace(config.auth, users=(),
                                                                                            tokens=()))
    assert not config.auth.enabled and not config.audit_path
    built = create_app(config, live=False)
    built.testing = True
    built.config["PROPAGATE_EXCEPTIONS"] = False  # a bug must show as the 500 a user would get, not a raise
    try:
        yield built
    finally:
        rt = services(built)
        rt.monitor.stop()
        rt.client.close()


@pytest.fixture(scope="module")
def client(app: Flask) -> FlaskClient:
    """No cookie jar: a rendered page sets the session cookie, and a cookie makes a POST need the CSRF token."""
    return app.test_client(use_cookies=False)


@pytest.fixture(autouse=True, scope="module")
def quiet_errors() -> Iterator[None]:
    """Every 5xx is asserted on; the error handler's traceback logging would only flood the output."""
    logger = logging.getLogger("dashboard.web.errors")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def seen(response: Any) -> int:
    """The status, counted for --hypothesis-show-statistics (how far the inputs got: 400 vs 503)."""
    event(f"status {response.status_code}")
    return int(response.status_code)


def describe(response: Any) -> str:
    return f"{response.status_code} {response.get_data()[:300]!r}"


# --- strategies ----------------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=25)

names = st.sampled_from(CATALOG_NAMES) | st.from_regex(r"\A[a-z][a-z0-9._:@/$-]{0,40}\Z") | st.text(max_size=30)
timestamps = st.datetimes(timezones=st.timezones() | st.none()).map(lambda d: d.isoformat()) | st.text(max_size=30)
numbers = (st.integers(min_value=-(10**20), max_value=10**20) | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from([0, 1, 60, 3600, 366 * 24 * 3600, 1e12, -1e12, 1e300, 2**63]))




option_values = {
    "queue": st.text(max_size=20) | st.from_regex(r"\A[a-z0-9._-]{1,20}\Z") | json_values,
    "countdown": numbers | json_values,
    "eta": timestamps | json_values,
    "expires": numbers | timestamps | json_values,
    "priority": st.integers(min_value=-3, max_value=12) | json_values,
}
options = st.fixed_dictionaries({}, optional={key: option_values[key] for key in OPTION_NAMES}) | json_values
dispatch_bodies = st.fixed_dictionaries(
    {},
    optional={
        "name": names | json_values,
        "args": st.lists(json_values, max_size=4) | json_values,
        "kwargs": st.dictionaries(st.text(max_size=12) | st.sampled_from(["note_id", "audio_url", "url", "language",
                                                                          "max_words", "seconds", "steps"]),
                                  json_values, max_size=4) | json_values,
        "options": options,
        "force": st.booleans() | json_values,
        "extra": json_values,
    },
)


def to_json(value: Any) -> str:
    """JSON the way a client might send it: NaN and Infinity included (Python's json reads them back)."""
    return json.dumps(value, allow_nan=True)


# --- POST /api/dispatch --------------------------------------------------------------------------------


@FUZZ
@given(body=dispatch_bodies)
@example(body={"name": "worker.tasks.x", "options": {"countdown": 1e10, "expires": 5}})
@example(body={"name": "worker.tasks.x", "options": {"countdown": float("nan"), "eta": "2030-01-01"}})
@example(body={"name": "worker.tasks.x", "options": {"eta": "9999-12-31T23:59:59-14:00", "expires": 1}})
@example(body={"name": "worker.tasks.x", "options": {"eta": "0001-01-01T00:00:00+14:00"}})
@example(body={"name": "worker.tasks.x", "options": {"expires": "0001-01-01T00:00:00+14:00"}})
def test_api_dispatch_structured_json_never_5xx(client: FlaskClient, body: dict[str, Any]) -> None:
    response = client.post("/api/dispatch", data=to_json(body), content_type="application/json")

    assert seen(response) in API_STATUSES, describe(response)
    assert isinstance(response.get_json(), dict) and "error" in response.get_json() or response.status_code == 202


identifiers = st.from_regex(r"\A[a-z_][a-z0-9_]{0,10}\Z")
mostly_valid_bodies = st.fixed_dictionaries(
    {"name": st.from_regex(r"\Aworker\.tasks\.fuzz\.[a-z0-9_]{1,10}\Z")},
    optional={
        "args": st.lists(json_values, max_size=4),
        "kwargs": st.dictionaries(identifiers, json_values, max_size=4),
        "options": st.fixed_dictionaries({}, optional={key: option_values[key] for key in OPTION_NAMES}),
        "force": st.booleans(),
    },
)


@FUZZ
@given(body=mostly_valid_bodies)
@example(body={"name": "worker.tasks.fuzz.x", "args": [float("nan"), 2**70, "\udcff", {"\x00": None}]})
def test_api_dispatch_mostly_valid_json_never_5xx(client: FlaskClient, body: dict[str, Any]) -> None:
    """Bodies that pass validation more often, so the send path (serialization, routing, the broker) is fuzzed."""
    response = client.post("/api/dispatch", data=to_json(body), content_type="application/json")

    assert seen(response) in API_STATUSES, describe(response)


FUZZ_QUEUE = f"fuzz-{uuid.uuid4().hex[:8]}"
PRIORITY_STEPS = (0, 3, 6, 9)


@pytest.fixture(scope="module")
def live_client(broker_url: str) -> Iterator[FlaskClient]:
    """The same app on the session's real Redis, so the 202 path (serialization, publish) is fuzzed too.

    Every dispatch is forced into a queue of its own that nobody consumes; its lists and bindings go after.
    """
    config = load_config(sample_config(), {"CELERY_BROKER_URL": broker_url, "DASHBOARD_AUDIT_PATH": ""})
    config = dataclasses.replace(config, result_backend=None, auth=dataclasses.replace(config.auth, users=(),
                                                                                            tokens=()))
    built = create_app(config, live=False)
    built.testing = True
    conn = redis.Redis.from_url(broker_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        yield built.test_client(use_cookies=False)
    finally:
        rt = services(built)
        rt.client.close()
        keys = [FUZZ_QUEUE if step == 0 else f"{FUZZ_QUEUE}\x06\x16{step}" for step in PRIORITY_STEPS]
        conn.delete(*keys, f"_kombu.binding.{FUZZ_QUEUE}", f"_kombu.binding_permanent.{FUZZ_QUEUE}")
        conn.close()


@settings(FUZZ, max_examples=100)
@given(body=mostly_valid_bodies)
def test_api_dispatch_on_a_live_broker_is_202_or_400(live_client: FlaskClient, body: dict[str, Any]) -> None:
    body = {**body, "force": True, "options": {**body.get("options", {}), "queue": FUZZ_QUEUE}}

    response = live_client.post("/api/dispatch", data=to_json(body), content_type="application/json")

    assert seen(response) in {202, 400}, describe(response)
    if response.status_code == 202:
        assert response.get_json()["queue"] == FUZZ_QUEUE


@FUZZ
@given(body=json_values)
def test_api_dispatch_any_json_never_5xx(client: FlaskClient, body: Any) -> None:
    response = client.post("/api/dispatch", data=to_json(body), content_type="application/json")

    assert seen(response) in API_STATUSES, describe(response)


@FUZZ
@given(raw=st.binary(max_size=512) | st.text(max_size=200).map(str.encode),
       content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded",
                                     "multipart/form-data; boundary=x", "", "application/json; charset=latin-1"]))
@example(raw=b"[" * 100_000, content_type="application/json")
@example(raw=b'{"a":' * 5000, content_type="application/json")
@example(raw=b"\xff\xfe{}", content_type="application/json")
@example(raw=b"\x00", content_type="multipart/form-data; boundary=x")
def test_api_dispatch_any_bytes_never_5xx(client: FlaskClient, raw: bytes, content_type: str) -> None:
    response = client.post("/api/dispatch", data=raw, content_type=content_type or None)

    assert seen(response) in API_STATUSES, describe(response)


def test_api_dispatch_too_large_is_413(client: FlaskClient) -> None:
    response = client.post("/api/dispatch", data=b"x" * (MAX_BODY_BYTES + 1), content_type="application/json")

    assert response.status_code == 413, describe(response)


def test_api_dispatch_valid_body_reaches_the_dead_broker_as_503(client: FlaskClient) -> None:
    response = client.post("/api/dispatch", json={"name": "worker.tasks.llm.summarize_note",
                                                  "kwargs": {"note_id": "n"}})

    assert response.status_code == 503, describe(response)  # the fuzzing above can reach the broker step


# --- POST /dispatch (the form) ---------------------------------------------------------------------------

form_ids = st.sampled_from(["dispatch-raw", "dispatch-0", "dispatch-1", "dispatch-2", "dispatch-5", "dispatch-9999",
                            "dispatch-", "dispatch-01", ""]) | st.text(max_size=20)
param_names = st.sampled_from(["audio_url", "language", "note_id", "max_words", "url", "seconds", "steps", "x"])
text_values = (st.text(max_size=40) | json_values.map(to_json)
               | st.sampled_from(["", " ", "1e12", "-1e12", "1e400", "nan", "inf", "-0", "9" * 40, "0x10", "true"]))
form_fields = st.fixed_dictionaries(
    {"form_id": form_ids},
    optional={
        "name": names,
        "mode": st.sampled_from(["raw", "catalog", ""]),
        "args": text_values,
        "kwargs": text_values,
        "force": st.sampled_from(["1", "on", "true", "no", ""]),
        **{FORM_OPTION_PREFIX + key: text_values | timestamps for key in OPTION_NAMES if key != "countdown"},
        FORM_OPTION_PREFIX + "countdown": text_values,
    },
)
form_data = st.tuples(
    form_fields,
    st.dictionaries(param_names.map(lambda n: FORM_PARAM_PREFIX + n), text_values, max_size=4),
    st.dictionaries(st.text(max_size=15), st.text(max_size=20), max_size=3),
).map(lambda parts: {**parts[2], **parts[1], **parts[0]})


@FUZZ
@given(data=form_data, htmx=st.booleans())
@example(data={"form_id": "dispatch-1", "arg.note_id": "n", "opt.countdown": "-1e10"}, htmx=False)
@example(data={"form_id": "dispatch-raw", "name": "worker.tasks.x", "args": "[" * 50_000}, htmx=True)
@example(data={"form_id": "dispatch-raw", "name": "worker.tasks.x", "opt.priority": "1e3"}, htmx=True)
@example(data={"form_id": "dispatch-raw", "name": "worker.tasks.x", "args": "[" + "7" * 5000 + "]"}, htmx=False)
@example(data={"form_id": "dispatch-raw", "name": "worker.tasks.x", "kwargs": '{"a": ' + "7" * 5000 + "}"}, htmx=True)
def test_dispatch_form_never_5xx(client: FlaskClient, data: dict[str, str], htmx: bool) -> None:
    headers = {"HX-Request": "true"} if htmx else {}

    response = client.post("/dispatch", data=data, headers=headers)

    assert seen(response) in FORM_STATUSES, describe(response)




@pytest.mark.parametrize("field", ["args", "kwargs"])
def test_dispatch_form_with_a_5000_digit_number_is_a_422(client: FlaskClient, field: str) -> None:
    number = "7" * 5000  # more digits than Python converts (int_max_str_digits): once a 500
    text = f"[{number}]" if field == "args" else f'{{"n": {number}}}'

    response = client.post("/dispatch", data={"form_id": "dispatch-raw", "name": "worker.tasks.x", field: text},
                           headers={"HX-Request": "true"})

    assert response.status_code == 422, describe(response)
    assert b"too long" in response.data


@pytest.mark.timeout(20)
@pytest.mark.parametrize("where", ["option", "field", "kwarg"])
def test_a_huge_unknown_name_is_refused_briefly(client: FlaskClient, where: str) -> None:
    huge = "a" * 200_000  # once: the 400 echoed it and masking it took minutes, holding the GIL
    body: dict[str, Any] = {"name": "worker.tasks.x", "force": True}
    if where == "option":
        body["options"] = {huge: 1}
    elif where == "field":
        body[huge] = 1
    else:
        body["kwargs"] = {huge + "-not-an-identifier": 1, "x-" * 1000: 2}

    response = client.post("/api/dispatch", json=body)

    assert response.status_code == 400, describe(response)
    assert len(response.data) < 2000, "the message echoes a short prefix of the name, never all of it"


@pytest.mark.parametrize("countdown", [1e12, -1e12, 1e300, 2**63, -(10**20)])
def test_api_dispatch_huge_countdown_is_a_400(client: FlaskClient, countdown: float) -> None:
    body = {"name": "worker.tasks.llm.summarize_note", "kwargs": {"note_id": "n"}, "options": {"countdown": countdown}}

    response = client.post("/api/dispatch", json=body)

    assert response.status_code == 400, describe(response)
    assert "options.countdown" in response.get_json()["fields"]


@pytest.mark.parametrize("countdown", ["1e12", "-1e12", "9" * 40])
def test_dispatch_form_huge_countdown_is_a_422(client: FlaskClient, countdown: str) -> None:
    response = client.post("/dispatch", data={"form_id": "dispatch-raw", "name": "worker.tasks.x",
                                              "opt.countdown": countdown}, headers={"HX-Request": "true"})

    assert response.status_code == 422, describe(response)


# --- GET filters and previews ------------------------------------------------------------------------------

filter_keys = (st.sampled_from(["state", "name", "queue", "worker", "limit", "offset", "view", "x"])
               | st.text(max_size=8))
filter_values = (st.text(max_size=300) | st.integers(min_value=-(10**30), max_value=10**30).map(str)
                 | st.sampled_from(["SUCCESS", "failure", "", " ", "1e3", "nan", "-0", "٣", "²"]))
query_params = st.lists(st.tuples(filter_keys, filter_values), max_size=6)


@FUZZ
@given(params=query_params)
@example(params=[("limit", "٣")])  # int() takes Unicode digits
@example(params=[("offset", "9" * 5000)])  # int() refuses more than 4300 digits (ValueError)
def test_task_filters_never_5xx(client: FlaskClient, params: list[tuple[str, str]]) -> None:
    for path in ("/api/tasks", "/tasks"):
        response = client.get(path, query_string=params)

        assert seen(response) in FILTER_STATUSES, f"{path}: {describe(response)}"


@FUZZ
@given(params=st.lists(st.tuples(st.sampled_from(["form_id", "name", "opt.queue"]) | st.text(max_size=8),
                                  st.text(max_size=60) | form_ids), max_size=4))
def test_route_preview_never_5xx(client: FlaskClient, params: list[tuple[str, str]]) -> None:
    response = client.get("/dispatch/preview", query_string=params)

    assert seen(response) == 200, describe(response)


@FUZZ
@given(task_id=st.text(min_size=1, max_size=300).filter(lambda t: "/" not in t and t not in (".", "..")))
def test_task_pages_never_5xx(client: FlaskClient, task_id: str) -> None:
    for path in (f"/tasks/{task_id}", f"/api/tasks/{task_id}"):
        response = client.get(path)

        assert seen(response) in (200, 404), f"{path!r}: {describe(response)}"

