"""Alert webhooks end to end: `dispatch-dashboard serve` on a redis-server and a stub `celery worker` of this
module's own, posting to a real local HTTP receiver.

A forced dispatch to a queue no worker consumes raises a real orphaned_queue alert; adding the worker as its
consumer clears it. Three webhooks hear it: "ok" (signed, raised and cleared), "flaky" (answers 500 once, then
200) and "hang" (never answers until released, 1 s timeout): the hanging one must delay nothing else, and its
failure shows in /api/status, on the alerts page and in /metrics.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dashboard.services.processes import CeleryWorker, ProcessError, RedisServer
from tests.support.http import call, get
from tests.support.live_server import (
    EXAMPLE_CONFIG,
    REPO_ROOT,
    LiveServer,
    LiveServerError,
    dashboard_config,
    start_live_server,
)
from tests.support.waits import wait_for, wait_until
from tests.support.webhook_receiver import WebhookReceiver

TRANSCRIBE = "worker.tasks.stt.transcribe"
TRANSLATE = "worker.tasks.llm.translate"  # the sample's deliberate mismatch, left out: no alert but ours
SECRET = "k3y-for-the-test"
URL_SECRET = "T000/B000/s3cr3tPath"
READY_DEADLINE = 20.0
ALERT_DEADLINE = 15.0  # grace 1 s, inspection every 0.5 s, slack for a loaded machine
HANG_TIMEOUT = 1.0


@dataclass
class Hooks:
    """This module's Redis, worker, receiver and dashboard."""

    redis: RedisServer
    worker: CeleryWorker
    receiver: WebhookReceiver
    server: LiveServer


def _config(redis: RedisServer, receiver: WebhookReceiver) -> dict[str, Any]:
    base = tomllib.loads(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    del base["routes"][TRANSLATE]
    del base["tasks"][TRANSLATE]
    kinds = ["orphaned_queue"]
    return dashboard_config(redis.url(0), redis.url(1), base=base, alerts={
        "dashboard_url": "https://dash.example.com",
        "webhooks": [
            {"name": "ok", "url": f"{receiver.url}/ok/{URL_SECRET}", "events": ["raised", "cleared"], "kinds": kinds,
             "secret": SECRET},
            {"name": "flaky", "url": f"{receiver.url}/flaky", "events": ["raised"], "kinds": kinds,
             "max_attempts": 3},
            {"name": "hang", "url": f"{receiver.url}/hang", "events": ["raised"], "kinds": kinds,
             "timeout": HANG_TIMEOUT, "max_attempts": 2},
        ]})


@pytest.fixture(scope="module")
def hooks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hooks]:
    directory = tmp_path_factory.mktemp("alert-webhooks")
    redis = RedisServer(directory=directory / "redis", log_path=directory / "redis.log")
    worker = CeleryWorker(redis.url(0), backend_url=redis.url(1), name=f"hooks-{uuid.uuid4().hex[:6]}",
                          queues=("stt", "default"), log_path=directory / "worker.log", cwd=REPO_ROOT,
                          pythonpath=[REPO_ROOT])
    receiver = WebhookReceiver().start()
    receiver.hang("/hang")
    receiver.script("/flaky", [500])
    server: LiveServer | None = None
    try:
        redis.start()
        worker.start()
        server = start_live_server(_config(redis, receiver), directory, name="dashboard-hooks",
                                   env={"no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost"})
        wait_until(lambda: any(w["hostname"] == worker.hostname and w["status"] == "online"
                               for w in get(server, "/api/workers")["workers"]), READY_DEADLINE, "the worker online",
                   server)
        wait_until(lambda: get(server, "/api/routing")["compared_at"] is not None, READY_DEADLINE,
                   "a first comparison", server)
        yield Hooks(redis, worker, receiver, server)
    except (ProcessError, LiveServerError) as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        if server is not None:
            server.stop()
        receiver.stop()
        worker.stop()
        redis.stop()


def webhook(server: LiveServer, name: str) -> dict[str, Any]:
    status = get(server, "/api/status")["notifications"]
    found: dict[str, Any] = next(hook for hook in status["webhooks"] if hook["name"] == name)
    return found


def metric(server: LiveServer, name: str, **labels: str) -> float | None:
    text = call(server, "GET", "/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def test_a_real_orphaned_queue_alert_reaches_the_webhooks_and_its_clearing_too(hooks: Hooks) -> None:
    server, receiver = hooks.server, hooks.receiver
    queue = f"hooks-orphan-{uuid.uuid4().hex[:6]}"
    key = f"orphaned_queue:{queue}"
    sent = call(server, "POST", "/api/dispatch", {"name": TRANSCRIBE, "kwargs": {"audio_url": "a.wav"},
                                                  "options": {"queue": queue}, "force": True})
    assert sent.status == 202, sent.data
    started = time.monotonic()

    raised, took = wait_for(lambda: receiver.posts(f"/ok/{URL_SECRET}", "raised", key), ALERT_DEADLINE,
                            f"raised webhook for {key}", server)
    print(f"\n[webhooks] dispatch -> raised webhook in {took:.2f} s")
    post = raised[0]
    body = post.body
    assert body["kind"] == "orphaned_queue" and body["queue"] == queue and body["depth"] == 1
    assert body["event"] == "raised" and body["dashboard_url"] == "https://dash.example.com/alerts"
    assert body["text"].startswith(":rotating_light: Alert raised: orphaned queue") and queue in body["text"]
    stamp = post.headers["X-Dashboard-Timestamp"]
    expected = hmac.new(SECRET.encode(), stamp.encode() + b"." + post.raw, hashlib.sha256).hexdigest()
    assert post.headers["X-Dashboard-Signature"] == f"sha256={expected}"
    assert post.headers["Content-Type"] == "application/json"

    # The hanging receiver holds its POST meanwhile: the alert, the other webhooks and every request go on.
    assert receiver.posts("/hang", "raised", key), "the hanging webhook was not even tried"
    reply = call(server, "GET", "/api/alerts")
    assert reply.status == 200 and reply.elapsed < 1.0, reply.elapsed
    assert any(alert["key"] == key for alert in reply.json())

    # The flaky receiver answered 500 first: retried after a second, then taken.
    flaky = wait_until(lambda: len(receiver.posts("/flaky", "raised", key)) >= 2 and webhook(server, "flaky")["sent"],
                       ALERT_DEADLINE, "the flaky webhook retried", server)
    assert flaky
    hook = webhook(server, "flaky")
    assert hook["sent"] == 1 and hook["retries"] == 1 and hook["failed"] == 0 and hook["last_error"] == "HTTP 500"
    first, second = receiver.posts("/flaky", "raised", key)[:2]
    assert 0.9 <= second.at - first.at < 5.0, second.at - first.at

    # The hanging one gives up after its attempts, each cut at its timeout: a failure the status shows.
    wait_until(lambda: webhook(server, "hang")["failed"] == 1, 2 * HANG_TIMEOUT + 1 + ALERT_DEADLINE,
               "the hanging webhook given up", server)
    hang = webhook(server, "hang")
    assert hang["last_error"] == f"no answer within {HANG_TIMEOUT:g} s" and hang["pending"] == 0
    assert hang["url"] == hooks.receiver.url + "/********"
    assert len(receiver.posts("/hang", "raised", key)) == 2
    page = call(server, "GET", "/alerts").text
    assert 'id="webhook-status"' in page and "1 webhook failing" in page and "no answer within 1 s" in page
    assert URL_SECRET not in page and URL_SECRET not in call(server, "GET", "/api/status").text
    assert metric(server, "dispatch_dashboard_webhook_deliveries_total", webhook="hang", outcome="failed") == 1
    assert metric(server, "dispatch_dashboard_webhook_failing", webhook="hang") == 1
    assert metric(server, "dispatch_dashboard_webhook_retries_total", webhook="flaky") == 1

    # Fixed: the worker consumes the queue, runs the task, the alert clears, the webhook hears it.
    fixed = call(server, "POST", f"/api/queues/{queue}/consumers", {"worker": hooks.worker.hostname})
    assert fixed.status == 200, fixed.data
    cleared, took = wait_for(lambda: receiver.posts(f"/ok/{URL_SECRET}", "cleared", key), ALERT_DEADLINE,
                             f"cleared webhook for {key}", server)
    assert cleared[0].body["cleared_at"] is not None and cleared[0].body["text"].startswith(":white_check_mark:")
    assert not receiver.posts("/flaky", "cleared", key)  # it hears raised only
    assert webhook(server, "ok")["sent"] == 2 and webhook(server, "ok")["failed"] == 0
    assert metric(server, "dispatch_dashboard_webhook_deliveries_total", webhook="ok", outcome="sent") == 2
    print(f"[webhooks] whole flow {time.monotonic() - started:.2f} s")


def test_a_silenced_alert_sends_no_webhook_and_its_acknowledgement_is_shown(hooks: Hooks) -> None:
    server, receiver = hooks.server, hooks.receiver
    queue = f"hooks-silenced-{uuid.uuid4().hex[:6]}"
    key = f"orphaned_queue:{queue}"
    silenced = call(server, "POST", f"/api/alerts/{key}/silence", {"minutes": 15})  # ahead of the alert
    assert silenced.status == 200, silenced.data
    assert silenced.json()["silenced_by"] == "anonymous"

    sent = call(server, "POST", "/api/dispatch", {"name": TRANSCRIBE, "kwargs": {"audio_url": "b.wav"},
                                                  "options": {"queue": queue}, "force": True})
    assert sent.status == 202, sent.data
    alert = wait_until(lambda: next((a for a in get(server, "/api/alerts") if a["key"] == key), None),
                       ALERT_DEADLINE, f"the alert {key}", server)
    assert alert["silenced_by"] == "anonymous" and alert["acknowledged_by"] is None

    acked = call(server, "POST", f"/api/alerts/{key}/ack")
    assert acked.status == 200 and acked.json()["acknowledged_by"] == "anonymous"
    alert = next(a for a in get(server, "/api/alerts") if a["key"] == key)
    assert alert["acknowledged_at"] is not None and alert["silenced_until"] > time.time() + 14 * 60

    time.sleep(1.5)  # a webhook, had one been queued, would have reached the local receiver by now
    assert not receiver.posts(f"/ok/{URL_SECRET}", key=key) and not receiver.posts("/flaky", key=key)
    assert get(server, "/api/status")["notifications"]["suppressed"] >= 1

    assert call(server, "DELETE", f"/api/alerts/{key}/silence").status == 200
    fixed = call(server, "POST", f"/api/queues/{queue}/consumers", {"worker": hooks.worker.hostname})
    assert fixed.status == 200, fixed.data
    wait_until(lambda: receiver.posts(f"/ok/{URL_SECRET}", "cleared", key), ALERT_DEADLINE,
               f"the cleared webhook once unsilenced ({key})", server)
    actions = get(server, f"/api/audit/actions?target={key}")["entries"]
    assert sorted(entry["action"] for entry in actions) == ["alert.ack", "alert.silence", "alert.unsilence"]
    assert all(entry["outcome"] == "done" for entry in actions)


def test_acknowledgements_and_silences_are_shared_by_replicas_through_redis(redis_server: RedisServer) -> None:
    from dashboard.model.alerts import Alert, AlertChange
    from dashboard.services.alert_marks import AlertMarks
    from dashboard.services.events.hub import Hub

    url = redis_server.url(5)
    one, two = AlertMarks(Hub(), url), AlertMarks(Hub(), "amqp://guest@127.0.0.1:1//", url)
    try:
        assert one.shared and two.shared
        alert = Alert("orphaned_queue", "orphaned_queue:shared", "shared", None, 1, time.time() - 5, time.time() - 1,
                      time.time() - 1, "waiting")
        one.acknowledge(alert, "ops")
        one.silence(alert.key, "ana", 60)
        two.refresh()
        assert two.mark(alert).acknowledged_by == "ops" and two.mark(alert).silenced_by == "ana"
        two.unsilence(alert.key)
        one.refresh()
        assert one.silenced(alert.key) is None and one.mark(alert).acknowledged
        restarted = AlertMarks(Hub(), url)  # a replica started while the alert holds
        restarted.refresh()
        assert restarted.mark(alert).acknowledged_by == "ops"
        restarted.close()

        two.note_change(AlertChange("cleared", alert))  # the occurrence ended: its acknowledgement with it
        one.refresh()
        assert not one.mark(alert).acknowledged
    finally:
        for marks in (one, two):
            marks.close()
