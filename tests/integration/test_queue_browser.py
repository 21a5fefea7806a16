"""The queue browser and rescue on a real Redis: `dispatch-dashboard serve`, a real stub worker, the JSON API.

Messages are published with a plain Celery app into queues nobody consumes (the send-only pattern's stranded
messages), then peeked (depth unchanged), moved to a queue a worker consumes (each runs exactly once: counted by
id in the worker's log), deleted by name and purged (exactly that queue's, exactly that name's). A move
interrupted by SIGKILLing a Redis with an fsync'ed append-only file loses and duplicates nothing.

Every queue name is unique to its test; waits have deadlines.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from dashboard import create_app
from dashboard.config import config_from_mapping
from dashboard.exceptions import ActionInterrupted
from dashboard.model.kombu import KombuRedisLayout
from dashboard.model.messages import Selection
from dashboard.services.broker.redis import RedisBrokerInspector
from dashboard.services.broker.redis_queues import RedisQueueBrowser
from dashboard.services.processes import CeleryWorker, ProcessError, RedisServer
from dashboard.web.context import services
from tests.conftest import REPO_ROOT
from tests.support.http import call, get
from tests.support.live_server import LiveServer, LiveServerError, dashboard_config, start_live_server
from tests.support.waits import wait_until

UNFURL = "worker.tasks.link.unfurl"  # registered by the stub worker, quick
TYPO = "worker.tasks.link.unfurll"  # registered by nobody
READY_DEADLINE = 20.0
RUN_DEADLINE = 20.0
LAYOUT = KombuRedisLayout()


_CREATED: list[str] = []  # every queue name a test made up: its keys are deleted after the test


def unique(prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    _CREATED.append(name)
    return name


@pytest.fixture(autouse=True)
def _clean_up(broker_url: str) -> Iterator[None]:
    """Delete what each test stranded in the session's Redis (lists and bindings): an orphaned queue left behind
    would raise alerts in every later test of the session."""
    yield
    connection = redis.Redis.from_url(broker_url)
    try:
        while _CREATED:
            name = _CREATED.pop()
            keys = list(connection.scan_iter(match=f"*{name}*", count=1000))
            if keys:
                connection.delete(*keys)
    finally:
        connection.close()


@dataclass
class Cluster:
    server: LiveServer
    worker: CeleryWorker  # consumes `target` only
    target: str
    client: Celery
    redis: redis.Redis

    def publish(self, queue: str, name: str, count: int, **options: Any) -> list[str]:
        """Send `count` messages of `name` into `queue` (by name, like the send-only API); their ids in order."""
        return [self.client.send_task(name, kwargs={"url": f"https://example.com/{i}"}, queue=queue, **options).id
                for i in range(count)]

    def runs(self, task_id: str) -> int:
        """How many times the worker ran `task_id` (its log says "succeeded" once per run)."""
        return len(re.findall(rf"\[{re.escape(task_id)}\] succeeded", self.worker.log_path.read_text()))


@pytest.fixture(scope="module")
def cluster(broker_url: str, backend_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("queue-browser")
    target = f"rescue-target-{uuid.uuid4().hex[:8]}"  # the module's: not cleaned up after each test
    worker = CeleryWorker(broker_url, backend_url=backend_url, name=f"rescuer-{uuid.uuid4().hex[:8]}", queues=(target,),
                          log_path=directory / "worker.log", cwd=REPO_ROOT, pythonpath=[REPO_ROOT])
    client = Celery("queue-browser-test", broker=broker_url, set_as_current=False)
    client.conf.update(broker_connection_retry_on_startup=False, task_send_sent_event=True)
    server: LiveServer | None = None
    connection = redis.Redis.from_url(broker_url)
    try:
        worker.start()
        server = start_live_server(dashboard_config(broker_url, backend_url), directory, name="dashboard-queues")

        def registered_known() -> bool:
            routing = get(server, "/api/routing")
            return any(row["task"] == UNFURL and worker.hostname in row["registered_on"] for row in routing["tasks"])

        wait_until(registered_known, READY_DEADLINE, "the worker's registered names in /api/routing", server)
        yield Cluster(server, worker, target, client, connection)
    except (ProcessError, LiveServerError) as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        if server is not None:
            server.stop()
        worker.stop()
        client.close()
        connection.close()


def messages(cluster: Cluster, queue: str, **query: int) -> dict[str, Any]:
    suffix = "&".join(f"{key}={value}" for key, value in query.items())
    reply = call(cluster.server, "GET", f"/api/queues/{queue}/messages" + (f"?{suffix}" if suffix else ""))
    assert reply.status == 200, reply
    result: dict[str, Any] = reply.data
    return result


def depth(cluster: Cluster, queue: str) -> int:
    return sum(int(cluster.redis.llen(key)) for key in LAYOUT.queue_keys(queue))


def test_a_peek_shows_the_messages_in_serving_order_and_takes_none(cluster: Cluster) -> None:
    stranded = unique("stranded")
    good = cluster.publish(stranded, UNFURL, 3)
    typo = cluster.publish(stranded, TYPO, 2)

    first = messages(cluster, stranded)
    again = messages(cluster, stranded, limit=2, offset=1)

    assert first["queue"] == stranded and first["depth"] == 5 and depth(cluster, stranded) == 5
    assert [m["id"] for m in first["messages"]] == good + typo  # oldest first, as a worker would receive them
    assert [(m["name"], m["registered"]) for m in first["messages"]] == [(UNFURL, True)] * 3 + [(TYPO, False)] * 2
    assert first["messages"][0]["kwargs"] == {"url": "https://example.com/0"} and first["messages"][0]["args"] == []
    assert first["messages"][4]["did_you_mean"] == UNFURL and first["messages"][0]["did_you_mean"] is None
    assert {"eta", "priority", "retries"} <= first["messages"][0].keys()
    assert [m["id"] for m in again["messages"]] == (good + typo)[1:3] and again["depth"] == 5
    page = call(cluster.server, "GET", f"/queues/{stranded}").text
    assert page.count('class="message unregistered"') == 2 and "No online worker registers" in page


def test_an_empty_or_unknown_queue_is_a_clear_answer(cluster: Cluster) -> None:
    body = messages(cluster, unique("never-used"))
    assert (body["depth"], body["messages"], body["exists"]) == (0, [], False)
    moved = call(cluster.server, "POST", f"/api/queues/{unique('never-used')}/move", {"to": cluster.target})
    assert moved.status == 200 and moved.data["moved"] == 0 and "nothing matched" in moved.data["message"]
    bad = call(cluster.server, "POST", "/api/queues/q/move", {"to": "q"})
    assert bad.status == 400 and "already in that queue" in bad.data["error"]
    assert call(cluster.server, "GET", "/api/queues/q/messages?limit=0").status == 400


def test_moved_messages_run_on_the_target_queue_worker_each_exactly_once(cluster: Cluster) -> None:
    stranded = unique("stranded")
    good = cluster.publish(stranded, UNFURL, 20)
    typo = cluster.publish(stranded, TYPO, 3)

    reply = call(cluster.server, "POST", f"/api/queues/{stranded}/move", {"to": cluster.target, "name": UNFURL})

    assert reply.status == 200 and reply.data["moved"] == 20, reply
    assert [m["id"] for m in messages(cluster, stranded)["messages"]] == typo  # only that name left
    wait_until(lambda: all(cluster.runs(task_id) for task_id in good), RUN_DEADLINE, "every moved task run",
               cluster.server)
    wait_until(lambda: depth(cluster, cluster.target) == 0, RUN_DEADLINE, "the target queue drained")
    assert Counter(cluster.runs(task_id) for task_id in good) == Counter({1: 20})


def test_a_move_by_ids_or_with_a_limit_takes_exactly_those_oldest_first(cluster: Cluster) -> None:
    stranded, parking = unique("stranded"), unique("parking")  # nobody consumes parking: we can look at it
    ids = cluster.publish(stranded, UNFURL, 10)

    by_id = call(cluster.server, "POST", f"/api/queues/{stranded}/move", {"to": parking, "ids": [ids[7], ids[2]]})
    limited = call(cluster.server, "POST", f"/api/queues/{stranded}/move", {"to": parking, "limit": 3})

    assert (by_id.data["moved"], limited.data["moved"]) == (2, 3)
    assert [m["id"] for m in messages(cluster, parking)["messages"]] == [ids[2], ids[7], ids[0], ids[1], ids[3]]
    assert [m["id"] for m in messages(cluster, stranded)["messages"]] == [ids[4], ids[5], ids[6], ids[8], ids[9]]


def test_a_move_keeps_each_message_priority_step(cluster: Cluster) -> None:
    stranded, parking = unique("stranded"), unique("parking")
    low = cluster.publish(stranded, UNFURL, 2, priority=9)
    high = cluster.publish(stranded, UNFURL, 2, priority=0)

    assert [m["id"] for m in messages(cluster, stranded)["messages"]] == high + low  # step 0 is served first
    assert call(cluster.server, "POST", f"/api/queues/{stranded}/move", {"to": parking}).data["moved"] == 4

    assert [m["id"] for m in messages(cluster, parking)["messages"]] == high + low
    assert cluster.redis.llen(parking) == 2 and cluster.redis.llen(f"{parking}\x06\x169") == 2
    moved = json.loads(cluster.redis.lindex(parking, 0) or b"{}")
    assert moved["properties"]["delivery_info"]["routing_key"] == parking  # a restore would land here


def test_delete_by_name_removes_only_that_name(cluster: Cluster) -> None:
    stranded = unique("stranded")
    kept = cluster.publish(stranded, UNFURL, 2)
    cluster.publish(stranded, TYPO, 4)
    kept += cluster.publish(stranded, UNFURL, 1)

    reply = call(cluster.server, "POST", f"/api/queues/{stranded}/delete", {"name": TYPO})

    assert reply.status == 200 and reply.data["deleted"] == 4, reply
    assert [m["id"] for m in messages(cluster, stranded)["messages"]] == kept
    assert call(cluster.server, "POST", f"/api/queues/{stranded}/delete", {}).status == 400


def test_a_purge_removes_exactly_that_queue_messages(cluster: Cluster) -> None:
    purged, neighbour = unique("stranded"), unique("neighbour")
    cluster.publish(purged, UNFURL, 3, priority=0)
    cluster.publish(purged, TYPO, 2, priority=6)
    others = cluster.publish(neighbour, UNFURL, 3)

    refused = call(cluster.server, "POST", f"/api/queues/{purged}/purge", {"confirm": neighbour})
    assert refused.status == 400 and depth(cluster, purged) == 5
    reply = call(cluster.server, "POST", f"/api/queues/{purged}/purge", {"confirm": purged})

    assert reply.status == 200 and reply.data["purged"] == 5, reply
    assert depth(cluster, purged) == 0
    assert [m["id"] for m in messages(cluster, neighbour)["messages"]] == others

    actions = get(cluster.server, f"/api/audit/actions?target={purged}")["entries"]
    assert [(entry["action"], entry["outcome"]) for entry in actions] == [("queue.purge", "done"),
                                                                         ("queue.purge", "refused")]
    assert json.loads(actions[0]["detail"])["purged"] == 5


def test_an_unreachable_broker_is_a_503_with_the_reason() -> None:
    app = create_app(config_from_mapping({"broker_url": "redis://127.0.0.1:1/0", "audit": {"path": ""},
                                          "broker_timeout": 1}), live=False)
    try:
        client = app.test_client()
        peek = client.get("/api/queues/q1/messages")
        move = client.post("/api/queues/q1/move", json={"to": "q2"})
        page = client.get("/queues/q1")
    finally:
        services(app).close()
    assert peek.status_code == 503 and "did not answer" in peek.get_json()["error"]
    assert move.status_code == 503 and move.get_json()["moved"] == 0
    assert page.status_code == 503 and b"did not answer" in page.data


# -- a broker failure halfway --------------------------------------------------------------------------------


def kombu_message(task_id: str) -> str:
    """A protocol 2 message as kombu's Redis transport stores it (what send_task writes)."""
    body = base64.b64encode(json.dumps([[], {"url": "https://example.com"}, {}]).encode()).decode()
    return json.dumps({
        "body": body, "content-encoding": "utf-8", "content-type": "application/json",
        "headers": {"lang": "py", "task": UNFURL, "id": task_id, "retries": 0, "eta": None, "root_id": task_id},
        "properties": {"correlation_id": task_id, "delivery_mode": 2, "priority": 0, "body_encoding": "base64",
                       "delivery_tag": task_id, "delivery_info": {"exchange": "", "routing_key": "source"}},
    })


def test_a_move_interrupted_by_killing_redis_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    # appendfsync always: every write (a whole Lua batch) is on disk before Redis answers it, so the restarted
    # server holds exactly what the mover was told, plus at most the batch whose answer the kill cut off.
    server = RedisServer(directory=tmp_path, log_path=tmp_path / "redis.log",
                         extra_args=("--appendonly", "yes", "--appendfsync", "always"))
    total = 20_000
    ids = [f"id-{i:05d}" for i in range(total)]
    try:
        server.start()
        connection = redis.Redis.from_url(server.url(0))
        with connection.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.lpush("source", kombu_message(task_id))
            pipe.execute()
        browser = RedisQueueBrowser(RedisBrokerInspector(server.url(0), {}, 2.0), batch=100)
        outcome: dict[str, Any] = {}

        def move() -> None:
            try:
                outcome["moved"] = browser.move("source", "target", Selection())
            except ActionInterrupted as exc:
                outcome["interrupted"] = exc

        mover = threading.Thread(target=move)
        mover.start()
        wait_until(lambda: connection.llen("target") >= 2_000, 20.0, "the move halfway")
        server.kill()
        mover.join(timeout=30)
        assert not mover.is_alive()
        connection.close()
        browser.close()

        server.restart()
        connection = redis.Redis.from_url(server.url(0))
        left = [json.loads(raw)["headers"]["id"] for raw in connection.lrange("source", 0, -1)]
        moved = [json.loads(raw)["headers"]["id"] for raw in connection.lrange("target", 0, -1)]
        connection.close()
    finally:
        server.stop()

    interrupted = outcome.get("interrupted")
    assert isinstance(interrupted, ActionInterrupted), outcome
    print(f"\n[queues] killed after {interrupted.done} reported moved; on restart {len(moved)} in the target, "
          f"{len(left)} still in the source")
    assert 0 < len(moved) < total and len(moved) - interrupted.done in (0, 100)  # at most the unanswered batch
    assert sorted(left + moved) == ids  # nothing lost, nothing twice
    assert list(reversed(moved)) == ids[:len(moved)]  # the oldest went first, in order


def test_a_worker_taking_messages_during_a_move_is_neither_lost_nor_duplicated(broker_url: str) -> None:
    # Between each read of a window and its atomic move, a "worker" pops the oldest message (BRPOP's end): the
    # script sees the tail changed and the window is read again. Selecting one name of two makes the mover leave
    # messages behind at the tail, the case where positions matter.
    source, target = unique("busy"), unique("busy-target")
    connection = redis.Redis.from_url(broker_url)
    ids = [f"{source}-{i:03d}" for i in range(100)]
    for index, task_id in enumerate(ids):
        message = json.loads(kombu_message(task_id))
        message["headers"]["task"] = TYPO if index % 2 else UNFURL
        connection.lpush(source, json.dumps(message))
    browser = RedisQueueBrowser(RedisBrokerInspector(broker_url, {}, 2.0), batch=10)
    taken_by_worker: list[str] = []
    read = browser._client.lrange

    def read_then_a_worker_takes_one(*args: Any) -> Any:
        window = read(*args)
        popped = connection.rpop(source)
        if isinstance(popped, bytes):
            taken_by_worker.append(json.loads(popped)["headers"]["id"])
        return window

    browser._client.lrange = read_then_a_worker_takes_one  # type: ignore[method-assign,assignment]
    try:
        moved = browser.move(source, target, Selection(name=TYPO))
    finally:
        browser.close()
    left = [json.loads(raw)["headers"] for raw in connection.lrange(source, 0, -1)]
    arrived = [json.loads(raw)["headers"] for raw in connection.lrange(target, 0, -1)]
    connection.delete(source, target)
    connection.close()

    assert moved == len(arrived) > 0 and taken_by_worker
    assert sorted([h["id"] for h in left] + [h["id"] for h in arrived] + taken_by_worker) == ids
    assert {h["task"] for h in arrived} == {TYPO} and TYPO not in {h["task"] for h in left}


# -- who may act, and what a page shows of hostile messages ---------------------------------------------------


@pytest.fixture
def guarded(broker_url: str, tmp_path: Path) -> Iterator[Any]:
    """An in-process app on the session's Redis with a viewer and an operator, auditing to tmp_path."""
    from werkzeug.security import generate_password_hash

    users = [{"name": name, "password_hash": generate_password_hash(f"{name}-pw", "pbkdf2:sha256:1000"),
              "role": name} for name in ("viewer", "operator")]
    app = create_app(config_from_mapping({"broker_url": broker_url, "secret_key": "s" * 32,
                                          "audit": {"path": str(tmp_path / "audit.sqlite3")},
                                          "auth": {"users": users}}), live=False)
    try:
        yield app
    finally:
        services(app).close()


def as_user(name: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{name}-pw".encode()).decode()}


def test_a_viewer_may_browse_but_not_move_purge_or_delete(guarded: Any, broker_url: str) -> None:
    stranded = unique("guarded")
    client = Celery("guarded-sender", broker=broker_url, set_as_current=False)
    client.send_task(UNFURL, queue=stranded)
    client.close()
    http = guarded.test_client()
    bodies = {"move": {"to": unique("elsewhere")}, "purge": {"confirm": stranded}, "delete": {"name": UNFURL}}

    assert http.get(f"/api/queues/{stranded}/messages", headers=as_user("viewer")).get_json()["depth"] == 1
    for action, body in bodies.items():
        refused = http.post(f"/api/queues/{stranded}/{action}", json=body, headers=as_user("viewer"))
        assert refused.status_code == 403 and "viewer" in refused.get_json()["error"], action
    assert http.get(f"/api/queues/{stranded}/messages", headers=as_user("viewer")).get_json()["depth"] == 1
    done = http.post(f"/api/queues/{stranded}/purge", json=bodies["purge"], headers=as_user("operator"))
    assert done.status_code == 200 and done.get_json()["purged"] == 1
    entry = http.get("/api/audit/actions?action=queue.*", headers=as_user("viewer")).get_json()["entries"][0]
    assert (entry["who"], entry["action"], entry["target"], entry["outcome"]) == ("operator", "queue.purge",
                                                                                  stranded, "done")


def test_everything_from_a_message_is_escaped_on_the_page(broker_url: str) -> None:
    stranded = unique("hostile")
    hostile = "<img src=x onerror=alert(1)>"
    client = Celery("hostile-sender", broker=broker_url, set_as_current=False)
    client.send_task(hostile, args=[hostile], kwargs={"k": hostile}, queue=stranded)
    client.close()
    app = create_app(config_from_mapping({"broker_url": broker_url, "audit": {"path": ""}}), live=False)
    try:
        page = app.test_client().get(f"/queues/{stranded}").get_data(as_text=True)
    finally:
        services(app).close()
    assert "<img" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


def test_a_broker_that_cannot_peek_answers_409_with_the_depth_and_the_page_says_why(broker_url: str) -> None:
    # RabbitMQ without management_url, played by the Redis browser refusing to peek (the real one is tested in
    # test_queue_browser_rabbitmq.py): the API answers 409 with the depth, the page shows the reason, not a table.
    from dashboard.exceptions import CannotPeek

    class NoPeek(RedisQueueBrowser):
        def peek(self, queue: str, limit: int, offset: int = 0) -> Any:
            raise CannotPeek(f"queue {queue!r} cannot be shown without taking its messages")

    stranded = unique("no-peek")
    client = Celery("no-peek-sender", broker=broker_url, set_as_current=False)
    client.send_task(UNFURL, queue=stranded)
    client.close()
    app = create_app(config_from_mapping({"broker_url": broker_url, "audit": {"path": ""}}), live=False)
    queues = services(app).queues
    original = queues.browser
    queues.browser = NoPeek(RedisBrokerInspector(broker_url, {}, 2.0))
    try:
        http = app.test_client()
        api = http.get(f"/api/queues/{stranded}/messages")
        page = http.get(f"/queues/{stranded}").get_data(as_text=True)
    finally:
        queues.browser.close()
        queues.browser = original
        services(app).close()
    assert api.status_code == 409 and api.get_json()["depth"] == 1 and "without taking" in api.get_json()["error"]
    assert 'class="failure cannot-peek"' in page and 'data-depth="1"' in page and "tr class=\"message" not in page


def test_a_global_keyprefix_is_honoured(broker_url: str) -> None:
    options = {"global_keyprefix": "tenant-a:"}
    stranded, parking = unique("prefixed"), unique("prefixed-parking")
    client = Celery("prefixed-sender", broker=broker_url, set_as_current=False)
    client.conf.broker_transport_options = options
    sent = [client.send_task(UNFURL, queue=stranded, priority=priority).id for priority in (0, 9)]
    client.close()
    app = create_app(config_from_mapping({"broker_url": broker_url, "audit": {"path": ""},
                                          "broker_transport_options": options}), live=False)
    connection = redis.Redis.from_url(broker_url)
    try:
        http = app.test_client()
        peeked = http.get(f"/api/queues/{stranded}/messages").get_json()
        moved = http.post(f"/api/queues/{stranded}/move", json={"to": parking}).get_json()
        keys = {key.decode() if isinstance(key, bytes) else key for key in connection.keys(f"*{parking}*")}
    finally:
        services(app).close()
        connection.close()
    assert [m["id"] for m in peeked["messages"]] == sent and peeked["depth"] == 2
    assert moved["moved"] == 2
    assert keys == {f"tenant-a:{parking}", f"tenant-a:{parking}\x06\x169"}


def test_the_alerts_link_to_the_queue_page() -> None:
    # An unregistered name that was sent: its alert links to the queue the API sends it to (no broker needed).
    app = create_app(config_from_mapping({"broker_url": "redis://127.0.0.1:1/0", "audit": {"path": ""},
                                          "monitor": {"alert_grace": 0}}), live=False)
    try:
        svc = services(app)
        svc.routing.inspected_at = 1.0  # as if the workers had been asked (there are none)
        svc.routing.note_event({"type": "task-sent", "name": "billing.typo", "uuid": "t1"})
        svc.routing.run_comparison()
        page = app.test_client().get("/alerts").get_data(as_text=True)
    finally:
        services(app).close()
    assert 'data-kind="unregistered_task"' in page and '<a class="browse" href="/queues/celery">' in page
