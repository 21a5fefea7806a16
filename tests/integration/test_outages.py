"""Broker outages against real parts: a redis-server this module owns (killed and restarted), the stub worker, and
`dispatch-dashboard serve` (gunicorn gthread) on free ports.

The issue's bounds: with Redis killed and restarted the app keeps serving pages; the UI shows "broker unreachable"
within 2 s; the event stream, the worker poller and the queue depths resume within 5 s of Redis returning; a
dispatch during the outage answers 503 within 3 s (refused) or 5 s (a broker that accepts TCP and never answers);
no dispatch answered 202 is lost; a pub/sub subscriber cut for falling behind is detected, marked as a gap in the
UI and in /metrics, and resynced from the result backend.

The outage lasts DASHBOARD_OUTAGE_SECONDS (default 8, to keep CI fast); DASHBOARD_OUTAGE_SECONDS=30 reproduces
the issue's scenario exactly (the worker's own reconnect then takes longer: Celery backs off 2, 4, 6, ... s).
Every figure is printed (run with `-s`). Assertions allow SLACK on top of each bound for a busy CI machine; the
printout flags any figure beyond the issue's own bound. What is the dashboard's delay (event stream, poller,
depths, dispatch) and what is the worker's (its reconnect, then a heartbeat or a task) is measured separately.
Two tests pin bugs found here and fixed: a hung broker under a live stream stayed "live", and the worker poller
waited a whole inspect_interval after its first post-restart inspection failed on a stale pooled connection.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from dashboard.config import MonitorSettings
from dashboard.services.processes import CeleryWorker, ProcessError, RedisServer
from tests.support.http import get_json, request
from tests.support.hung_broker import HungBroker
from tests.support.live_server import (
    REPO_ROOT,
    LiveServer,
    LiveServerError,
    dashboard_config,
    start_live_server,
)
from tests.support.waits import wait_for

OUTAGE_SECONDS = float(os.environ.get("DASHBOARD_OUTAGE_SECONDS", "8"))

# The bounds, and the slack the assertions add to each for a loaded CI machine.
UNREACHABLE_BOUND = 2.0  # "broker unreachable" shown after the kill
RESUME_BOUND = 5.0  # stream, poller, depths and dispatch back after Redis answers again
REFUSED_DISPATCH_BOUND = 3.0  # POST /api/dispatch -> 503 while Redis refuses connections
HUNG_DISPATCH_BOUND = 5.0  # POST /api/dispatch -> 503 while the broker accepts TCP and never answers
BROKER_TIMEOUT = 2.0  # the configs here keep the default broker_timeout
FLAPS = 3  # kills and restarts of Redis under the dispatch loop
CONCURRENT_DISPATCHES = 100  # against a hung broker, each must answer within broker_timeout + 1 s
GAP_SHOWN_BOUND = 10.0  # a pub/sub cut shows in /metrics, /api/status and the page after the dashboard runs again
SLACK = 2.0
PAGE_BOUND = 2.0  # a page or /api/status during the outage (they read memory only)
# The worker is not the dashboard: Celery's reconnect backs off 2, 4, 6, 8, ... s (up to 30 s per wait), so the
# worker may take a while after Redis returns before it consumes and sends heartbeats again.
WORKER_RECOVERY_DEADLINE = 45.0

HTTP_TIMEOUT = 10.0  # per request; a wait on the dashboard is measured, never cut short by this
WORKER_ONLINE_DEADLINE = 20.0
TASK_DEADLINE = 20.0
STUB_QUEUES = ("stt", "llm", "default")
TRANSCRIBE = "worker.tasks.stt.transcribe"
UNFURL = "worker.tasks.link.unfurl"
SLOW = "worker.tasks.demo.slow"
PAGES = ("/", "/tasks", "/routing", "/api/status")
DURABLE = ("--appendonly", "yes", "--appendfsync", "always")  # a 202'd message survives SIGKILL
KOMBU_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")  # no global_keyprefix in these configs

# Proxy settings in the environment must not capture requests to 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# -- HTTP --------------------------------------------------------------------------------------------------------


def dispatch_body(name: str, kwargs: Mapping[str, Any], queue: str | None = None) -> dict[str, Any]:
    """A forced dispatch: the guard's 409 (no online consumer yet, e.g. right after a restart) is not under test."""
    body: dict[str, Any] = {"name": name, "kwargs": dict(kwargs), "force": True}
    if queue is not None:
        body["options"] = {"queue": queue}
    return body


def metrics(server: LiveServer) -> dict[str, float]:
    """GET /metrics, the unlabelled samples: {sample name: value}."""
    reply = request(server, "GET", "/metrics")
    assert reply.status == 200
    return {sample.name: sample.value
            for family in text_string_to_metric_families(reply.text)
            for sample in family.samples if not sample.labels}


def conn_status(html: str) -> str:
    """The connection indicator of a page: the `#conn-status` span and what it contains."""
    match = re.search(r'<span id="conn-status".*?</span>(?:\s*</span>)?', html, re.S)
    assert match is not None, html[:2000]
    return match.group(0)


def report(label: str, seconds: float, bound: float | None = None) -> None:
    """Print one measured figure, flagged when it exceeds the issue's bound."""
    verdict = "" if bound is None else (f"  (bound {bound:g} s: ok)" if seconds <= bound
                                        else f"  (bound {bound:g} s: EXCEEDED)")
    print(f"[outage] {label}: {seconds:.3f} s{verdict}")


# -- parts -------------------------------------------------------------------------------------------------------


@dataclass
class Stack:
    """A Redis this module may kill, a stub worker and a dashboard on it."""

    redis: RedisServer
    worker: CeleryWorker
    server: LiveServer


@contextlib.contextmanager
def stack(directory: Path, name: str, redis_args: tuple[str, ...]) -> Iterator[Stack]:
    """Redis (with `redis_args`), a stub worker on stt,llm,default and a dashboard, all stopped afterwards."""
    server_redis = RedisServer(directory=directory / "redis", log_path=directory / "redis.log",
                               extra_args=redis_args)
    worker = CeleryWorker(server_redis.url(0), backend_url=server_redis.url(1), name=f"{name}-{uuid.uuid4().hex[:6]}",
                          queues=STUB_QUEUES, log_path=directory / f"worker-{name}.log", cwd=REPO_ROOT,
                          pythonpath=[REPO_ROOT])
    server: LiveServer | None = None
    try:
        try:
            server_redis.start()
            worker.start()
            config = dashboard_config(server_redis.url(0), server_redis.url(1),
                                      monitor={"inspect_interval": 1, "alert_grace": 1})
            server = start_live_server(config, directory, name=f"dashboard-{name}")
        except (ProcessError, LiveServerError) as exc:
            pytest.fail(str(exc), pytrace=False)
        wait_for(lambda: get_json(server, "/api/status")["broker"] == "live", 10.0, "a live event stream", server)
        wait_for(lambda: online_since(server, worker.hostname, 0.0), WORKER_ONLINE_DEADLINE,
                 f"{worker.hostname} online", server)
        wait_for(lambda: get_json(server, "/api/routing")["inspected_at"], 10.0, "a first inspection", server)
        yield Stack(server_redis, worker, server)
    finally:
        if server is not None:
            server.stop()
        worker.stop()
        server_redis.stop()


@pytest.fixture(scope="module")
def durable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The module's own durable Redis (AOF, fsync always), worker and dashboard: killing Redis harms no one else."""
    with stack(tmp_path_factory.mktemp("outage"), "outage", DURABLE) as parts:
        yield parts


def online_since(server: LiveServer, hostname: str, since: float) -> bool:
    """Whether /api/workers shows `hostname` online with a heartbeat after `since` (wall clock)."""
    return any(w["hostname"] == hostname and w["status"] == "online" and (w["last_heartbeat"] or 0) > since
               for w in get_json(server, "/api/workers")["workers"])


def depths_current(server: LiveServer, since: float) -> bool:
    """Whether /api/routing was compared after `since`, with every queue depth a number and no broker error."""
    body = get_json(server, "/api/routing")
    return (body["broker_error"] is None and (body["compared_at"] or 0) > since and bool(body["queues"])
            and all(isinstance(queue["depth"], int) for queue in body["queues"]))


# -- 1. kill Redis, keep using the dashboard, restart it ---------------------------------------------------------


def test_outage(durable: Stack) -> None:
    server, broker = durable.server, durable.redis
    before = get_json(server, "/api/status")
    assert before["broker"] == "live"
    print(f"\n[outage] Redis SIGKILLed for {OUTAGE_SECONDS:g} s (DASHBOARD_OUTAGE_SECONDS; 30 is the issue's case)")

    killed = time.monotonic()
    broker.kill()
    _, not_live = wait_for(lambda: get_json(server, "/api/status")["broker"] != "live", 10.0,
                           "/api/status broker != live", server, interval=0.02)
    wait_for(lambda: get_json(server, "/api/status")["broker"] == "unreachable", 10.0,
             "/api/status broker == unreachable", server, interval=0.02)
    shown = conn_status(request(server, "GET", "/").text)
    unreachable_at = time.monotonic() - killed
    report("kill -> /api/status broker != live", not_live, UNREACHABLE_BOUND)
    report("kill -> /api/status 'unreachable' (+ page fetched)", unreachable_at, UNREACHABLE_BOUND)
    assert "broker unreachable" in shown, shown
    assert unreachable_at <= UNREACHABLE_BOUND + SLACK

    # Through the outage: every page answers, quickly; every dispatch is refused with a 503, quickly.
    page_times: dict[str, float] = dict.fromkeys(PAGES, 0.0)
    dispatch_times: list[float] = []
    while time.monotonic() - killed < OUTAGE_SECONDS:
        for path in PAGES:
            reply = request(server, "GET", path)
            assert reply.status == 200, (path, reply.status, reply.body[:300])
            page_times[path] = max(page_times[path], reply.elapsed)
        reply = request(server, "POST", "/api/dispatch", dispatch_body(TRANSCRIBE, {"audio_url": "https://a/b.wav"}))
        assert reply.status == 503, (reply.status, reply.body[:300])
        assert isinstance(reply.json()["error"], str)
        dispatch_times.append(reply.elapsed)
        time.sleep(0.2)
    assert get_json(server, "/api/status")["broker"] == "unreachable"
    for path, slowest in page_times.items():
        report(f"slowest GET {path} during the outage", slowest, PAGE_BOUND)
    report(f"slowest of {len(dispatch_times)} dispatches -> 503 during the outage", max(dispatch_times),
           REFUSED_DISPATCH_BOUND)
    assert max(page_times.values()) <= PAGE_BOUND + SLACK
    assert max(dispatch_times) <= REFUSED_DISPATCH_BOUND + SLACK

    inspected_before = get_json(server, "/api/routing")["inspected_at"]
    restarting = time.monotonic()
    broker.start()  # same port, same directory: the AOF is replayed
    back = time.monotonic()
    back_wall = time.time()
    report("Redis restart until it answers PING", back - restarting)

    # The dashboard's own part: everything it does by itself resumes within the bound.
    dashboard_marks: dict[str, float] = {}
    task_id: str | None = None

    def dashboard_recovered() -> bool:
        nonlocal task_id
        now = time.monotonic() - back
        if "stream live" not in dashboard_marks and get_json(server, "/api/status")["broker"] == "live":
            dashboard_marks["stream live"] = now
        if "poller inspected" not in dashboard_marks:
            inspected = get_json(server, "/api/routing")["inspected_at"]
            if inspected is not None and inspected > max(back_wall, inspected_before or 0):
                dashboard_marks["poller inspected"] = now
        if "queue depths" not in dashboard_marks and depths_current(server, back_wall):
            dashboard_marks["queue depths"] = now
        if task_id is None:
            reply = request(server, "POST", "/api/dispatch", dispatch_body(TRANSCRIBE, {"audio_url": "https://a/b.wav",
                                                                                        "language": "fr"}))
            assert reply.status in (202, 503), (reply.status, reply.body[:300])
            if reply.status == 202:
                task_id = reply.json()["task_id"]
                dashboard_marks["dispatch 202"] = time.monotonic() - back
        return len(dashboard_marks) == 4

    wait_for(dashboard_recovered, RESUME_BOUND + 10.0, f"dashboard recovery (so far: {dashboard_marks})", server)
    for what, seconds in dashboard_marks.items():
        report(f"[dashboard] Redis back -> {what}", seconds, RESUME_BOUND)
    assert max(dashboard_marks.values()) <= RESUME_BOUND + SLACK, dashboard_marks
    assert task_id is not None

    # The worker's part: Celery's own reconnect backoff decides when it consumes and sends heartbeats again.
    wait_for(lambda: online_since(server, durable.worker.hostname, back_wall), WORKER_RECOVERY_DEADLINE,
             "the worker online with a heartbeat after the restart", server, interval=0.1)
    report("[worker] Redis back -> worker online again in /api/workers", time.monotonic() - back)

    def succeeded() -> bool:
        # A 202 can come before the event stream is back: its task-sent event is then lost (pub/sub keeps
        # nothing), and the dashboard first hears of the task from the worker's events (404 until then).
        reply = request(server, "GET", f"/api/tasks/{task_id}")
        assert reply.status in (200, 404), (reply.status, reply.body[:300])
        return reply.status == 200 and reply.json()["state"] == "SUCCESS"

    wait_for(succeeded, WORKER_RECOVERY_DEADLINE, f"SUCCESS of {task_id} dispatched after the restart", server,
             interval=0.1)
    report("[worker] Redis back -> task dispatched after the restart is SUCCESS", time.monotonic() - back)
    detail = get_json(server, f"/api/tasks/{task_id}")
    assert detail["worker"] == durable.worker.hostname

    status = get_json(server, "/api/status")
    assert status["broker"] == "live" and status["gaps_total"] == before["gaps_total"] + 1
    assert status["gaps"][-1]["ended"] is not None
    samples = metrics(server)
    assert samples["dispatch_dashboard_event_stream_up"] == 1
    assert samples["dispatch_dashboard_event_stream_gaps_total"] == status["gaps_total"]


# -- 1b. the worker poller with the default inspect interval ----------------------------------------------------


def test_poller_resumes_with_the_default_inspect_interval(tmp_path: Path) -> None:
    interval = MonitorSettings().inspect_interval
    broker = RedisServer(directory=tmp_path / "redis", log_path=tmp_path / "redis.log")
    server: LiveServer | None = None
    try:
        try:
            broker.start()
            config = dashboard_config(broker.url(0), broker.url(1), monitor={"inspect_interval": interval})
            server = start_live_server(config, tmp_path, name="dashboard-default-interval")
        except (ProcessError, LiveServerError) as exc:
            pytest.fail(str(exc), pytrace=False)
        live = server
        wait_for(lambda: get_json(live, "/api/routing")["inspected_at"], 10.0, "a first inspection", live)
        broker.kill()
        wait_for(lambda: get_json(live, "/api/status")["broker"] == "unreachable", 10.0, "unreachable", live)
        broker.start()
        back, back_wall = time.monotonic(), time.time()
        seen = None
        while time.monotonic() - back < RESUME_BOUND + SLACK:
            body = get_json(live, "/api/routing")
            if (body["inspected_at"] or 0) > back_wall:
                seen = time.monotonic() - back
                break
            time.sleep(0.05)
        shown = f"{seen:.3f} s" if seen is not None else f"not within {RESUME_BOUND + SLACK:g} s"
        print(f"\n[outage] inspect_interval {interval:g} s, no worker: Redis back -> poller inspected: {shown} "
              f"(last inspect_error: {body['inspect_error']!r})")
        assert seen is not None, "the worker poller did not resume within the bound"
    finally:
        if server is not None:
            server.stop()
        broker.stop()


# -- 2. no 202 is lost -------------------------------------------------------------------------------------------


@dataclass
class DispatchLoop:
    """Dispatches to a queue nobody consumes, as fast as the dashboard answers, until stopped."""

    server: LiveServer
    queue: str
    accepted: list[str] = field(default_factory=list)
    refused: int = 0
    unexpected: list[tuple[int, bytes]] = field(default_factory=list)
    slowest_503: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        """The thread's loop: one request at a time, every answer counted."""
        number = 0
        while not self.stop.is_set():
            number += 1
            body = dispatch_body(UNFURL, {"url": f"https://example.com/{number}"}, queue=self.queue)
            try:
                reply = request(self.server, "POST", "/api/dispatch", body)
            except OSError as exc:  # the dashboard itself must stay up: note it, the test fails on it
                self.unexpected.append((0, repr(exc).encode()))
                continue
            if reply.status == 202:
                self.accepted.append(reply.json()["task_id"])
            elif reply.status == 503:
                self.refused += 1
                self.slowest_503 = max(self.slowest_503, reply.elapsed)
                time.sleep(0.05)
            else:
                self.unexpected.append((reply.status, reply.body[:300]))


def queued_task_ids(client: redis.Redis, queue: str) -> list[str]:
    """The task id (headers.id) of every message waiting in `queue`, over its priority sub-lists."""
    ids: list[str] = []
    for suffix in KOMBU_PRIORITY_SUFFIXES:
        for raw in client.lrange(queue + suffix, 0, -1):
            message = json.loads(raw)
            ids.append(message["headers"]["id"])
    return ids


def test_no_202_is_lost(durable: Stack) -> None:
    # A flapping broker: killed and restarted FLAPS times under a steady dispatch loop.
    server, broker = durable.server, durable.redis
    queue = f"nobody-{uuid.uuid4().hex[:8]}"
    loop = DispatchLoop(server, queue)
    thread = threading.Thread(target=loop.run, name="dispatch-loop", daemon=True)
    thread.start()
    accepted_while_down: list[int] = []
    resumed_after: list[float] = []
    try:
        wait_for(lambda: len(loop.accepted) >= 30, 20.0, "30 dispatches accepted before the kill", server)
        for _flap in range(FLAPS):
            broker.kill()
            accepted_at_kill, refused_at_kill = len(loop.accepted), loop.refused
            refused_floor = refused_at_kill + 5
            wait_for(lambda: loop.refused >= refused_floor, 20.0, "503s while Redis is down", server)  # noqa: B023
            time.sleep(1.0)
            accepted_while_down.append(len(loop.accepted) - accepted_at_kill)
            broker.start()
            restarted_with = len(loop.accepted)
            _, resumed = wait_for(lambda: len(loop.accepted) >= restarted_with + 30,  # noqa: B023 - called at once
                                  RESUME_BOUND + 15.0, "30 dispatches accepted after the restart", server)
            resumed_after.append(resumed)
    finally:
        loop.stop.set()
        thread.join(HTTP_TIMEOUT + 5)
    assert not thread.is_alive()
    assert loop.unexpected == [], loop.unexpected[:5]
    print(f"\n[outage] dispatch loop over {FLAPS} kills: {len(loop.accepted)} x 202 ({accepted_while_down} while "
          f"down), {loop.refused} x 503 (slowest {loop.slowest_503:.3f} s); 30 more accepted "
          f"{', '.join(f'{r:.3f}' for r in resumed_after)} s after each restart")
    assert max(accepted_while_down) <= 1  # at most the one in flight at the kill
    assert loop.slowest_503 <= REFUSED_DISPATCH_BOUND + SLACK

    client = redis.Redis.from_url(broker.url(0), socket_timeout=5)
    try:
        queued = queued_task_ids(client, queue)
    finally:
        client.close()
    accepted = set(loop.accepted)
    missing = accepted - set(queued)
    extra = set(queued) - accepted
    print(f"[outage] queue {queue!r}: {len(queued)} messages for {len(loop.accepted)} x 202; "
          f"missing {len(missing)}, not answered 202 {len(extra)}")
    assert len(accepted) == len(loop.accepted)  # ids are unique
    assert not missing, sorted(missing)[:5]
    assert len(queued) == len(set(queued))  # no message twice
    # An LPUSH that Redis wrote to its AOF but was killed before replying to is answered 503 and yet queued
    # (seen in about 1 run in 4): the outcome of a request in flight at a crash is unknown, one per kill at most.
    assert len(extra) <= FLAPS, sorted(extra)
    assert len(queued) in (len(loop.accepted), len(loop.accepted) + len(extra))


# -- 2b. the broker hangs under a live stream ---------------------------------------------------------------------


# A quiet stream is probed after 2 s; the probe times out after broker_timeout (2 s); kombu checks once a second.
HUNG_NOTICED_BOUND = 2.0 + 2.0 + 1.0


def test_hung_broker_under_a_live_stream_is_shown(durable: Stack) -> None:
    server, broker = durable.server, durable.redis
    wait_for(lambda: get_json(server, "/api/status")["broker"] == "live", RESUME_BOUND + 15.0, "a live stream",
             server)
    assert broker.pid is not None
    os.kill(broker.pid, signal.SIGSTOP)  # TCP stays up, the kernel accepts, nothing answers
    stopped = time.monotonic()
    try:
        seen = None
        while time.monotonic() - stopped < HUNG_NOTICED_BOUND + SLACK:
            status = get_json(server, "/api/status")
            if status["broker"] != "live":
                seen = time.monotonic() - stopped
                break
            time.sleep(0.1)
        hung_for = time.monotonic() - stopped
        up = metrics(server)["dispatch_dashboard_event_stream_up"]
    finally:
        os.kill(broker.pid, signal.SIGCONT)
    shown = f"not live after {seen:.3f} s" if seen is not None else f"still live after {hung_for:.1f} s"
    print(f"\n[outage] Redis SIGSTOPped under a live stream: /api/status {shown}; event_stream_up={up:g}")
    assert seen is not None and seen <= HUNG_NOTICED_BOUND + SLACK, "the stream still says live on a hung broker"
    assert up == 0


# -- 3. a broker that accepts TCP and never answers --------------------------------------------------------------


def test_hung_broker(tmp_path: Path) -> None:
    with HungBroker() as hung:
        config = dashboard_config(hung.url(0), hung.url(1), monitor={"inspect_interval": 1, "alert_grace": 1})
        try:
            server = start_live_server(config, tmp_path, name="dashboard-hung")
        except LiveServerError as exc:
            pytest.fail(str(exc), pytrace=False)
        try:
            print()
            for attempt in (1, 2):
                reply = request(server, "POST", "/api/dispatch", dispatch_body(TRANSCRIBE, {"audio_url": "https://a"}))
                report(f"hung broker: dispatch #{attempt} -> {reply.status}", reply.elapsed, HUNG_DISPATCH_BOUND)
                assert reply.status == 503, (reply.status, reply.body[:300])
                assert reply.elapsed <= HUNG_DISPATCH_BOUND + SLACK
            for path in PAGES:
                reply = request(server, "GET", path)
                report(f"hung broker: GET {path} -> {reply.status}", reply.elapsed, PAGE_BOUND)
                assert reply.status == 200, (path, reply.status, reply.body[:300])
                assert reply.elapsed <= PAGE_BOUND + SLACK
            # 100 at once: kombu's producer pool once queued them without a deadline (p50 12 s, max 20 s)
            body = dispatch_body(TRANSCRIBE, {"audio_url": "https://a"})
            with ThreadPoolExecutor(CONCURRENT_DISPATCHES) as pool:
                futures = [pool.submit(request, server, "POST", "/api/dispatch", body)
                           for _ in range(CONCURRENT_DISPATCHES)]
                health = request(server, "GET", "/healthz")
                replies = [future.result() for future in futures]
            slowest = max(reply.elapsed for reply in replies)
            report(f"hung broker: slowest of {CONCURRENT_DISPATCHES} concurrent dispatches", slowest,
                   BROKER_TIMEOUT + 1.0)
            report("hung broker: /healthz among them", health.elapsed, PAGE_BOUND)
            assert {reply.status for reply in replies} == {503}, {reply.status for reply in replies}
            assert slowest <= BROKER_TIMEOUT + 1.0 + SLACK
            assert health.status == 200 and health.elapsed <= PAGE_BOUND + SLACK
            status = get_json(server, "/api/status")
            print(f"[outage] hung broker: /api/status broker={status['broker']!r} detail={status['detail']!r} "
                  f"({hung.accepted} TCP connections accepted)")
            assert status["broker"] != "live"
        finally:
            server.stop()


# -- 4. a pub/sub subscriber cut by Redis for falling behind -----------------------------------------------------


CUT_LOG_LINE = "overcoming of output buffer limits"  # redis-server's log when it drops a client for its buffer
FLOOD_BATCH = 200
FLOOD_KWARGS_BYTES = 16 * 1024
FLOOD_MAX_EVENTS = 20_000  # ~ 400 MB on the wire: far past any socket buffer, a hard stop if Redis never cuts
SLOW_SECONDS = 5.0  # long enough to finish only after the flood has got the subscriber cut
RESYNC_LOG = re.compile(r"event stream gap: resynced (\d+) task")


def flood_until_cut(broker_url: str, redis_log: Path) -> tuple[int, float]:
    """Publish big task-sent events until redis-server logs that it dropped a client; (events sent, seconds).

    With the subscriber stopped, the kernel's socket buffers fill first, then Redis's output buffer for it.
    """
    app = Celery("outage-flood", broker=broker_url, set_as_current=False)
    app.conf.update(broker_connection_timeout=2, broker_connection_retry=False,
                    broker_transport_options={"max_retries": 0, "socket_timeout": 5, "socket_connect_timeout": 2})
    kwargs = repr({"blob": "x" * FLOOD_KWARGS_BYTES})
    sent = 0
    started = time.monotonic()
    try:
        with app.connection_for_write() as connection:
            dispatcher = app.events.Dispatcher(connection, hostname="flood@outage-test", enabled=True)
            try:
                while sent < FLOOD_MAX_EVENTS:
                    for _ in range(FLOOD_BATCH):
                        dispatcher.send("task-sent", uuid=str(uuid.uuid4()), name="outage.flood", args="()",
                                        kwargs=kwargs, queue="flood", routing_key="flood")
                    sent += FLOOD_BATCH
                    if CUT_LOG_LINE in redis_log.read_text(errors="replace"):
                        return sent, time.monotonic() - started
            finally:
                dispatcher.close()
    finally:
        app.close()
    pytest.fail(f"redis-server did not cut the subscriber after {sent} events ({redis_log})", pytrace=False)


def backend_state(client: redis.Redis, task_id: str) -> str | None:
    """The task's status in the Redis result backend (db 1), or None when it has none yet."""
    raw = client.get(f"celery-task-meta-{task_id}")
    return json.loads(raw)["status"] if raw else None


@pytest.fixture
def cuttable(tmp_path: Path) -> Iterator[Stack]:
    """A Redis that cuts a pub/sub subscriber 256 kB behind (the production 32 MB, scaled down), and the rest."""
    with stack(tmp_path, "cut", ("--client-output-buffer-limit", "pubsub", "256kb", "128kb", "1")) as parts:
        yield parts


def test_pubsub_cut_is_detected(cuttable: Stack) -> None:
    server, broker = cuttable.server, cuttable.redis
    before = get_json(server, "/api/status")
    gaps_before = before["gaps_total"]

    # A task whose final event will be published while nobody listens: only the resync can learn it finished.
    reply = request(server, "POST", "/api/dispatch", dispatch_body(SLOW, {"seconds": SLOW_SECONDS, "steps": 5}))
    assert reply.status == 202, reply.body[:300]
    slow_id = reply.json()["task_id"]
    wait_for(lambda: get_json(server, f"/api/tasks/{slow_id}")["state"] == "STARTED", TASK_DEADLINE,
             f"the slow task {slow_id} STARTED", server)

    backend = redis.Redis.from_url(broker.url(1), socket_timeout=5)
    group = server.process.pid  # the dashboard leads its own session: stop gunicorn's master and worker alike
    os.killpg(group, signal.SIGSTOP)
    try:
        sent, flooding = flood_until_cut(broker.url(0), broker.log_path or Path("/nonexistent"))
        cut_wall = time.time()
        state_at_cut = backend_state(backend, slow_id)
        print(f"\n[outage] dashboard stopped; {sent} task-sent events of {FLOOD_KWARGS_BYTES // 1024} kB got its "
              f"subscriber cut in {flooding:.2f} s; the slow task was {state_at_cut} at the cut")
        resync_checkable = state_at_cut != "SUCCESS"
        if resync_checkable:
            wait_for(lambda: backend_state(backend, slow_id) == "SUCCESS", TASK_DEADLINE,
                     "the slow task's SUCCESS in the result backend")
    finally:
        os.killpg(group, signal.SIGCONT)
        backend.close()
    resumed = time.monotonic()
    continued_wall = time.time()

    def gap_closed() -> Mapping[str, Any] | None:
        status: Mapping[str, Any] = get_json(server, "/api/status")
        return status if status["gaps_total"] > gaps_before and status["gaps"][-1]["ended"] is not None else None

    wait_for(lambda: metrics(server)["dispatch_dashboard_event_stream_gaps_total"] > gaps_before,
             GAP_SHOWN_BOUND + SLACK, "the gap in /metrics", server, interval=0.1)
    report("SIGCONT -> gap counted in /metrics", time.monotonic() - resumed, GAP_SHOWN_BOUND)
    status, _ = wait_for(gap_closed, GAP_SHOWN_BOUND + SLACK, "a closed gap in /api/status", server, interval=0.1)
    report("SIGCONT -> closed gap in /api/status", time.monotonic() - resumed, GAP_SHOWN_BOUND)
    shown, _ = wait_for(lambda: "gap-note" in (s := conn_status(request(server, "GET", "/").text)) and s,
                        GAP_SHOWN_BOUND + SLACK, "the gap note on the page", server, interval=0.1)
    report("SIGCONT -> gap note on the page", time.monotonic() - resumed, GAP_SHOWN_BOUND)
    indicator = " ".join(shown.split())
    print(f"[outage] gap: {status['gaps'][-1]}; indicator: {indicator}")
    assert time.monotonic() - resumed <= GAP_SHOWN_BOUND + SLACK
    assert status["broker"] == "live"
    assert f"{status['gaps_total']} gap" in shown
    # The gap spans the time events were lost, from the cut (the newest event read was sent just before it),
    # not from when the stopped dashboard noticed: it was once recorded as a 0.2 s gap after the resume.
    gap = status["gaps"][-1]
    assert gap["started"] <= cut_wall + 1.0, gap
    assert gap["ended"] - gap["started"] >= continued_wall - cut_wall - 1.0, gap
    assert gap["detected"] >= gap["started"], gap
    wait_for(lambda: get_json(server, "/api/status")["gaps"][-1]["resynced"] is not None, GAP_SHOWN_BOUND + SLACK,
             "the resync after the gap recorded", server, interval=0.1)

    if not resync_checkable:
        print("[outage] resync sub-check skipped: the slow task finished before the cut, so its event was not lost")
        return
    detail, _ = wait_for(
        lambda: (d := get_json(server, f"/api/tasks/{slow_id}"))["state"] == "SUCCESS" and d,
        GAP_SHOWN_BOUND + SLACK, f"the slow task {slow_id} resynced to SUCCESS", server, interval=0.1)
    report("SIGCONT -> task finished during the gap resynced to SUCCESS", time.monotonic() - resumed)
    assert detail["result"] == repr({"seconds": SLOW_SECONDS, "steps": 5})
    resyncs = [int(n) for n in RESYNC_LOG.findall(server.log_path.read_text(errors="replace"))]
    assert resyncs and max(resyncs) >= 1, server.log_tail(40)
    assert metrics(server)["dispatch_dashboard_tasks_resynced_total"] >= 1

