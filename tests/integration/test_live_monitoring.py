"""Live monitoring against real parts: `dispatch-dashboard serve` (gunicorn gthread) as a subprocess on a free port,
a real redis-server, the stub `celery worker`; the websockets (/ws/events, /ws/ui), the JSON API, /metrics, a
worker killed by SIGKILL and a Redis restart in the middle of a stream.

Every wait has a deadline. Pushes are coalesced, so a test never expects one message per event: it folds every
message it sees into a per-task trail (states seen, timeline event types, latest body) and waits for a condition.
Measured times are printed (run with `-s` to see them); bounds are asserted after a wait with a wider deadline,
so a slow run fails with the time it actually took.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from simple_websocket import Client, ConnectionClosed

from dashboard.services.processes import CeleryWorker, ProcessError, RedisServer, free_port, log_tail
from tests.support.http import WebSocketClient, get_json, request
from tests.support.live_server import (
    REPO_ROOT,
    SCRUBBED_ENV,
    LiveServer,
    LiveServerError,
    dashboard_command,
    dashboard_config,
    toml_text,
)
from tests.support.waits import wait_until

TRANSCRIBE = "worker.tasks.stt.transcribe"
SUMMARIZE_NOTE = "worker.tasks.llm.summarize_note"
UNFURL = "worker.tasks.link.unfurl"
FAIL = "worker.tasks.demo.fail"
SLOW = "worker.tasks.demo.slow"
TYPO = "worker.tasks.llm.sumarize_note"  # one "m" short: no worker has it registered
STUB_QUEUES = ("stt", "llm", "default")

HOST = "127.0.0.1"
SERVER_START_DEADLINE = 20.0  # until GET /healthz answers
HTTP_TIMEOUT = 5.0
WS_CONNECT_RETRIES = 3
TASK_DEADLINE = 20.0  # the stub tasks take 0.1-0.5 s; the rest is a busy shared worker's slack
WORKER_ONLINE_DEADLINE = 15.0
OFFLINE_DEADLINE = 15.0  # heartbeat every 2 s, offline 2 x freq after the last one, a 1 s ticker
OFFLINE_BOUND = 15.0
CUT_SEEN_BOUND = 2.0  # a killed Redis shows as "not live" on the stream within this
RECONNECT_BOUND = 5.0  # a restarted Redis shows as "live" again within this
OUTAGE_TASK_DEADLINE = 40.0  # the worker's own reconnect backs off 2 s, 4 s, ...
MONITOR_STARTED = re.compile(r"monitor started in process (\d+)")

SUCCEEDED_EVENTS = frozenset({"task-sent", "task-received", "task-started", "task-succeeded"})
FAILED_EVENTS = frozenset({"task-sent", "task-received", "task-started", "task-failed"})
LIFECYCLE_STATES = frozenset({"PENDING", "RECEIVED", "STARTED", "SUCCESS", "FAILURE"})
FINAL_STATES = frozenset({"SUCCESS", "FAILURE"})
TASK_MESSAGE_KEYS = frozenset({"id", "name", "state", "queue", "worker", "timestamp", "timeline"})

# Proxy settings in the environment must not capture requests to 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# -- serving ---------------------------------------------------------------------------------------------------


def serve(config: Mapping[str, Any], directory: Path, name: str, *extra_args: str) -> LiveServer:
    """`dispatch-dashboard serve --config <name>.toml [extra_args]` on a free port; wait for /healthz."""
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / f"{name}.toml"
    config_path.write_text(toml_text(config), encoding="utf-8")
    log_path = directory / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    for _attempt in range(3):  # free_port() races with anything else picking a port
        port = free_port(HOST)
        argv = [*dashboard_command(), "serve", "--config", str(config_path), "--host", HOST, "--port", str(port),
                *extra_args]
        with log_path.open("ab") as log_file:
            log_file.write(f"--- {' '.join(argv)}\n".encode())
            log_file.flush()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                    cwd=REPO_ROOT, env=env, start_new_session=True)
        decoded = tomllib.loads(config_path.read_text(encoding="utf-8"))
        server = LiveServer(f"http://{HOST}:{port}", port, config_path, log_path, decoded, proc)
        deadline = time.monotonic() + SERVER_START_DEADLINE
        while proc.poll() is None and time.monotonic() < deadline:
            if _healthy(server):
                return server
            time.sleep(0.05)
        server.stop()
        if "cannot listen" not in server.log_tail():
            raise LiveServerError(f"dispatch-dashboard did not answer /healthz within {SERVER_START_DEADLINE} s "
                                  f"(exit code {proc.poll()})\n--- {log_path} ---\n{server.log_tail()}")
    raise LiveServerError(f"dispatch-dashboard found no free port\n--- {log_path} ---\n{log_tail(log_path)}")


def _healthy(server: LiveServer) -> bool:
    try:
        return request(server, "GET", "/healthz", timeout=1.0).status == 200
    except OSError:
        return False


# -- HTTP ------------------------------------------------------------------------------------------------------


def dispatch(server: LiveServer, name: str, kwargs: Mapping[str, Any] | None = None,
             options: Mapping[str, Any] | None = None) -> str:
    """POST /api/dispatch; the task id of a 202."""
    body: dict[str, Any] = {"name": name, "kwargs": dict(kwargs or {})}
    if options:
        body["options"] = dict(options)
    reply = request(server, "POST", "/api/dispatch", body)
    assert reply.status == 202, f"dispatch {name}: {reply.status} {reply.body[:500]!r}\n{server.log_tail(20)}"
    task_id: str = reply.json()["task_id"]
    return task_id


def metrics(server: LiveServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics, parsed: {(sample name, sorted labels): value}."""
    reply = request(server, "GET", "/metrics")
    assert reply.status == 200
    samples = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


# -- websockets ------------------------------------------------------------------------------------------------


def connect(server: LiveServer, path: str) -> Client:
    """A websocket client; retried briefly, since a fresh connection may meet a busy accept queue."""
    for attempt in range(1, WS_CONNECT_RETRIES + 1):
        try:
            return WebSocketClient.connect(f"ws://{HOST}:{server.port}{path}")
        except (ConnectionError, OSError):
            if attempt == WS_CONNECT_RETRIES:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


def receive_until(ws: Client, predicate: Callable[[str], bool], timeout: float, what: str,
                  on_message: Callable[[str], None] | None = None, context: Callable[[], str] | None = None) -> str:
    """Receive until a raw message satisfies `predicate`; fail after `timeout` seconds with the last few messages."""
    deadline = time.monotonic() + timeout
    recent: deque[str] = deque(maxlen=4)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            shown = "\n".join(message[:600] for message in recent) or "(none)"
            extra = f"\n--- context ---\n{context()}" if context is not None else ""
            pytest.fail(f"no {what} within {timeout:.1f} s; last messages:\n{shown}{extra}", pytrace=False)
        try:
            raw = ws.receive(timeout=remaining)
        except ConnectionClosed:
            pytest.fail(f"the websocket closed while waiting for {what}", pytrace=False)
        if raw is None:
            continue
        text = raw if isinstance(raw, str) else raw.decode()
        recent.append(text)
        if on_message is not None:
            on_message(text)
        if predicate(text):
            return text


@dataclass
class TaskTrail:
    """Everything the stream said about one task: every state, every timeline event type, the latest body."""

    states: set[str] = field(default_factory=set)
    events: set[str] = field(default_factory=set)
    last: dict[str, Any] = field(default_factory=dict)


def status_of(message: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The stream status a message carries: a "status" message, or the status inside a (re)snapshot."""
    if message.get("type") == "status":
        return message
    if message.get("type") == "snapshot":
        status: Mapping[str, Any] = message["status"]
        return status
    return None


class EventStream:
    """A /ws/events client that folds every message into per-task trails, workers and the latest status."""

    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.ws = connect(server, "/ws/events")
        self.messages: list[dict[str, Any]] = []
        self.tasks: dict[str, TaskTrail] = {}
        self.workers: dict[str, dict[str, Any]] = {}
        self.status: Mapping[str, Any] | None = None

    def _note(self, raw: str) -> None:
        message = json.loads(raw)
        self.messages.append(message)
        if message["type"] == "snapshot":
            for task in message["tasks"]:
                self._note_task(task)
            for worker in message["workers"]:
                self.workers[worker["hostname"]] = worker
        elif message["type"] == "task":
            self._note_task(message)
        elif message["type"] == "worker":
            self.workers[message["hostname"]] = message
        status = status_of(message)
        if status is not None:
            self.status = status

    def _note_task(self, task: dict[str, Any]) -> None:
        trail = self.tasks.setdefault(task["id"], TaskTrail())
        trail.states.add(task["state"])
        trail.events.update(entry["type"] for entry in task["timeline"])
        trail.last = task

    def until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        """The next message satisfying `predicate` (earlier ones are folded in and skipped)."""
        raw = receive_until(self.ws, lambda text: predicate(json.loads(text)), timeout, what, self._note,
                            lambda: self.server.log_tail(30))
        found: dict[str, Any] = json.loads(raw)
        return found

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Fold messages in until `condition()` holds (checked before the first receive too)."""
        if not condition():
            self.until(lambda _message: condition(), timeout, what)

    def finished(self, task_id: str, final_events: frozenset[str] = SUCCEEDED_EVENTS) -> bool:
        """Whether the task reached a final state with every expected event in its timeline."""
        trail = self.tasks.get(task_id)
        return trail is not None and trail.last.get("state") in FINAL_STATES and final_events <= trail.events

    def close(self) -> None:
        """Close the connection."""
        self.ws.close()


@pytest.fixture
def open_stream() -> Iterator[Callable[[LiveServer], EventStream]]:
    """`open_stream(server)`: a /ws/events client whose first message (the snapshot) was read; closed after."""
    streams: list[EventStream] = []

    def open_(server: LiveServer) -> EventStream:
        stream = EventStream(server)
        streams.append(stream)
        first = stream.until(lambda _message: True, 5.0, "first message")
        assert first["type"] == "snapshot", first
        return stream

    try:
        yield open_
    finally:
        for stream in streams:
            stream.close()


# -- the shared dashboard on the session Redis and stub worker ---------------------------------------------------


@pytest.fixture(scope="module")
def dashboard(
    broker_url: str, backend_url: str, stub_worker: CeleryWorker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """The sample config on the test Redis (inspect_interval 0.5 s), served by gunicorn gthread, 1 worker."""
    try:
        server = serve(dashboard_config(broker_url, backend_url), tmp_path_factory.mktemp("live"), "dashboard")
    except LiveServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        wait_until(lambda: get_json(server, "/api/status")["broker"] == "live", 10.0, "live event stream", server)
        yield server
    finally:
        server.stop()


def _online(server: LiveServer, hostname: str) -> bool:
    return any(w["hostname"] == hostname and w["status"] == "online"
               for w in get_json(server, "/api/workers")["workers"])


STUB_CALLS: dict[str, dict[str, Any]] = {
    TRANSCRIBE: {"audio_url": "https://media.example/a.wav", "language": "fr"},
    SUMMARIZE_NOTE: {"note_id": "note-7", "max_words": 10},
    UNFURL: {"url": "https://example.com/posts/hello-world"},
    FAIL: {"message": "live boom"},
    SLOW: {"seconds": 0.3, "steps": 3},
}
STUB_ROUTES = {TRANSCRIBE: "stt", SUMMARIZE_NOTE: "llm", UNFURL: "default", FAIL: "default", SLOW: "default"}


def test_events_stream_follows_every_stub_task_and_the_api_agrees(
    dashboard: LiveServer, stub_worker: CeleryWorker, open_stream: Callable[[LiveServer], EventStream]
) -> None:
    stream = open_stream(dashboard)
    started = time.monotonic()
    ids = {name: dispatch(dashboard, name, kwargs) for name, kwargs in STUB_CALLS.items()}
    expected = {ids[name]: FAILED_EVENTS if name == FAIL else SUCCEEDED_EVENTS for name in ids}
    stream.wait_for(lambda: all(stream.finished(task_id, events) for task_id, events in expected.items()),
                    TASK_DEADLINE, "final state of all five stub tasks")
    print(f"\n[live] 5 stub tasks dispatched -> final on /ws/events in {time.monotonic() - started:.2f} s")

    for name, task_id in ids.items():
        trail = stream.tasks[task_id]
        last = trail.last
        assert set(last) >= TASK_MESSAGE_KEYS, sorted(last)
        final = "FAILURE" if name == FAIL else "SUCCESS"
        assert last["state"] == final, (name, last)
        assert final in trail.states and trail.states <= LIFECYCLE_STATES, (name, trail.states)
        assert trail.events >= expected[task_id], (name, trail.events)
        assert (last["id"], last["name"], last["queue"]) == (task_id, name, STUB_ROUTES[name])
        assert last["worker"] == stub_worker.hostname
        stamps = [entry["timestamp"] for entry in last["timeline"]]
        assert stamps == sorted(stamps) and last["timestamp"] == max(stamps)

        detail = get_json(dashboard, f"/api/tasks/{task_id}")
        assert (detail["id"], detail["name"], detail["state"]) == (task_id, name, final)
        assert [e["type"] for e in detail["timeline"]] == [e["type"] for e in last["timeline"]]
        if name == FAIL:
            assert detail["result"] is None
            assert detail["exception"] == "RuntimeError('live boom')"
            assert "RuntimeError: live boom" in detail["traceback"]
        else:
            assert detail["exception"] is None and detail["traceback"] is None
    results = {name: get_json(dashboard, f"/api/tasks/{ids[name]}")["result"] for name in ids if name != FAIL}
    assert "'language': 'fr'" in results[TRANSCRIBE] and "'words':" in results[TRANSCRIBE]
    assert "'note_id': 'note-7'" in results[SUMMARIZE_NOTE]
    assert "'title': 'Hello world'" in results[UNFURL]
    assert results[SLOW] == "{'seconds': 0.3, 'steps': 3}"

    missing = request(dashboard, "GET", f"/api/tasks/{uuid.uuid4()}")
    assert missing.status == 404 and isinstance(missing.json()["error"], str)

    def listed(query: str) -> dict[str, Any]:
        body: dict[str, Any] = get_json(dashboard, f"/api/tasks?{query}")
        return body

    failed = listed("state=failure")  # case-insensitive
    assert ids[FAIL] in [t["id"] for t in failed["tasks"]]
    assert failed["tasks"] and all(t["state"] == "FAILURE" for t in failed["tasks"])
    by_name = listed(f"name={TRANSCRIBE}")
    assert [t["id"] for t in by_name["tasks"]][:1] == [ids[TRANSCRIBE]]  # newest first
    assert all(t["name"] == TRANSCRIBE for t in by_name["tasks"])
    llm = listed("queue=llm")
    assert ids[SUMMARIZE_NOTE] in [t["id"] for t in llm["tasks"]] and all(t["queue"] == "llm" for t in llm["tasks"])
    default_ok = {t["id"] for t in listed("queue=default&state=SUCCESS&limit=1000")["tasks"]}
    assert {ids[UNFURL], ids[SLOW]} <= default_ok and ids[FAIL] not in default_ok

    everything = listed("limit=1000")
    all_ids = [t["id"] for t in everything["tasks"]]
    assert set(ids.values()) <= set(all_ids) and everything["total"] == len(all_ids)
    page = listed("limit=2&offset=1")
    assert (page["limit"], page["offset"], page["total"]) == (2, 1, everything["total"])
    assert [t["id"] for t in page["tasks"]] == all_ids[1:3]

    for bad in ("state=BOGUS", "limit=0", "limit=1001", "limit=abc", "offset=-1", "name=" + "x" * 256):
        reply = request(dashboard, "GET", f"/api/tasks?{bad}")
        assert reply.status == 400, bad
        assert isinstance(reply.json()["error"], str), bad


def test_not_registered_task_fails_with_its_name_recovered(
    dashboard: LiveServer, open_stream: Callable[[LiveServer], EventStream]
) -> None:
    stream = open_stream(dashboard)
    body: dict[str, Any] = {"name": TYPO, "kwargs": {"note_id": "n"}, "options": {"queue": "llm"}}
    # Once the workers have been inspected, the dispatch guard refuses a name no online worker registers...
    wait_until(lambda: get_json(dashboard, "/api/routing")["compared_at"], 10.0, "a first routing comparison",
               dashboard)
    refused = request(dashboard, "POST", "/api/dispatch", body)
    assert refused.status == 409 and refused.json()["queue"] == "llm", refused.body
    # ... and "force" sends it anyway: the worker is where it fails.
    reply = request(dashboard, "POST", "/api/dispatch", {**body, "force": True})
    assert reply.status == 202, reply.body
    assert reply.json()["queue"] == "llm"
    task_id = reply.json()["task_id"]
    stream.wait_for(lambda: stream.finished(task_id, frozenset({"task-sent", "task-failed"})), TASK_DEADLINE,
                    f"FAILURE of the unregistered {TYPO}")
    last = stream.tasks[task_id].last
    assert last["state"] == "FAILURE" and last["not_registered"] is True
    assert last["name"] == TYPO and last["queue"] == "llm"
    assert last["exception"].startswith("NotRegistered(")

    detail = get_json(dashboard, f"/api/tasks/{task_id}")
    assert (detail["state"], detail["name"], detail["not_registered"]) == ("FAILURE", TYPO, True)
    assert [t["id"] for t in get_json(dashboard, f"/api/tasks?name={TYPO}")["tasks"]] == [task_id]


def test_worker_online_then_killed_goes_offline(
    dashboard: LiveServer,
    stub_worker: CeleryWorker,
    start_worker: Callable[..., CeleryWorker],
    open_stream: Callable[[LiveServer], EventStream],
) -> None:
    wait_until(lambda: _online(dashboard, stub_worker.hostname), WORKER_ONLINE_DEADLINE,
               f"{stub_worker.hostname} online in /api/workers", dashboard)
    stream = open_stream(dashboard)
    extra = start_worker(name=f"live-extra-{uuid.uuid4().hex[:6]}", queues=("live-extra",))
    host = extra.hostname
    online = stream.until(lambda m: m["type"] == "worker" and m["hostname"] == host and m["status"] == "online",
                          WORKER_ONLINE_DEADLINE, f"worker message: {host} online")
    assert online["freq"] > 0 and online["pid"] == extra.pid
    assert _online(dashboard, host)

    killed = time.monotonic()
    extra.kill()  # SIGKILL: no worker-offline event, only the heartbeat stops
    offline = stream.until(lambda m: m["type"] == "worker" and m["hostname"] == host and m["status"] == "offline",
                           OFFLINE_DEADLINE + 5, f"worker message: {host} offline")
    elapsed = time.monotonic() - killed
    print(f"\n[live] SIGKILLed worker shown offline on /ws/events after {elapsed:.2f} s (freq {offline['freq']} s)")
    assert elapsed <= OFFLINE_BOUND
    workers = {w["hostname"]: w for w in get_json(dashboard, "/api/workers")["workers"]}
    assert workers[host]["status"] == "offline"
    assert workers[stub_worker.hostname]["status"] == "online"


OFFLINE_PUSH_LAG_BOUND = 2.5  # a 1 s ticker + a 0.05 s frame + slack, after the heartbeat-expiry moment

def test_offline_push_follows_the_heartbeat_rule_promptly(
    dashboard: LiveServer, start_worker: Callable[..., CeleryWorker], open_stream: Callable[[LiveServer], EventStream]
) -> None:
    stream = open_stream(dashboard)
    extra = start_worker(name=f"live-lag-{uuid.uuid4().hex[:6]}", queues=("live-lag",))
    host = extra.hostname
    stream.until(lambda m: m["type"] == "worker" and m["hostname"] == host and m["status"] == "online",
                 WORKER_ONLINE_DEADLINE, f"worker message: {host} online")
    freq = stream.workers[host]["freq"]
    killed = time.monotonic()
    extra.kill()
    offline = stream.until(lambda m: m["type"] == "worker" and m["hostname"] == host and m["status"] == "offline",
                           OFFLINE_DEADLINE + 5, f"worker message: {host} offline")
    lag = time.time() - offline["heartbeat_expires"]
    print(f"\n[live] offline push {time.monotonic() - killed:.2f} s after SIGKILL, {lag:.2f} s after the heartbeat "
          f"expired (freq {freq} s)")
    assert lag <= OFFLINE_PUSH_LAG_BOUND

def test_metrics_count_events_and_match_the_api(dashboard: LiveServer, open_stream: Callable[[LiveServer], EventStream]
                                                ) -> None:
    stream = open_stream(dashboard)
    task_id = dispatch(dashboard, TRANSCRIBE, STUB_CALLS[TRANSCRIBE])
    stream.wait_for(lambda: stream.finished(task_id), TASK_DEADLINE, "transcribe SUCCESS")

    reply = request(dashboard, "GET", "/metrics")
    content_type = reply.headers.get("Content-Type", "")
    assert content_type.startswith("text/plain") and "version=" in content_type, content_type

    def consistent() -> tuple[dict[Any, float], dict[str, Any]] | None:
        before = get_json(dashboard, "/api/status")["counts"]
        samples = metrics(dashboard)
        online = sum(w["status"] == "online" for w in get_json(dashboard, "/api/workers")["workers"])
        total = get_json(dashboard, "/api/tasks?limit=1")["total"]
        after = get_json(dashboard, "/api/status")["counts"]
        if before["tasks"] != after["tasks"] or before["workers_online"] != after["workers_online"]:
            return None  # something changed mid-read: read again
        if (samples[("dispatch_dashboard_tasks_retained", ())], samples[("dispatch_dashboard_workers_online", ())]) \
                != (total, online) or total != after["tasks"]:
            return None
        return samples, after

    found: tuple[dict[Any, float], dict[str, Any]] = wait_until(
        consistent, 10.0, "/metrics gauges agreeing with the API", dashboard
    )
    samples, counts = found

    def events(kind: str) -> float:
        return samples.get(("dispatch_dashboard_events_total", (("type", kind),)), 0.0)

    # At least what this module sent and saw: 5 + 1 stub tasks, the unregistered one (module order), this one.
    assert events("task-sent") >= 1 and events("task-succeeded") >= 1 and events("worker-heartbeat") >= 1
    assert events("task-received") >= events("task-succeeded")
    assert sum(events(kind) for kind in ("task-sent", "task-received", "task-started", "task-succeeded",
                                         "task-failed", "worker-heartbeat", "worker-online")) <= counts["events"]
    assert counts["workers_online"] >= 1
    assert samples[("dispatch_dashboard_tasks_retained_by_state", (("state", "SUCCESS"),))] \
        == counts["by_state"]["SUCCESS"]
    assert samples[("dispatch_dashboard_event_stream_up", ())] == 1
    assert samples[("dispatch_dashboard_websocket_clients", ())] >= 1
    # Beyond Flower's: finished tasks by name and state, the runtime histogram, dispatches by outcome.
    assert samples[("dispatch_dashboard_tasks_finished_total", (("name", TRANSCRIBE), ("state", "SUCCESS")))] >= 1
    runs = samples[("dispatch_dashboard_task_runtime_seconds_count", ())]
    assert runs >= 1 and samples[("dispatch_dashboard_task_runtime_seconds_bucket", (("le", "+Inf"),))] == runs
    assert samples[("dispatch_dashboard_task_runtime_seconds_sum", ())] > 0
    assert samples[("dispatch_dashboard_dispatches_total", (("outcome", "sent"),))] >= 1


def test_ui_socket_sends_the_tasks_page_fragments_then_the_new_task(dashboard: LiveServer) -> None:
    ws = connect(dashboard, "/ws/ui?view=tasks")
    try:
        first = receive_until(ws, lambda _text: True, 5.0, "first /ws/ui message")
        for element in ('id="conn-status"', 'id="workers-panel"', 'id="task-table"'):
            assert element in first, element
        task_id = dispatch(dashboard, UNFURL, STUB_CALLS[UNFURL])
        receive_until(ws, lambda text: f'data-task-id="{task_id}"' in text, TASK_DEADLINE,
                      f"a /ws/ui message with task {task_id}", context=lambda: dashboard.log_tail(20))
    finally:
        ws.close()


def _monitor_pids(server: LiveServer) -> list[int]:
    return [int(pid) for pid in MONITOR_STARTED.findall(server.log_path.read_text(errors="replace"))]


def test_one_event_listener_per_serving_process(
    dashboard: LiveServer, broker_url: str, backend_url: str, tmp_path: Path
) -> None:
    pids = _monitor_pids(dashboard)
    assert len(pids) == 1, dashboard.log_tail()
    assert pids[0] != dashboard.process.pid  # in the gunicorn worker, not in the master

    two = serve(dashboard_config(broker_url, backend_url), tmp_path, "two-workers", "--workers", "2")
    try:
        wait_until(lambda: len(_monitor_pids(two)) >= 2, 15.0, "two 'monitor started' lines", two)
        for _ in range(10):  # requests land on either worker; none may start a second listener
            get_json(two, "/api/status")
        pids = _monitor_pids(two)
        assert len(pids) == 2 and len(set(pids)) == 2, two.log_tail()
        assert two.process.pid not in pids
    finally:
        two.stop()


# -- a Redis of our own, killed and restarted under a live stream ------------------------------------------------


@dataclass
class Outage:
    """A Redis this module may kill, a worker and a dashboard on it."""

    redis: RedisServer
    worker: CeleryWorker
    server: LiveServer


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outage]:
    """Its own redis-server, stub worker and dashboard, so killing Redis harms no other test."""
    directory = tmp_path_factory.mktemp("outage")
    redis = RedisServer(directory=directory / "redis", log_path=directory / "redis.log")
    worker = CeleryWorker(redis.url(0), backend_url=redis.url(1), name="outage", queues=STUB_QUEUES,
                          log_path=directory / "worker-outage.log", cwd=REPO_ROOT, pythonpath=[REPO_ROOT])
    server: LiveServer | None = None
    try:
        redis.start()
        worker.start()
        server = serve(dashboard_config(redis.url(0), redis.url(1)), directory, "dashboard-outage")
        wait_until(lambda: _online(server, worker.hostname), WORKER_ONLINE_DEADLINE, "outage worker online", server)
        yield Outage(redis, worker, server)
    except (ProcessError, LiveServerError) as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        if server is not None:
            server.stop()
        worker.stop()
        redis.stop()


def test_redis_restart_mid_stream(outage: Outage, open_stream: Callable[[LiveServer], EventStream]) -> None:
    server, redis = outage.server, outage.redis
    stream = open_stream(server)
    assert stream.status is not None and stream.status["broker"] == "live"
    gaps_before = stream.status["gaps_total"]

    cut = time.monotonic()
    redis.kill()
    down = stream.until(lambda m: (s := status_of(m)) is not None and s["broker"] != "live", 10.0,
                        "status message: broker not live")
    seen_down = time.monotonic() - cut
    print(f"\n[live] Redis SIGKILLed -> status {(status_of(down) or {}).get('broker')!r} on /ws/events in "
          f"{seen_down:.3f} s")
    assert seen_down <= CUT_SEEN_BOUND
    status = get_json(server, "/api/status")
    assert status["broker"] != "live" and status["gaps_total"] == gaps_before + 1

    restarting = time.monotonic()
    redis.start()  # same port, empty dataset
    redis_up = time.monotonic()
    stream.until(lambda m: (s := status_of(m)) is not None and s["broker"] == "live", 20.0,
                 "status: broker live again")
    back = time.monotonic() - redis_up
    print(f"[live] Redis restarted (ready in {redis_up - restarting:.2f} s) -> status 'live' on /ws/events "
          f"{back:.3f} s after Redis answered")
    assert back <= RECONNECT_BOUND
    status = get_json(server, "/api/status")
    assert status["broker"] == "live" and status["gaps_total"] == gaps_before + 1
    assert status["gaps"][-1]["ended"] is not None

    # The worker reconnects by itself (Celery backs off 2 s, 4 s, ...): a heartbeat sent after the restart shows it.
    restarted_at = time.time() - (time.monotonic() - redis_up)
    wait_until(lambda: any(w["hostname"] == outage.worker.hostname and (w["last_heartbeat"] or 0) > restarted_at
                           for w in get_json(server, "/api/workers")["workers"]),
               OUTAGE_TASK_DEADLINE, "a worker heartbeat after the restart", server)
    print(f"[live] worker heartbeat after the restart seen {time.monotonic() - redis_up:.2f} s after Redis answered")
    dispatched = time.monotonic()
    task_id = dispatch(server, TRANSCRIBE, STUB_CALLS[TRANSCRIBE])
    stream.wait_for(lambda: stream.finished(task_id), OUTAGE_TASK_DEADLINE,
                    f"SUCCESS of a task sent after the restart (worker log: {outage.worker.log_path})")
    print(f"[live] task sent after the restart: SUCCESS on the same websocket in {time.monotonic() - dispatched:.2f} s")
    assert stream.tasks[task_id].last["worker"] == outage.worker.hostname

    samples = metrics(server)
    assert samples[("dispatch_dashboard_event_stream_gaps_total", ())] >= 1
    assert samples[("dispatch_dashboard_event_stream_up", ())] == 1
    assert samples[("dispatch_dashboard_event_stream_connects_total", ())] >= 2

