"""The routing comparison and its alerts, live: `dispatch-dashboard serve` as a subprocess, a redis-server and stub
`celery worker`s of this module's own (the session's stub worker consumes every stub queue, which would hide an
orphaned one), the JSON API and /ws/events.

The cluster: worker "partial" consumes stt and default only, so the config's route of worker.tasks.llm.* to "llm"
is orphaned; worker "fixer" consumes an idle queue nothing routes to, and is the one told to consume "llm" when the
alert is fixed, then SIGKILLed to lose that queue's last consumer. The tests run in file order and share the
cluster: each waits for the state it needs instead of assuming the previous test left it.

Every wait has a deadline. Measured times are printed (run with `-s`); bounds are asserted after a wider deadline,
so a slow run fails with the time it actually took.
"""

from __future__ import annotations

import functools
import json
import time
import tomllib
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from simple_websocket import Client, ConnectionClosed

from dashboard.services.processes import CeleryWorker, ProcessError, RedisServer
from tests.support.http import Reply, WebSocketClient, call, get
from tests.support.live_server import (
    EXAMPLE_CONFIG,
    HOST,
    REPO_ROOT,
    TEST_MONITOR,
    LiveServer,
    LiveServerError,
    dashboard_config,
    start_live_server,
)
from tests.support.waits import wait_until

TRANSCRIBE = "worker.tasks.stt.transcribe"
SUMMARIZE_NOTE = "worker.tasks.llm.summarize_note"
TRANSLATE = "worker.tasks.llm.translate"  # the example config's deliberate mismatch, left out here
TYPO = "worker.tasks.llm.sumarize_note"  # one "m" short: no worker registers it
SPARE_QUEUE = "routing-spare"  # the fixer's idle queue: consumed, routed to by nothing
DRIFT_QUEUE = "llm-other"

GRACE = TEST_MONITOR["alert_grace"]
READY_DEADLINE = 15.0  # workers online and inspected, a first comparison made
ALERT_BOUND = GRACE + 10.0  # condition -> alert on the stream: grace, inspection every 0.5 s, slack
ALERT_DEADLINE = ALERT_BOUND + 5.0
CLEAR_DEADLINE = 15.0
TASK_DEADLINE = 15.0
LOST_CONSUMER_BOUND = 4.0 + GRACE + 10.0  # heartbeat expiry (2 x 2 s) + grace + slack
LOST_CONSUMER_DEADLINE = LOST_CONSUMER_BOUND + 5.0



# -- HTTP --------------------------------------------------------------------------------------------------------


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metric_samples(server: LiveServer) -> Samples:
    """GET /metrics, parsed: {(sample name, sorted labels): value}."""
    reply = call(server, "GET", "/metrics")
    assert reply.status == 200, reply
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(reply.text) for sample in family.samples}


def task_row(server: LiveServer, name: str) -> dict[str, Any] | None:
    """The /api/routing row of task `name`, if the comparison has one."""
    return next((row for row in get(server, "/api/routing")["tasks"] if row["task"] == name), None)


def queue_row(server: LiveServer, name: str) -> dict[str, Any] | None:
    """The /api/routing row of queue `name`, if the comparison has one."""
    return next((row for row in get(server, "/api/routing")["queues"] if row["name"] == name), None)


def active_alert(server: LiveServer, key: str) -> dict[str, Any] | None:
    """The active alert with `key` in /api/alerts."""
    return next((alert for alert in get(server, "/api/alerts") if alert["key"] == key), None)


def consumers_of(server: LiveServer, queue: str) -> list[str] | None:
    """The online consumers /api/routing lists for `queue` (None while the queue has no row)."""
    row = queue_row(server, queue)
    return row["consumers"] if row is not None else None


def dispatch(server: LiveServer, name: str, kwargs: Mapping[str, Any], *, force: bool = False,
             options: Mapping[str, Any] | None = None) -> Reply:
    """POST /api/dispatch."""
    body: dict[str, Any] = {"name": name, "kwargs": dict(kwargs)}
    if options:
        body["options"] = dict(options)
    if force:
        body["force"] = True
    return call(server, "POST", "/api/dispatch", body)


def add_consumer(server: LiveServer, queue: str, worker: Any) -> Reply:
    """POST /api/queues/<queue>/consumers {"worker": worker}."""
    return call(server, "POST", f"/api/queues/{queue}/consumers", {"worker": worker})


# -- /ws/events ----------------------------------------------------------------------------------------------


@dataclass
class AlertStream:
    """A /ws/events client that keeps every "alert" message (with its arrival time) and skips the rest."""

    server: LiveServer
    ws: Client
    alerts: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    snapshot: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, server: LiveServer) -> AlertStream:
        """Connect and read the snapshot every connection starts with."""
        stream = cls(server, WebSocketClient.connect(f"ws://{HOST}:{server.port}/ws/events?tasks=0"))
        first = stream._next(5.0, "the snapshot message")
        assert first["type"] == "snapshot", first
        stream.snapshot = first
        return stream

    def _next(self, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = "\n".join(json.dumps(message)[:400] for _at, message in self.alerts[-5:]) or "(none)"
                pytest.fail(f"no {what} on /ws/events within {timeout:.1f} s; last alert messages:\n{seen}\n"
                            f"--- server log ---\n{self.server.log_tail(30)}", pytrace=False)
            try:
                raw = self.ws.receive(timeout=remaining)
            except ConnectionClosed:
                pytest.fail(f"/ws/events closed while waiting for {what}", pytrace=False)
            if raw is None:
                continue
            message: dict[str, Any] = json.loads(raw)
            if message.get("type") == "alert":
                self.alerts.append((time.monotonic(), message))
            return message

    def wait_alert(self, key: str, status: str, timeout: float) -> tuple[float, dict[str, Any]]:
        """The first alert message for `key` with `status` (already received, or the next), and when it came."""
        found = self._find(key, status)
        while found is None:
            self._next(timeout, f'"alert" message {status!r} for {key!r}')
            found = self._find(key, status)
        return found

    def _find(self, key: str, status: str) -> tuple[float, dict[str, Any]] | None:
        return next(((at, m) for at, m in self.alerts if m["key"] == key and m["status"] == status), None)

    def close(self) -> None:
        """Close the connection."""
        self.ws.close()


@pytest.fixture
def alert_stream(cluster: Cluster) -> Iterator[AlertStream]:
    """A /ws/events connection to the cluster's dashboard, snapshot read; closed after the test."""
    stream = AlertStream.open(cluster.server)
    try:
        yield stream
    finally:
        stream.close()


# -- the cluster ---------------------------------------------------------------------------------------------


def config_without_translate() -> dict[str, Any]:
    """examples/dispatch.toml without its deliberate mismatch (the translate route and catalog entry)."""
    base = tomllib.loads(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    del base["routes"][TRANSLATE]
    del base["tasks"][TRANSLATE]
    return base


@dataclass
class Cluster:
    """This module's Redis, its two workers, the dashboard on them and where their logs go."""

    redis: RedisServer
    partial: CeleryWorker  # consumes stt and default: nothing consumes "llm"
    fixer: CeleryWorker  # consumes SPARE_QUEUE; told to consume "llm" later, then SIGKILLed
    server: LiveServer
    directory: Path

    def worker(self, name: str, queues: tuple[str, ...], routes: Mapping[str, str] | None = None) -> CeleryWorker:
        """A stub worker on this cluster's Redis (not started)."""
        return stub_worker_on(self.redis, self.directory, name, queues, routes)


def stub_worker_on(redis: RedisServer, directory: Path, name: str, queues: tuple[str, ...],
                   routes: Mapping[str, str] | None = None) -> CeleryWorker:
    """A stub worker (threads pool, the repository on its path) on `redis`, logging to `directory` (not started)."""
    return CeleryWorker(redis.url(0), backend_url=redis.url(1), name=name, queues=queues, routes=routes,
                        log_path=directory / f"worker-{name}.log", cwd=REPO_ROOT, pythonpath=[REPO_ROOT])


def _inspected(server: LiveServer, hosts: list[str]) -> bool:
    """Both workers online, inspected (they register the stub's names) and compared."""
    body = get(server, "/api/routing")
    row = next((r for r in body["tasks"] if r["task"] == SUMMARIZE_NOTE), None)
    return body["compared_at"] is not None and row is not None and sorted(row["registered_on"]) == hosts


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Own redis-server, workers "partial" (stt, default) and "fixer" (an idle queue), and a dashboard on them."""
    directory = tmp_path_factory.mktemp("routing-live")
    redis = RedisServer(directory=directory / "redis", log_path=directory / "redis.log")
    workers: list[CeleryWorker] = []
    server: LiveServer | None = None
    try:
        redis.start()
        workers = [stub_worker_on(redis, directory, "routing-partial", ("stt", "default")),
                   stub_worker_on(redis, directory, "routing-fixer", (SPARE_QUEUE,))]
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=len(workers)) as pool:  # each start waits ~2 s for a ping answer
            for future in [pool.submit(worker.start) for worker in workers]:
                future.result()
        server = start_live_server(dashboard_config(redis.url(0), redis.url(1), base=config_without_translate()),
                                   directory, name="dashboard-routing")
        hosts = sorted(worker.hostname for worker in workers)
        wait_until(lambda: _inspected(server, hosts), READY_DEADLINE, "first comparison with both workers", server)
        print(f"\n[routing] cluster (redis, 2 workers, dashboard) ready in {time.monotonic() - started:.2f} s")
        yield Cluster(redis, workers[0], workers[1], server, directory)
    except (ProcessError, LiveServerError) as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        if server is not None:
            server.stop()
        for worker in workers:
            worker.stop()
        redis.stop()


# -- the tests -----------------------------------------------------------------------------------------------


def test_route_to_a_queue_nobody_consumes_is_orphaned(cluster: Cluster) -> None:
    server, partial, fixer = cluster.server, cluster.partial, cluster.fixer
    body = get(server, "/api/routing")
    assert body["consistent"] is False and body["default_queue"] == "default"
    assert body["inspect_error"] is None and body["broker_error"] is None

    row = task_row(server, SUMMARIZE_NOTE)
    assert row is not None
    assert (row["api_queue"], row["api_pattern"], row["api_source"]) == ("llm", "worker.tasks.llm.*", "route")
    assert row["consumers"] == []
    assert row["registered_on"] == sorted([partial.hostname, fixer.hostname])
    assert (row["status"], row["problems"]) == ("orphaned", ["orphaned"])
    assert "'llm'" in row["explanations"][0]
    assert row["worker_route"] == "llm" and row["drifting_workers"] == {}

    transcribe = task_row(server, TRANSCRIBE)
    assert transcribe is not None
    assert (transcribe["api_queue"], transcribe["status"], transcribe["problems"]) == ("stt", "ok", [])
    assert transcribe["consumers"] == [partial.hostname]

    queues = {q["name"]: q for q in body["queues"]}
    llm = queues["llm"]
    assert (llm["depth"], llm["consumers"], llm["status"], llm["has_consumers"]) == (0, [], "ok", False)
    assert SUMMARIZE_NOTE in llm["routed_tasks"] and all(t.startswith("worker.tasks.llm.") for t in llm["routed_tasks"])
    assert llm["note"] and "no consumer" in llm["note"]
    assert (queues["stt"]["consumers"], queues["stt"]["status"]) == ([partial.hostname], "ok")
    assert TRANSCRIBE in queues["stt"]["routed_tasks"]
    assert queues["default"]["is_default"] and queues["default"]["consumers"] == [partial.hostname]
    spare = queues[SPARE_QUEUE]
    assert (spare["status"], spare["consumers"], spare["routed_tasks"]) == ("unrouted", [fixer.hostname], [])
    # Routed and unconsumed, but empty: a row status of "ok" and no alert until something waits there.
    assert active_alert(server, "orphaned_queue:llm") is None


def test_typo_sent_by_force_is_unregistered_and_alerts(cluster: Cluster, alert_stream: AlertStream) -> None:
    server = cluster.server
    body = {"note_id": "typo"}
    refused = dispatch(server, TYPO, body, options={"queue": "default"})
    assert refused.status == 409, refused
    assert refused.data["queue"] == "default"
    assert len(refused.data["warnings"]) == 1 and "registers this task name" in refused.data["warnings"][0]

    sent_at = time.monotonic()
    forced = dispatch(server, TYPO, body, force=True, options={"queue": "default"})  # consumed, then discarded
    assert forced.status == 202 and forced.data["queue"] == "default", forced
    key = f"unregistered_task:{TYPO}"
    at, raised = alert_stream.wait_alert(key, "raised", ALERT_DEADLINE)
    elapsed = at - sent_at
    print(f"\n[routing] forced typo -> unregistered_task raised on /ws/events in {elapsed:.2f} s")
    assert elapsed <= ALERT_BOUND
    assert (raised["kind"], raised["task"], raised["queue"]) == ("unregistered_task", TYPO, "llm")
    assert TYPO in raised["message"] and raised["since"] <= time.time()

    alert = active_alert(server, key)
    assert alert is not None and alert["kind"] == "unregistered_task" and alert["task"] == TYPO
    late = AlertStream.open(server)  # a client connecting now gets the active alert in its snapshot
    try:
        assert key in [active["key"] for active in late.snapshot["alerts"]]
    finally:
        late.close()
    row = task_row(server, TYPO)
    assert row is not None
    assert (row["status"], row["sent"], row["registered_on"], row["api_queue"]) == ("unregistered", True, [], "llm")
    # The worker that received it discards it: the NotRegistered failure names it in the alert's message.
    task_id = forced.data["task_id"]
    wait_until(lambda: get(server, f"/api/tasks/{task_id}")["state"] == "FAILURE", TASK_DEADLINE,
               "FAILURE of the typo'd task", server)
    wait_until(lambda: "NotRegistered" in ((active_alert(server, key) or {}).get("message") or ""), CLEAR_DEADLINE,
               "the alert's message updated to the NotRegistered rejection", server)


def test_worker_with_its_own_route_drifts_from_the_api(cluster: Cluster, alert_stream: AlertStream) -> None:
    server = cluster.server
    drifter = cluster.worker("routing-drift", (DRIFT_QUEUE,), routes={"worker.tasks.llm.*": DRIFT_QUEUE})
    key = f"route_drift:{SUMMARIZE_NOTE}"
    started = time.monotonic()
    try:
        drifter.start()
        at, raised = alert_stream.wait_alert(key, "raised", ALERT_DEADLINE + 10)  # the worker's start counts too
        print(f"\n[routing] drifting worker started -> route_drift raised in {at - started:.2f} s "
              f"(worker start included)")
        assert (raised["kind"], raised["task"], raised["queue"]) == ("route_drift", SUMMARIZE_NOTE, "llm")
        assert repr(DRIFT_QUEUE) in raised["message"] and drifter.hostname in raised["message"]

        row = task_row(server, SUMMARIZE_NOTE)
        assert row is not None
        assert "drift" in row["problems"] or row["status"] == "drift"
        assert row["drifting_workers"] == {DRIFT_QUEUE: [drifter.hostname]}
        assert row["worker_routes"].get(DRIFT_QUEUE) == 1
        assert any(repr(DRIFT_QUEUE) in text for text in row["explanations"])
        assert active_alert(server, key) is not None
    finally:
        stopping = time.monotonic()
        drifter.stop()  # warm shutdown: worker-offline, and the drift is gone at the next comparison
    at, _cleared = alert_stream.wait_alert(key, "cleared", CLEAR_DEADLINE)
    print(f"[routing] drifting worker stopped -> route_drift cleared in {at - stopping:.2f} s")
    assert active_alert(server, key) is None
    row = task_row(server, SUMMARIZE_NOTE)
    assert row is not None and "drift" not in row["problems"]


def test_forced_dispatch_to_orphaned_queue_alerts_until_a_consumer_is_added(
    cluster: Cluster, alert_stream: AlertStream
) -> None:
    server, fixer = cluster.server, cluster.fixer
    wait_until(lambda: consumers_of(server, "llm") == [], READY_DEADLINE, "'llm' without consumers", server)
    kwargs = {"note_id": "orphan-1", "max_words": 5}

    refused = dispatch(server, SUMMARIZE_NOTE, kwargs)
    assert refused.status == 409, refused
    assert refused.data["queue"] == "llm" and '"force": true' in refused.data["error"]
    assert len(refused.data["warnings"]) == 1 and "consumes queue 'llm'" in refused.data["warnings"][0]

    sent_at = time.monotonic()
    forced = dispatch(server, SUMMARIZE_NOTE, kwargs, force=True)
    assert forced.status == 202 and forced.data["queue"] == "llm", forced
    task_id = forced.data["task_id"]
    key = "orphaned_queue:llm"
    at, raised = alert_stream.wait_alert(key, "raised", ALERT_DEADLINE)
    elapsed = at - sent_at
    print(f"\n[routing] forced dispatch -> orphaned_queue raised on /ws/events in {elapsed:.2f} s "
          f"(grace {GRACE:g} s)")
    assert elapsed <= ALERT_BOUND
    assert (raised["kind"], raised["queue"]) == ("orphaned_queue", "llm") and raised["depth"] >= 1
    assert "'llm'" in raised["message"]
    alert = active_alert(server, key)
    assert alert is not None and alert["depth"] >= 1 and alert["queue"] == "llm"
    llm = queue_row(server, "llm")
    assert llm is not None and llm["status"] == "orphaned" and llm["depth"] >= 1
    # One more waiting message: the same alert is "updated" with the new depth, not raised again.
    second = dispatch(server, SUMMARIZE_NOTE, {**kwargs, "note_id": "orphan-2"}, force=True)
    assert second.status == 202, second
    _at, updated = alert_stream.wait_alert(key, "updated", ALERT_DEADLINE)
    assert updated["depth"] == raised["depth"] + 1 and updated["since"] == raised["since"]
    assert [m["status"] for _at, m in alert_stream.alerts if m["key"] == key] == ["raised", "updated"]

    # The same picture in /metrics, for Prometheus alerting rules.
    llm_label = (("queue", "llm"),)

    def orphan_metrics() -> Samples | None:
        samples = metric_samples(server)
        return samples if samples.get(("dispatch_dashboard_queue_depth", llm_label)) == updated["depth"] else None

    samples: Samples = wait_until(orphan_metrics, ALERT_DEADLINE, "the orphaned depth in /metrics", server)
    assert samples[("dispatch_dashboard_queue_consumers", llm_label)] == 0
    assert samples[("dispatch_dashboard_orphaned_queues", ())] >= 1
    assert samples[("dispatch_dashboard_alerts", (("kind", "orphaned_queue"),))] >= 1
    assert samples[("dispatch_dashboard_routing_consistent", ())] == 0
    assert samples[("dispatch_dashboard_dispatches_total", (("outcome", "sent"),))] >= 2
    assert samples[("dispatch_dashboard_dispatches_total", (("outcome", "refused"),))] >= 1

    path = "/api/queues/llm/consumers"
    for bad in (call(server, "POST", path), call(server, "POST", path, raw=b"{not json"),
                call(server, "POST", path, {"host": fixer.hostname}), add_consumer(server, "llm", 5)):
        assert bad.status == 400 and "worker" in bad.data["error"], bad
    unknown = add_consumer(server, "llm", "nobody@nowhere")
    assert unknown.status == 400 and "not online" in unknown.data["error"], unknown

    fixing = time.monotonic()
    fixed = add_consumer(server, "llm", fixer.hostname)
    assert fixed.status == 200 and fixer.hostname in fixed.data["ok"], fixed
    at, cleared = alert_stream.wait_alert(key, "cleared", CLEAR_DEADLINE)
    print(f"[routing] add_consumer -> orphaned_queue cleared on /ws/events in {at - fixing:.2f} s")
    assert cleared["queue"] == "llm" and cleared["cleared_at"] >= cleared["raised_at"]
    assert active_alert(server, key) is None

    def succeeded(waiting: str) -> dict[str, Any] | None:
        task: dict[str, Any] = get(server, f"/api/tasks/{waiting}")
        return task if task["state"] == "SUCCESS" else None

    for waiting in (task_id, second.data["task_id"]):
        done = wait_until(functools.partial(succeeded, waiting), TASK_DEADLINE,
                          "the waiting tasks run by the new consumer", server)
        assert done["worker"] == fixer.hostname
    wait_until(lambda: (q := queue_row(server, "llm")) and q["depth"] == 0 and q["consumers"] == [fixer.hostname],
               CLEAR_DEADLINE, "'llm' drained and consumed by the fixer", server)
    drained = wait_until(
        lambda: (s := metric_samples(server)).get(("dispatch_dashboard_queue_depth", llm_label)) == 0 and s,
        CLEAR_DEADLINE, "the drained depth in /metrics", server)
    assert drained[("dispatch_dashboard_queue_consumers", llm_label)] == 1
    assert drained[("dispatch_dashboard_alerts", (("kind", "orphaned_queue"),))] == 0
    row = task_row(server, SUMMARIZE_NOTE)
    assert row is not None and row["consumers"] == [fixer.hostname]
    assert "orphaned" not in row["problems"]


def test_killing_the_only_consumer_of_a_routed_queue_alerts(cluster: Cluster, alert_stream: AlertStream) -> None:
    server, partial, fixer = cluster.server, cluster.partial, cluster.fixer
    assert add_consumer(server, "llm", fixer.hostname).status == 200  # idempotent: already done by the last test
    wait_until(lambda: consumers_of(server, "llm") == [fixer.hostname], READY_DEADLINE,
               "'llm' consumed by the fixer alone", server)
    key = "queue_lost_consumer:llm"

    killed_at = time.monotonic()
    fixer.kill()  # SIGKILL: no worker-offline event, only the heartbeats stop
    at, raised = alert_stream.wait_alert(key, "raised", LOST_CONSUMER_DEADLINE)
    elapsed = at - killed_at
    print(f"\n[routing] only consumer of 'llm' SIGKILLed -> queue_lost_consumer raised in {elapsed:.2f} s")
    assert elapsed <= LOST_CONSUMER_BOUND
    assert (raised["kind"], raised["queue"]) == ("queue_lost_consumer", "llm")
    assert "lost its last online consumer" in raised["message"]
    # Not asserted: the message's "(<host> offline)" and the row's offline_consumers. A SIGKILL that lands
    # between the inspect broadcasts leaves an answer without active_queues, and that blanks what the worker
    # consumed (the bug test_one_unanswered_inspect_question_keeps_what_the_worker_consumes shows).
    assert active_alert(server, key) is not None
    llm = queue_row(server, "llm")
    assert llm is not None and llm["consumers"] == []
    # Its idle queue lost its consumer too, but nothing is routed there: nothing to alert about.
    assert active_alert(server, f"queue_lost_consumer:{SPARE_QUEUE}") is None

    offline = add_consumer(server, "llm", fixer.hostname)
    assert offline.status == 400 and "not online" in offline.data["error"], offline

    fixing = time.monotonic()
    assert add_consumer(server, "llm", partial.hostname).status == 200
    at, _cleared = alert_stream.wait_alert(key, "cleared", CLEAR_DEADLINE)
    print(f"[routing] add_consumer on the surviving worker -> queue_lost_consumer cleared in {at - fixing:.2f} s")
    assert active_alert(server, key) is None


# -- a worker that leaves one inspect question unanswered ------------------------------------------------------

# `celery -A <this module>`: the stub's app, with the active_queues control command answering an error while the
# flag file exists. An error answer takes the same path as a reply that misses the inspect timeout (a busy or
# dying worker): that question is None in the worker's report while the others are answered.
FLAKY_APP_MODULE = """
import pathlib

from celery.worker import control

from worker_stub import app

FLAG = pathlib.Path({flag!r})
_answer = control.Panel.data["active_queues"]


def active_queues(state, **kwargs):
    if FLAG.exists():
        raise RuntimeError("active_queues left unanswered on purpose (test)")
    return _answer(state, **kwargs)


control.Panel.data["active_queues"] = active_queues  # the worker's pidbox dispatches through this dict
"""


def test_one_unanswered_inspect_question_keeps_what_the_worker_consumes(tmp_path: Path) -> None:
    flag = tmp_path / "leave-active-queues-unanswered"
    (tmp_path / "routing_flaky_stub.py").write_text(FLAKY_APP_MODULE.format(flag=str(flag)), encoding="utf-8")
    redis = RedisServer(directory=tmp_path / "redis", log_path=tmp_path / "redis.log")
    worker = CeleryWorker(redis.url(0), backend_url=redis.url(1), name="routing-flaky",
                          queues=("stt", "llm", "default"), app="routing_flaky_stub",
                          log_path=tmp_path / "worker-flaky.log", cwd=REPO_ROOT, pythonpath=[tmp_path, REPO_ROOT])
    server: LiveServer | None = None
    try:
        redis.start()
        worker.start()
        server = start_live_server(dashboard_config(redis.url(0), redis.url(1), base=config_without_translate()),
                                   tmp_path, name="dashboard-flaky")
    except (ProcessError, LiveServerError) as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        host = worker.hostname
        wait_until(lambda: consumers_of(server, "llm") == [host], READY_DEADLINE, "'llm' consumed by the worker",
                   server)
        flag.touch()
        refused_since = time.time()
        wait_until(lambda: "active_queues left unanswered" in worker.log_path.read_text(errors="replace"),
                   READY_DEADLINE, "an active_queues question left unanswered (worker log)", server)
        # Inspections go on every 0.5 s: wait past the grace period with several partial answers in.
        wait_until(lambda: (get(server, "/api/routing")["inspected_at"] or 0) > refused_since + GRACE + 1.0,
                   READY_DEADLINE, "inspections after the grace period", server)
        assert [w["status"] for w in get(server, "/api/workers")["workers"] if w["hostname"] == host] == ["online"]
        assert consumers_of(server, "llm") == [host]
        row = task_row(server, SUMMARIZE_NOTE)
        assert row is not None and row["status"] == "ok", row
        assert [alert["key"] for alert in get(server, "/api/alerts")] == []
        assert dispatch(server, SUMMARIZE_NOTE, {"note_id": "still-consumed"}).status == 202
    finally:
        if server is not None:
            server.stop()
        worker.stop()
        redis.stop()
