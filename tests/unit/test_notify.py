"""Alert notifications without sockets: which change goes to which webhook, the payload, the retry schedule, the
signature, acknowledgements and silences against an injected clock, the [alerts] config, and the notifier's lanes
with a recording `post` in place of HTTP."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest

from dashboard.config import config_from_mapping
from dashboard.exceptions import ConfigError
from dashboard.model.alerts import Alert, AlertChange
from dashboard.model.notify import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Acknowledgement,
    MarkInvalid,
    Silence,
    WebhookSpec,
    encode,
    hooks_for,
    mark_of,
    payload,
    request_headers,
    retry_delays,
    retryable,
    silence_for,
)
from dashboard.model.secrets import mask_endpoint
from dashboard.services.alert_marks import AlertMarks
from dashboard.services.events.hub import Hub
from dashboard.services.notify import AlertNotifier, Delivery, WebhookLane

T0 = 1_700_000_000.0
SLACK = "https://hooks.slack.com/services/T000/B000/s3cr3tToken"


def alert(key: str = "orphaned_queue:llm", *, raised_at: float = T0, depth: int | None = 3,
          message: str = "3 message(s) waiting in 'llm' and no online worker consumes it.") -> Alert:
    kind, _, subject = key.partition(":")
    queue = subject if kind in ("orphaned_queue", "queue_lost_consumer") else None
    task = None if queue else subject
    return Alert(kind, key, queue, task, depth, raised_at - 30, raised_at, raised_at, message)  # type: ignore[arg-type]


def change(status: str, key: str = "orphaned_queue:llm", **fields: Any) -> AlertChange:
    return AlertChange(status, alert(key, **fields))  # type: ignore[arg-type]


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- which change goes to which webhook ---------------------------------------------------------------------------

ALL = WebhookSpec("all", "https://a.example/hook", events=frozenset({"raised", "updated", "cleared"}))
RAISED_ONLY = WebhookSpec("raised", "https://b.example/hook", events=frozenset({"raised"}))
QUEUES = WebhookSpec("queues", "https://c.example/hook", events=frozenset({"raised", "cleared"}),
                     kinds=frozenset({"orphaned_queue", "queue_lost_consumer"}))
SPECS = (ALL, RAISED_ONLY, QUEUES)


@pytest.mark.parametrize(("status", "key", "expected"), [
    ("raised", "orphaned_queue:llm", ["all", "raised", "queues"]),
    ("updated", "orphaned_queue:llm", ["all"]),
    ("cleared", "orphaned_queue:llm", ["all", "queues"]),
    ("raised", "unregistered_task:billing.typo", ["all", "raised"]),
    ("cleared", "route_drift:llm.a", ["all"]),
    ("cleared", "queue_lost_consumer:stt", ["all", "queues"]),
])
def test_each_change_goes_to_the_webhooks_that_hear_its_event_and_kind(status: str, key: str,
                                                                         expected: list[str]) -> None:
    assert [spec.name for spec in hooks_for(SPECS, change(status, key))] == expected


# -- payload --------------------------------------------------------------------------------------------------------


def test_the_payload_has_slack_text_and_the_structured_facts() -> None:
    body = payload(change("raised"), "https://dash.example.com", T0 + 1)

    assert set(body) == {"text", "event", "kind", "key", "queue", "task", "depth", "message", "since", "since_iso",
                         "raised_at", "cleared_at", "dashboard_url", "sent_at"}
    assert body["event"] == "raised" and body["kind"] == "orphaned_queue" and body["queue"] == "llm"
    assert body["depth"] == 3 and body["task"] is None and body["since"] == T0 - 30
    assert body["dashboard_url"] == "https://dash.example.com/alerts"
    assert body["text"].startswith(":rotating_light: Alert raised: orphaned queue `llm`: 3 message(s)")
    assert body["text"].endswith("<https://dash.example.com/alerts|Open the dashboard>")
    assert json.loads(encode(body)) == body


def test_slack_text_escapes_what_came_from_a_task_and_says_when_a_cleared_alert_started() -> None:
    body = payload(change("cleared", "unregistered_task:x<b>&y", message="'x<b>&y' was sent"), None, T0)

    assert "x&lt;b&gt;&amp;y" in body["text"] and "<b>" not in body["text"]
    assert body["text"].startswith(":white_check_mark: Alert cleared: unregistered task")
    assert "held since 2023-11-14T22:12:50+00:00" in body["text"]
    assert body["dashboard_url"] is None and "<" not in body["text"]


# -- retries and signature ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("attempts", "base", "expected"), [
    (1, 1.0, []),
    (5, 1.0, [1.0, 2.0, 4.0, 8.0]),
    (10, 1.0, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]),
    (3, 0.5, [0.5, 1.0]),
])
def test_retries_back_off_exponentially_up_to_a_cap(attempts: int, base: float, expected: list[float]) -> None:
    assert retry_delays(attempts, base) == expected


@pytest.mark.parametrize(("status", "again"), [
    (None, True), (500, True), (502, True), (503, True), (429, True), (408, True),
    (400, False), (401, False), (403, False), (404, False), (410, False),
])
def test_only_failures_a_retry_can_fix_are_retried(status: int | None, again: bool) -> None:
    assert retryable(status) is again


def test_a_secret_signs_timestamp_and_body_with_hmac_sha256() -> None:
    spec = WebhookSpec("signed", "https://a.example/hook", headers=(("Authorization", "Bearer t"),), secret="k3y")
    body = encode(payload(change("raised"), None, T0))

    headers = request_headers(spec, body, T0)

    assert headers["Authorization"] == "Bearer t" and headers["Content-Type"] == "application/json"
    assert headers[TIMESTAMP_HEADER] == str(int(T0))
    expected = hmac.new(b"k3y", f"{int(T0)}.".encode() + body, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == f"sha256={expected}"
    assert SIGNATURE_HEADER not in request_headers(ALL, body, T0)


# -- acknowledgements and silences ----------------------------------------------------------------------------------


def test_an_acknowledgement_belongs_to_the_occurrence_it_was_made_for() -> None:
    clock, hub = Clock(), Hub()
    marks = AlertMarks(hub, clock=clock)
    first = alert(raised_at=T0 - 60)
    marks.acknowledge(first, "ops")
    marks.silence(first.key, "ops", 60)

    marks.note_change(AlertChange("updated", first))  # still the same occurrence
    assert marks.mark(first).acknowledged_by == "ops"
    assert not marks.mark(alert("orphaned_queue:other")).acknowledged

    marks.note_change(AlertChange("cleared", first))
    again = alert(raised_at=T0 + 120)  # raised again: a new occurrence
    assert not marks.mark(again).acknowledged
    assert marks.mark(again).silenced_by == "ops"  # a silence belongs to the key, for its duration


@pytest.mark.parametrize(("now", "silenced"), [(T0, True), (T0 + 899, True), (T0 + 900, False), (T0 + 5000, False)])
def test_a_silence_holds_for_its_key_until_it_ends(now: float, silenced: bool) -> None:
    silence = silence_for("orphaned_queue:llm", "ops", 15, T0)
    mark = mark_of(alert(raised_at=T0 + 500), {}, {silence.key: silence}, now)  # any occurrence of the key
    assert mark.silenced is silenced
    assert mark.to_dict()["silenced_by"] == ("ops" if silenced else None)
    assert mark.to_dict()["silenced_until"] == (T0 + 900 if silenced else None)


@pytest.mark.parametrize("minutes", [0, -5, 10_081, 1.5, "60", True, None])
def test_a_silence_needs_a_whole_number_of_minutes_within_a_week(minutes: object) -> None:
    with pytest.raises(MarkInvalid, match="minutes"):
        silence_for("orphaned_queue:llm", "ops", minutes, T0)


def test_marks_without_redis_are_kept_by_the_process_and_expire_with_the_clock() -> None:
    clock, hub = Clock(), Hub()
    subscriber = hub.subscribe()
    marks = AlertMarks(hub, None, "amqp://guest@localhost//", clock=clock)
    active = alert(raised_at=T0 - 10)
    assert not marks.shared

    marks.acknowledge(active, "ops")
    marks.silence(active.key, "ana", 60)
    assert marks.mark(active).to_dict() == {"acknowledged_by": "ops", "acknowledged_at": T0,
                                            "silenced_by": "ana", "silenced_until": T0 + 3600}
    batch = subscriber.take(0)
    assert batch is not None and batch.get("alert") == [active.key]  # every open page redraws the banner

    clock.now = T0 + 3600
    marks.refresh()
    assert marks.silenced(active.key) is None and marks.mark(active).acknowledged
    marks.silence(active.key, "ana", 15)
    assert marks.unsilence(active.key) is not None and marks.unsilence(active.key) is None


# -- the notifier and its lanes -------------------------------------------------------------------------------------


class Receiver:
    """A `post` that answers from a script of statuses (an exception instance is raised) and records the calls."""

    def __init__(self, *answers: int | Exception) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, dict[str, Any], dict[str, str], float]] = []

    def __call__(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
        self.calls.append((url, json.loads(body), headers, timeout))
        answer = self.answers.pop(0) if self.answers else 200
        if isinstance(answer, Exception):
            raise answer
        return answer


def lane(spec: WebhookSpec, receiver: Receiver, **options: Any) -> WebhookLane:
    return WebhookLane(spec, None, lambda: None, post=receiver, clock=Clock(), retry_base=0.0, **options)


def test_a_failed_post_is_retried_until_the_receiver_takes_it() -> None:
    receiver = Receiver(500, TimeoutError("timed out"), 200)
    hook = lane(WebhookSpec("h", SLACK, timeout=2.5), receiver)

    assert hook.deliver(Delivery(change("raised"), T0)) is True

    assert len(receiver.calls) == 3 and hook.retries == 2 and hook.sent == 1 and hook.failed == 0
    assert all(call[3] == 2.5 for call in receiver.calls)
    assert hook.last_error == "no answer within 2.5 s"


def test_a_delivery_is_given_up_after_max_attempts_or_at_once_on_a_client_error() -> None:
    receiver = Receiver(503, 503, 503)
    hook = lane(WebhookSpec("h", SLACK, max_attempts=3), receiver)
    assert hook.deliver(Delivery(change("raised"), T0)) is False
    assert len(receiver.calls) == 3 and hook.failed == 1 and hook.last_error == "HTTP 503"

    gone = Receiver(404)
    hook = lane(WebhookSpec("h", SLACK, max_attempts=5), gone)
    assert hook.deliver(Delivery(change("raised"), T0)) is False
    assert len(gone.calls) == 1 and hook.failed == 1 and hook.retries == 0


def test_an_error_never_shows_the_webhook_url() -> None:
    receiver = Receiver(*(OSError(f"cannot reach {SLACK}") for _ in range(2)))
    hook = lane(WebhookSpec("h", SLACK, max_attempts=2), receiver)
    hook.deliver(Delivery(change("raised"), T0))

    assert hook.last_error is not None and "s3cr3t" not in hook.last_error
    assert "s3cr3t" not in json.dumps(hook.to_dict())
    assert hook.to_dict()["url"] == "https://hooks.slack.com/********"


def test_a_full_queue_drops_its_oldest_change() -> None:
    hook = lane(ALL, Receiver(), queue_size=2)
    for status in ("raised", "updated", "cleared"):
        hook.put(change(status))
    assert hook.pending == 2 and hook.dropped == 1


def test_the_notifier_queues_a_change_for_the_webhooks_that_hear_it_unless_the_key_is_silenced() -> None:
    clock, hub = Clock(), Hub()
    marks = AlertMarks(hub, clock=clock)
    notifier = AlertNotifier(SPECS, marks, hub, post=Receiver(), clock=clock)
    pending = {lane.spec.name: lane for lane in notifier.lanes}

    notifier.notify(change("updated"))
    assert [pending[name].pending for name in ("all", "raised", "queues")] == [1, 0, 0]

    marks.silence("orphaned_queue:llm", "ops", 15)
    notifier.notify(change("cleared"))
    notifier.notify(change("raised", "unregistered_task:x"))
    assert [pending[name].pending for name in ("all", "raised", "queues")] == [2, 1, 0]
    assert notifier.suppressed == 1

    clock.now += 15 * 60
    notifier.notify(change("cleared"))
    assert pending["queues"].pending == 1 and notifier.suppressed == 1


# -- configuration and masking --------------------------------------------------------------------------------------


def test_alerts_config_reads_webhooks_with_secrets_from_the_environment() -> None:
    config = config_from_mapping({"alerts": {
        "dashboard_url": "https://dash.example.com/",
        "webhooks": [
            {"url_env": "SLACK_URL", "events": ["raised", "cleared"], "kinds": ["orphaned_queue"]},
            {"name": "pager", "url": "https://pager.example/hook", "secret_env": "PAGER_SECRET",
             "headers": {"Authorization": "Bearer x"}, "timeout": 2, "max_attempts": 3},
            {"url": "https://pager.example/other"},
        ]}}, {"SLACK_URL": SLACK, "PAGER_SECRET": "k3y"})

    slack, pager, other = config.alerts.webhooks
    assert config.alerts.dashboard_url == "https://dash.example.com"
    assert slack.name == "hooks.slack.com" and slack.url == SLACK and slack.events == {"raised", "cleared"}
    assert slack.kinds == frozenset({"orphaned_queue"}) and pager.kinds is None and pager.secret == "k3y"
    assert pager.headers == (("Authorization", "Bearer x"),) and pager.timeout == 2.0 and pager.max_attempts == 3
    assert other.name == "pager.example" and other.events == {"raised", "cleared"}  # updated is opt-in
    assert "s3cr3t" not in repr(config) and "k3y" not in repr(pager) and "Bearer" not in repr(pager)
    assert config_from_mapping({}).alerts.webhooks == ()


@pytest.mark.parametrize(("hook", "problem"), [
    ({}, "needs url"),
    ({"url": "ftp://x.example/"}, "http\\(s\\) URL"),
    ({"url": "https://x.example/", "url_env": "X"}, "not both"),
    ({"url_env": "UNSET"}, "UNSET, which is not set"),
    ({"url": "https://x.example/", "events": ["fired"]}, "events"),
    ({"url": "https://x.example/", "kinds": ["disk_full"]}, "kinds"),
    ({"url": "https://x.example/", "headers": {"X-A": "a\nb"}}, "headers"),
    ({"url": "https://x.example/", "timeout": 0}, "timeout"),
    ({"url": "https://x.example/", "max_attempts": 11}, "max_attempts"),
    ({"url": "https://x.example/", "retries": 3}, "unknown key"),
])
def test_a_bad_webhook_is_a_one_line_error(hook: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        config_from_mapping({"alerts": {"webhooks": [hook]}}, {})


def test_a_bad_url_is_reported_masked() -> None:
    with pytest.raises(ConfigError) as raised:
        config_from_mapping({"alerts": {"webhooks": [{"url": "slack://hooks/T0/B0/s3cr3t"}]}}, {})
    assert "s3cr3t" not in str(raised.value)


@pytest.mark.parametrize(("url", "shown"), [
    (SLACK, "https://hooks.slack.com/********"),
    ("https://user:pw@pager.example:8443/", "https://pager.example:8443/********"),
    ("http://127.0.0.1:9000/", "http://127.0.0.1:9000/"),
    ("https://x.example?token=abc", "https://x.example/********"),
    ("", ""),
])
def test_webhook_urls_are_shown_without_path_query_or_credentials(url: str, shown: str) -> None:
    assert mask_endpoint(url) == shown


def test_silences_and_acks_are_stored_as_json() -> None:
    silence = Silence("k", "ops", T0, T0 + 60)
    assert silence.to_dict() == {"by": "ops", "at": T0, "until": T0 + 60}
    assert Acknowledgement("k", "ops", T0).to_dict() == {"by": "ops", "at": T0}


def test_lanes_deliver_on_their_own_threads_and_a_hanging_one_delays_neither_the_others_nor_stop() -> None:
    import threading
    import time

    released, delivered = threading.Event(), threading.Event()

    def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
        if "hang" in url:
            released.wait(10)
        else:
            delivered.set()
        return 200

    hub = Hub()
    hanging = WebhookSpec("hang", "https://hang.example/", timeout=10)
    notifier = AlertNotifier((hanging, ALL), AlertMarks(hub), hub, post=post)
    notifier.start()
    try:
        notifier.notify(change("raised"))
        assert delivered.wait(5), "the healthy webhook waited for the hanging one"
        lanes = {lane.spec.name: lane for lane in notifier.lanes}
        deadline = time.monotonic() + 5
        while lanes["all"].sent != 1 and time.monotonic() < deadline:  # counted right after post() returns
            time.sleep(0.01)
        assert lanes["all"].sent == 1 and lanes["hang"].pending == 1
    finally:
        started = time.monotonic()
        notifier.stop(timeout=0.5)
        assert time.monotonic() - started < 2.0
        released.set()
