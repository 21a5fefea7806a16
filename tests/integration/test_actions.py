"""Task, bulk and worker actions against real parts: a redis-server and a prefork stub worker of this module's own,
`dispatch-dashboard serve` on them, the JSON API.

The worker runs the prefork pool (two processes) so that "revoke and terminate" and pool grow/shrink really act on
processes. The tests share the cluster and run in file order; each waits for the state it needs.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from celery import Celery
from flask import Flask
from werkzeug.security import generate_password_hash

from dashboard import create_app
from dashboard.config import config_from_mapping
from dashboard.services.processes import CeleryWorker, ProcessError, RedisServer, free_port
from tests.support.http import Reply, call, get
from tests.support.live_server import REPO_ROOT, LiveServer, LiveServerError, dashboard_config, start_live_server
from tests.support.waits import wait_for, wait_until

SLEEP = "worker.tasks.demo.sleep"
FAIL = "worker.tasks.demo.fail"
UNFURL = "worker.tasks.link.unfurl"
NOBODY = "actions-nobody"  # a queue no worker consumes
READY_DEADLINE = 20.0
TASK_DEADLINE = 20.0
STOP_BOUND = 10.0  # seconds from "revoke and terminate" to the task being REVOKED (the task would sleep 60 s)


@dataclass
class Cluster:
    redis: RedisServer
    worker: CeleryWorker
    server: LiveServer


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("actions")
    server_redis = RedisServer(directory=directory / "redis", log_path=directory / "redis.log")
    worker: CeleryWorker | None = None
    server: LiveServer | None = None
    try:
        server_redis.start()
        worker = CeleryWorker(server_redis.url(0), backend_url=server_redis.url(1), name=f"act-{uuid.uuid4().hex[:6]}",
                              queues=("stt", "llm", "default"), pool="prefork", concurrency=2,
                              log_path=directory / "worker.log", cwd=REPO_ROOT, pythonpath=[REPO_ROOT])
        worker.start()
        server = start_live_server(dashboard_config(server_redis.url(0), server_redis.url(1)), directory,
                                   name="dashboard-actions")
        wait_until(lambda: _inspected(server, worker.hostname), READY_DEADLINE, "the worker inspected", server)
        yield Cluster(server_redis, worker, server)
    except (ProcessError, LiveServerError) as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        if server is not None:
            server.stop()
        if worker is not None:
            worker.stop()
        server_redis.stop()


def _inspected(server: LiveServer, hostname: str) -> bool:
    workers = get(server, "/api/workers")["workers"]
    return any(w["hostname"] == hostname and w["status"] == "online" and w["queues"] for w in workers) and \
        get(server, "/api/routing")["compared_at"] is not None


def dispatch(server: LiveServer, name: str, kwargs: dict[str, Any], **options: Any) -> str:
    reply = call(server, "POST", "/api/dispatch", {"name": name, "kwargs": kwargs, **({"options": options}
                                                                                      if options else {})})
    assert reply.status == 202, reply.data
    task_id: str = reply.json()["task_id"]
    return task_id


def task_state(server: LiveServer, task_id: str) -> str | None:
    reply = call(server, "GET", f"/api/tasks/{task_id}")
    return reply.json()["state"] if reply.status == 200 else None


def wait_state(cluster: Cluster, task_id: str, states: set[str], timeout: float = TASK_DEADLINE) -> float:
    _value, took = wait_for(lambda: task_state(cluster.server, task_id) in states, timeout,
                            f"task {task_id} in {sorted(states)}", cluster.server)
    return took


def actions(server: LiveServer, action: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = get(server, f"/api/audit/actions?action={action}")["entries"]
    return entries


def sender(cluster: Cluster) -> Celery:
    """Another producer (not the dashboard), emitting task-sent events like a send-only API does."""
    app = Celery("other-api", broker=cluster.redis.url(0), set_as_current=False)
    app.conf.update(task_send_sent_event=True, broker_connection_timeout=2,
                    broker_transport_options={"max_retries": 0, "socket_timeout": 2, "socket_connect_timeout": 2})
    return app


# -- revoke -------------------------------------------------------------------------------------------------------


def test_revoke_and_terminate_really_stops_a_long_task(cluster: Cluster) -> None:
    task_id = dispatch(cluster.server, SLEEP, {"seconds": 60})
    wait_state(cluster, task_id, {"STARTED"})

    started = time.monotonic()
    reply = call(cluster.server, "POST", f"/api/tasks/{task_id}/revoke", {"terminate": True, "signal": "SIGKILL"})
    assert reply.status == 200, reply.data
    assert reply.json()["replies"] == {cluster.worker.hostname: f"terminate: {task_id}"}
    took = wait_state(cluster, task_id, {"REVOKED"}, STOP_BOUND)
    print(f"\n[actions] revoke and terminate: REVOKED {time.monotonic() - started:.2f} s after the click")

    task = get(cluster.server, f"/api/tasks/{task_id}")
    revoked = [entry for entry in task["timeline"] if entry["type"] == "task-revoked"]
    assert revoked and "terminated" in revoked[0]["detail"] and "signum=9" in revoked[0]["detail"], task["timeline"]
    assert took < STOP_BOUND
    entry = actions(cluster.server, "task.revoke")[0]
    assert (entry["target"], entry["outcome"]) == (task_id, "done")
    assert json.loads(entry["detail"])["signal"] == "SIGKILL"


def test_a_bad_signal_is_refused_and_a_finished_task_is_not_revoked(cluster: Cluster) -> None:
    task_id = dispatch(cluster.server, UNFURL, {"url": "https://example.com/done"})
    wait_state(cluster, task_id, {"SUCCESS"})

    bad = call(cluster.server, "POST", f"/api/tasks/{task_id}/revoke", {"terminate": True, "signal": "SIGBOGUS"})
    finished = call(cluster.server, "POST", f"/api/tasks/{task_id}/revoke", {})

    assert bad.status == 400 and "SIGTERM" in bad.json()["error"]
    assert finished.status == 409 and "finished" in finished.json()["error"]


# -- dispatch again -----------------------------------------------------------------------------------------------


def test_redispatch_sends_the_exact_arguments_from_the_audit_log_and_links_both_ways(cluster: Cluster) -> None:
    url = f"https://example.com/{uuid.uuid4().hex}"
    original = dispatch(cluster.server, UNFURL, {"url": url})
    wait_state(cluster, original, {"SUCCESS"})

    reply = call(cluster.server, "POST", f"/api/tasks/{original}/redispatch", {})

    assert reply.status == 202, reply.data
    body = reply.json()
    new = body["task_id"]
    assert (body["original"], body["name"], body["source"], body["queue"]) == (original, UNFURL, "audit", "default")
    wait_state(cluster, new, {"SUCCESS"})
    assert url in get(cluster.server, f"/api/tasks/{new}")["kwargs"]
    assert get(cluster.server, f"/api/tasks/{new}/call")["original"] == original
    assert get(cluster.server, f"/api/tasks/{original}/call")["again"] == [new]
    entry = actions(cluster.server, "task.redispatch")[0]
    assert (entry["target"], json.loads(entry["detail"])["task_id"]) == (original, new)


def test_arguments_stored_by_the_result_backend_are_exact(cluster: Cluster) -> None:
    app = sender(cluster)
    try:
        task_id = app.send_task(FAIL, kwargs={"message": "from another api"}, queue="default").id
    finally:
        app.close()
    wait_state(cluster, task_id, {"FAILURE"})

    known = get(cluster.server, f"/api/tasks/{task_id}/call")
    reply = call(cluster.server, "POST", f"/api/tasks/{task_id}/redispatch", {})

    assert (known["exact"], known["source"], known["kwargs"]) == (True, "backend", {"message": "from another api"})
    assert reply.status == 202 and reply.json()["source"] == "backend", reply.data


def test_a_truncated_repr_requires_an_edit_and_a_revoke_nobody_hears_points_to_the_queue(cluster: Cluster) -> None:
    long_url = "https://example.com/" + "x" * 3000  # past saferepr's 1024 characters: the event's repr is cut
    app = sender(cluster)
    try:
        task_id = app.send_task(UNFURL, kwargs={"url": long_url}, queue=NOBODY).id
    finally:
        app.close()
    wait_until(lambda: task_state(cluster.server, task_id) == "PENDING", TASK_DEADLINE, "the task-sent event",
               cluster.server)
    wait_until(lambda: any(q["name"] == NOBODY for q in get(cluster.server, "/api/routing")["queues"]),
               TASK_DEADLINE, f"queue {NOBODY} compared", cluster.server)

    known = get(cluster.server, f"/api/tasks/{task_id}/call")
    again = call(cluster.server, "POST", f"/api/tasks/{task_id}/redispatch", {})
    revoke = call(cluster.server, "POST", f"/api/tasks/{task_id}/revoke", {})
    edited = call(cluster.server, "POST", f"/api/tasks/{task_id}/redispatch",
                  {"args": [], "kwargs": {"url": "https://example.com/edited"}})

    assert (known["exact"], known["source"]) == (False, "events") and len(known["kwargs_repr"]) < len(long_url)
    assert again.status == 409 and "not known" in again.json()["error"] and again.json()["call"]["exact"] is False
    assert revoke.status == 409 and "no online worker consumes" in revoke.json()["error"]
    assert revoke.json()["queue_url"].endswith(f"/queues/{NOBODY}")
    assert edited.status == 202, edited.data
    wait_state(cluster, edited.json()["task_id"], {"SUCCESS"})
    redis.Redis.from_url(cluster.redis.url(0)).delete(NOBODY)


# -- bulk ---------------------------------------------------------------------------------------------------------


def poll_job(cluster: Cluster, url: str) -> dict[str, Any]:
    job: dict[str, Any] = wait_until(lambda: (body := get(cluster.server, url)) and not body["running"] and body,
                                     TASK_DEADLINE, "the bulk job to finish", cluster.server)
    return job


def test_bulk_revoke_with_terminate_stops_every_matching_running_task(cluster: Cluster) -> None:
    ids = [dispatch(cluster.server, SLEEP, {"seconds": 60}) for _ in range(2)]
    for task_id in ids:
        wait_state(cluster, task_id, {"STARTED"})
    selection = {"action": "revoke", "name": SLEEP, "state": "STARTED", "terminate": True, "signal": "SIGTERM"}

    preview = call(cluster.server, "POST", "/api/tasks/bulk/preview", selection)
    assert preview.status == 200 and preview.json()["count"] == 2, preview.data
    assert {task["id"] for task in preview.json()["sample"]} == set(ids)
    too_few = call(cluster.server, "POST", "/api/tasks/bulk", {**selection, "expected": 1})
    started = call(cluster.server, "POST", "/api/tasks/bulk", {**selection, "expected": 2})

    assert too_few.status == 409 and "preview again" in too_few.json()["error"]
    assert started.status == 202, started.data
    job = poll_job(cluster, started.json()["url"])
    assert job["counts"] == {"revoked": 2} and job["total"] == 2
    for task_id in ids:
        wait_state(cluster, task_id, {"REVOKED"}, STOP_BOUND)
    entries = actions(cluster.server, "tasks.bulk_revoke")
    done = [entry for entry in entries if entry["outcome"] == "done"]
    assert len(done) == 1
    detail = json.loads(done[0]["detail"])
    assert detail["count"] == 2 and sorted(detail["outcomes"]["revoked"]) == sorted(ids)
    assert detail["filters"] == {"state": "STARTED", "name": SLEEP}


def test_bulk_redispatch_sends_every_matching_failure_again(cluster: Cluster) -> None:
    marker = uuid.uuid4().hex
    ids = [dispatch(cluster.server, FAIL, {"message": f"{marker}-{n}"}) for n in range(3)]
    for task_id in ids:
        wait_state(cluster, task_id, {"FAILURE"})
    preview = call(cluster.server, "POST", "/api/tasks/bulk/preview", {"action": "redispatch", "name": FAIL}).json()
    assert preview["count"] >= 3 and preview["filters"] == {"state": "FAILURE", "name": FAIL}

    started = call(cluster.server, "POST", "/api/tasks/bulk",
                   {"action": "redispatch", "name": FAIL, "expected": preview["count"]})

    assert started.status == 202, started.data
    job = poll_job(cluster, started.json()["url"])
    assert job["counts"].get("sent") == preview["count"], job
    again = {entry["id"]: entry["task_id"] for entry in job["outcomes"]}
    for task_id in ids:
        wait_state(cluster, again[task_id], {"FAILURE"})
        assert f"{marker}" in get(cluster.server, f"/api/tasks/{again[task_id]}")["kwargs"]
        assert get(cluster.server, f"/api/tasks/{again[task_id]}/call")["original"] == task_id
    [entry] = actions(cluster.server, "tasks.bulk_redispatch")
    assert json.loads(entry["detail"])["count"] == preview["count"]


# -- the worker ---------------------------------------------------------------------------------------------------


def pool_size(cluster: Cluster) -> int | None:
    size: int | None = get(cluster.server, f"/api/workers/{cluster.worker.hostname}")["pool"]["size"]
    return size


def test_pool_grow_and_shrink_change_the_size_inspect_stats_report(cluster: Cluster) -> None:
    host = cluster.worker.hostname
    detail = get(cluster.server, f"/api/workers/{host}")
    assert detail["pool"]["kind"] == "prefork" and detail["pool"]["resize"] is True
    assert detail["pool"]["size"] == 2 and {q["name"] for q in detail["queues"]} == {"stt", "llm", "default"}
    assert any(task["name"] == SLEEP for task in detail["registered"])

    grown = call(cluster.server, "POST", f"/api/workers/{host}/pool", {"grow": 1})
    assert grown.status == 200, grown.data
    wait_until(lambda: pool_size(cluster) == 3, TASK_DEADLINE, "a pool of 3", cluster.server)
    shrunk = call(cluster.server, "POST", f"/api/workers/{host}/pool", {"shrink": 1})
    assert shrunk.status == 200, shrunk.data
    wait_until(lambda: pool_size(cluster) == 2, TASK_DEADLINE, "a pool of 2 again", cluster.server)
    assert [e["detail"] for e in actions(cluster.server, "worker.pool")[:2]] == ['{"shrink": 1}', '{"grow": 1}']


def test_rate_limit_time_limit_and_consumers(cluster: Cluster) -> None:
    host = cluster.worker.hostname
    rate = call(cluster.server, "POST", f"/api/workers/{host}/rate-limit", {"task": UNFURL, "rate": "10/m"})
    limits = call(cluster.server, "POST", f"/api/workers/{host}/time-limit", {"task": UNFURL, "soft": 50, "hard": 60})
    added = call(cluster.server, "POST", f"/api/workers/{host}/consumers", {"queue": "actions-extra"})
    autoscale = call(cluster.server, "POST", f"/api/workers/{host}/autoscale", {"max": 4, "min": 1})

    assert rate.status == 200 and "rate limit" in rate.json()["ok"], rate.data
    assert limits.status == 200, limits.data
    assert added.status == 200, added.data
    assert autoscale.status == 409 and "Autoscale not enabled" in autoscale.json()["error"]
    registered = {t["name"]: t for t in get(cluster.server, f"/api/workers/{host}")["registered"]}
    assert registered[UNFURL]["rate_limit"] == "10/m" and registered[UNFURL]["time_limit"] == "60.0"
    def queues() -> set[str]:
        return {q["name"] for q in get(cluster.server, f"/api/workers/{host}")["queues"]}

    wait_until(lambda: "actions-extra" in queues(), TASK_DEADLINE, "the added consumer", cluster.server)
    cancelled = call(cluster.server, "POST", f"/api/workers/{host}/consumers/cancel", {"queue": "actions-extra"})
    assert cancelled.status == 200, cancelled.data
    wait_until(lambda: "actions-extra" not in queues(), TASK_DEADLINE, "the cancelled consumer gone", cluster.server)
    assert call(cluster.server, "POST", "/api/workers/celery@nowhere/pool", {"grow": 1}).status == 404


def test_a_silent_worker_gets_a_clear_504(cluster: Cluster) -> None:
    hostname = f"silent-{uuid.uuid4().hex[:6]}@nowhere"
    app = sender(cluster)
    try:  # a heartbeat makes the dashboard know (and count) a worker that will never answer a command
        with app.connection_for_write() as connection:
            dispatcher = app.events.Dispatcher(connection, hostname=hostname)
            dispatcher.send("worker-online", freq=60.0)
            dispatcher.close()
    finally:
        app.close()
    wait_until(lambda: any(w["hostname"] == hostname for w in get(cluster.server, "/api/workers")["workers"]),
               TASK_DEADLINE, "the silent worker seen", cluster.server)

    reply: Reply = call(cluster.server, "POST", f"/api/workers/{hostname}/pool", {"grow": 1})
    detail = call(cluster.server, "GET", f"/api/workers/{hostname}")

    assert reply.status == 504 and "did not answer" in reply.json()["error"], reply.data
    assert detail.status == 504 and "did not answer" in detail.json()["error"], detail.data


# -- roles --------------------------------------------------------------------------------------------------------


def test_a_viewer_gets_403_on_every_action_page_and_api() -> None:
    token = "viewer-token-actions"
    config = config_from_mapping({
        "broker_url": f"redis://127.0.0.1:{free_port()}/0", "broker_timeout": 1, "audit": {"path": ""},
        "auth": {"users": [{"name": "op", "role": "operator",
                            "password_hash": generate_password_hash("op-password", "pbkdf2:sha256:1000")}],
                 "tokens": [{"name": "v", "role": "viewer",
                             "token_sha256": hashlib.sha256(token.encode()).hexdigest()}]},
    })
    app: Flask = create_app(config, live=False)
    client = app.test_client(use_cookies=False)
    paths = ["/tasks/t-1/revoke", "/tasks/t-1/redispatch", "/tasks/t-1/edit-send", "/tasks/bulk/preview", "/tasks/bulk",
             "/workers/w@h/pool", "/workers/w@h/consumers/cancel", "/workers/w@h/rate-limit",
             "/api/tasks/t-1/revoke", "/api/tasks/t-1/redispatch", "/api/tasks/bulk", "/api/workers/w@h/pool"]
    try:
        answers = {path: client.post(path, json={}, headers={"Authorization": f"Bearer {token}"}).status_code
                   for path in paths}
        task_page = client.get("/tasks/t-1", headers={"Authorization": f"Bearer {token}"})
    finally:
        services = app.extensions["dispatch_dashboard"]
        services.close()

    assert answers == dict.fromkeys(paths, 403)
    assert task_page.status_code == 200
    assert b"viewer-note" in task_page.data and b'class="actions-fieldset" disabled' in task_page.data
