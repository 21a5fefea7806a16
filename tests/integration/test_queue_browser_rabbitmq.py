"""The queue browser and rescue on a real RabbitMQ node (management plugin on), a real stub worker and
`dispatch-dashboard serve` with `management_url`: peek through the management API's get-with-requeue (order and
depth unchanged), moves that run on the target queue's worker exactly once each, delete by name, purge; and the
clear refusal to peek without the management API.

The node is this module's own (tests.integration.test_rabbitmq's fixture: skipped with the reason where RabbitMQ
cannot be installed). Queue names are unique to each test.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from celery import Celery

from dashboard.exceptions import ActionInterrupted, BrokerUnavailable, CannotPeek, QueueNotFound
from dashboard.model.messages import Selection
from dashboard.services.broker.amqp import AmqpBrokerInspector
from dashboard.services.broker.amqp_queues import AmqpQueueBrowser
from dashboard.services.processes import CeleryWorker, ProcessError
from tests.integration.test_rabbitmq import rabbit  # noqa: F401 - the module-scoped node fixture
from tests.support.http import call, get
from tests.support.live_server import REPO_ROOT, LiveServer, LiveServerError, dashboard_config, start_live_server
from tests.support.rabbitmq_server import RabbitMQServer
from tests.support.waits import wait_until

UNFURL = "worker.tasks.link.unfurl"
TYPO = "worker.tasks.link.unfurll"
READY_DEADLINE = 30.0
RUN_DEADLINE = 20.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class AmqpCluster:
    rabbit: RabbitMQServer
    server: LiveServer
    worker: CeleryWorker
    target: str
    client: Celery

    def publish(self, queue: str, name: str, count: int) -> list[str]:
        return [self.client.send_task(name, kwargs={"url": f"https://example.com/{i}"}, queue=queue).id
                for i in range(count)]

    def runs(self, task_id: str) -> int:
        return len(re.findall(rf"\[{re.escape(task_id)}\] succeeded", self.worker.log_path.read_text()))

    def browser(self, *, management: bool = True) -> AmqpQueueBrowser:
        options = {"management_url": self.rabbit.management_url} if management else {}
        return AmqpQueueBrowser(AmqpBrokerInspector(self.rabbit.url(), options, 2.0))


@pytest.fixture(scope="module")
def amqp_cluster(rabbit: RabbitMQServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AmqpCluster]:  # noqa: F811
    directory = tmp_path_factory.mktemp("queue-browser-amqp")
    target = unique("amqp-target")
    worker = CeleryWorker(rabbit.url(), name=unique("amqp-rescuer"), queues=(target,),
                          log_path=directory / "worker.log", cwd=REPO_ROOT, pythonpath=[REPO_ROOT])
    client = Celery("queue-browser-amqp", broker=rabbit.url(), set_as_current=False)
    # Publisher confirms: send_task returns once RabbitMQ holds the message, so a peek right after sees it.
    client.conf.update(broker_connection_retry_on_startup=False, broker_transport_options={"confirm_publish": True})
    server: LiveServer | None = None
    try:
        worker.start()
        config = dashboard_config(rabbit.url(), None,
                                  broker_transport_options={"management_url": rabbit.management_url})
        server = start_live_server(config, directory, name="dashboard-amqp-queues")

        def registered_known() -> bool:
            routing = get(server, "/api/routing")
            return any(row["task"] == UNFURL and worker.hostname in row["registered_on"] for row in routing["tasks"])

        wait_until(registered_known, READY_DEADLINE, "the worker's registered names in /api/routing", server)
        yield AmqpCluster(rabbit, server, worker, target, client)
    except (ProcessError, LiveServerError) as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        if server is not None:
            server.stop()
        worker.stop()
        client.close()


def messages(cluster: AmqpCluster, queue: str) -> dict[str, Any]:
    reply = call(cluster.server, "GET", f"/api/queues/{queue}/messages")
    assert reply.status == 200, reply
    result: dict[str, Any] = reply.data
    return result


def test_a_peek_through_the_management_api_puts_every_message_back_in_place(amqp_cluster: AmqpCluster) -> None:
    stranded = unique("stranded")
    ids = amqp_cluster.publish(stranded, UNFURL, 3) + amqp_cluster.publish(stranded, TYPO, 1)

    first = messages(amqp_cluster, stranded)
    second = messages(amqp_cluster, stranded)

    assert first["depth"] == 4 and first["requeued"] is True, first
    assert [m["id"] for m in first["messages"]] == ids == [m["id"] for m in second["messages"]]
    assert [m["registered"] for m in first["messages"]] == [True, True, True, False]
    assert first["messages"][0]["kwargs"] == {"url": "https://example.com/0"}
    assert second["depth"] == 4 and second["messages"][0]["redelivered"] is True  # the trade-off, visible


def test_without_the_management_api_a_peek_is_refused_with_the_depth(amqp_cluster: AmqpCluster) -> None:
    stranded = unique("stranded")
    amqp_cluster.publish(stranded, UNFURL, 2)
    browser = amqp_cluster.browser(management=False)
    try:
        with pytest.raises(CannotPeek, match="management_url"):
            browser.peek(stranded, 10)
        assert browser.depth(stranded) == 2
        assert browser.peek(unique("absent"), 10).exists is False
        with pytest.raises(QueueNotFound):
            browser.purge(unique("absent"))
    finally:
        browser.close()


def test_moved_messages_run_on_the_target_queue_worker_each_exactly_once(amqp_cluster: AmqpCluster) -> None:
    stranded = unique("stranded")
    good = amqp_cluster.publish(stranded, UNFURL, 15)
    typo = amqp_cluster.publish(stranded, TYPO, 2)

    reply = call(amqp_cluster.server, "POST", f"/api/queues/{stranded}/move",
                 {"to": amqp_cluster.target, "name": UNFURL})

    assert reply.status == 200 and reply.data["moved"] == 15, reply
    wait_until(lambda: all(amqp_cluster.runs(task_id) for task_id in good), RUN_DEADLINE, "every moved task run",
               amqp_cluster.server)
    assert Counter(amqp_cluster.runs(task_id) for task_id in good) == Counter({1: 15})
    left = messages(amqp_cluster, stranded)  # the others were requeued when the mover's connection closed
    assert [m["id"] for m in left["messages"]] == typo and left["depth"] == 2


def test_a_move_to_a_new_queue_declares_it_and_keeps_the_order(amqp_cluster: AmqpCluster) -> None:
    stranded, parking = unique("stranded"), unique("parking")
    ids = amqp_cluster.publish(stranded, UNFURL, 6)
    browser = amqp_cluster.browser()
    try:
        assert browser.move(stranded, parking, Selection(ids=frozenset(ids[1:3]))) == 2
        assert browser.move(stranded, parking, Selection(limit=2)) == 2
        assert [m.id for m in browser.peek(parking, 10).messages] == [ids[1], ids[2], ids[0], ids[3]]
        assert [m.id for m in browser.peek(stranded, 10).messages] == [ids[4], ids[5]]
    finally:
        browser.close()


def test_delete_by_name_and_purge_take_exactly_theirs(amqp_cluster: AmqpCluster) -> None:
    stranded, neighbour = unique("stranded"), unique("neighbour")
    kept = amqp_cluster.publish(stranded, UNFURL, 2)
    amqp_cluster.publish(stranded, TYPO, 3)
    others = amqp_cluster.publish(neighbour, UNFURL, 2)

    deleted = call(amqp_cluster.server, "POST", f"/api/queues/{stranded}/delete", {"name": TYPO})
    assert deleted.status == 200 and deleted.data["deleted"] == 3, deleted
    assert [m["id"] for m in messages(amqp_cluster, stranded)["messages"]] == kept

    purged = call(amqp_cluster.server, "POST", f"/api/queues/{stranded}/purge", {"confirm": stranded})
    assert purged.status == 200 and purged.data["purged"] == 2, purged
    assert messages(amqp_cluster, stranded)["depth"] == 0
    assert [m["id"] for m in messages(amqp_cluster, neighbour)["messages"]] == others
    missing = call(amqp_cluster.server, "POST", f"/api/queues/{unique('absent')}/move", {"to": neighbour})
    assert missing.status == 404 and "does not exist" in missing.data["error"]


def drain_ids(url: str, queue: str) -> list[str]:
    """Take every message of `queue` (after the test, nothing else needs them) and return their task ids."""
    import kombu.connection
    import kombu.simple

    found: list[str] = []
    with kombu.connection.Connection(url, connect_timeout=5) as connection:
        simple = kombu.simple.SimpleQueue(connection, queue, no_ack=True)
        try:
            while True:
                message = simple.get(timeout=1.0)
                found.append(str(message.headers["id"]))
        except simple.Empty:
            pass
        finally:
            simple.close()
    return found


class CuttableLink:
    """A TCP forwarder to the node that can be cut, like a network failure: every socket closed at once."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(self.target)
                self.sockets += [client, upstream]
                for source, sink in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)

    def cut(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def test_a_move_cut_off_from_the_broker_loses_nothing_and_repeats_at_most_the_last(
        amqp_cluster: AmqpCluster) -> None:
    # The connection fails (the node stays up): RabbitMQ requeues every delivery not acknowledged, in place; the
    # acks it received stand. Only a message whose ack was still on its way can be in both queues.
    stranded, parking = unique("stranded"), unique("parking")
    ids = amqp_cluster.publish(stranded, UNFURL, 2_000)
    link = CuttableLink(amqp_cluster.rabbit.port)
    cut_off = AmqpQueueBrowser(AmqpBrokerInspector(f"amqp://guest:guest@127.0.0.1:{link.port}//", {}, 2.0))
    watcher = amqp_cluster.browser(management=False)
    outcome: dict[str, Any] = {}

    def move() -> None:
        try:
            outcome["moved"] = cut_off.move(stranded, parking, Selection())
        except BrokerUnavailable as exc:
            outcome["interrupted"] = exc

    mover = threading.Thread(target=move)
    try:
        mover.start()
        wait_until(lambda: watcher.depth(parking) >= 200, 30.0, "the move halfway")
        link.cut()
        mover.join(timeout=30)
        assert not mover.is_alive()
        wait_until(lambda: watcher.depth(stranded) + watcher.depth(parking) >= len(ids), 10.0, "the requeue")
    finally:
        watcher.close()
        cut_off.close()
    left, moved = drain_ids(amqp_cluster.rabbit.url(), stranded), drain_ids(amqp_cluster.rabbit.url(), parking)

    interrupted = outcome.get("interrupted")
    assert isinstance(interrupted, ActionInterrupted), outcome
    in_both = len(left) + len(moved) - len(ids)
    print(f"\n[rabbitmq] cut off after {interrupted.done} reported moved: {len(moved)} in the target, {len(left)} in "
          f"the source, {in_both} in both")
    assert set(left) | set(moved) == set(ids) and 0 < len(moved) < len(ids)
    assert len(set(moved)) == len(moved) and len(set(left)) == len(left) and in_both <= 1
    assert moved == ids[:len(moved)]  # oldest first, in order


def test_a_move_interrupted_by_killing_rabbitmq_loses_nothing(amqp_cluster: AmqpCluster) -> None:
    # Last in the module: the node is SIGKILLed and restarted. Celery's queues are durable and its messages
    # persistent, so the restarted node holds what it had confirmed: every message is in the source or in the
    # target (republished, confirmed). Some are in both: RabbitMQ had acknowledged their acks but not yet
    # written them (measured: 81 of 316 moved, and 101 of 301 with the acks in transactions committed every 100
    # — tx.commit did not make them durable either), so a crash duplicates, it never loses.
    node = amqp_cluster.rabbit
    stranded, parking = unique("stranded"), unique("parking")
    ids = amqp_cluster.publish(stranded, UNFURL, 3_000)
    browser = amqp_cluster.browser()
    outcome: dict[str, Any] = {}

    def move() -> None:
        try:
            outcome["moved"] = browser.move(stranded, parking, Selection())
        except BrokerUnavailable as exc:
            outcome["interrupted"] = exc

    mover = threading.Thread(target=move)
    watcher = amqp_cluster.browser(management=False)
    try:
        mover.start()
        wait_until(lambda: watcher.depth(parking) >= 300, 30.0, "the move halfway")
        node.kill()
        mover.join(timeout=30)
        assert not mover.is_alive()
    finally:
        watcher.close()
        browser.close()
    node.restart()
    left, moved = drain_ids(node.url(), stranded), drain_ids(node.url(), parking)

    interrupted = outcome.get("interrupted")
    assert isinstance(interrupted, BrokerUnavailable), outcome
    done = interrupted.done if isinstance(interrupted, ActionInterrupted) else 0
    print(f"\n[rabbitmq] killed after {done} reported moved; on restart {len(moved)} in the target, {len(left)} in "
          f"the source, {len(left) + len(moved) - len(ids)} in both")
    assert set(left) | set(moved) == set(ids)  # nothing lost
    assert len(set(moved)) == len(moved) and len(set(left)) == len(left)  # never twice in one queue
    assert 0 < len(moved) < len(ids)
