"""RabbitMQ (amqp://) as the broker: a real node of this module's own, a stub worker and the dashboard on it.

The node runs in the foreground on free loopback ports with its own epmd, node name, directories and cookie
(tests.support.rabbitmq_server), so a system RabbitMQ on 5672/4369 is never touched. The management plugin
is enabled on a free port to exercise the inspector's optional queue listing.

Checked here: dispatch -> 202 and SUCCESS over amqp events; the routing comparison and the orphaned queue of a
forced send; AmqpBrokerInspector against the node (depths, consumer counts, absent queues, the management listing,
a hung and a stopped broker, reconnecting after a restart). The tests share the node and run in file order; the
outage test comes last because it kills the node. Measured times are printed (run with `-s`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import tomllib
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import amqp
import kombu.connection
import kombu.entity
import pytest

from dashboard.exceptions import BrokerUnavailable, ConfigError
from dashboard.model.routing import BrokerQueue
from dashboard.services.broker import broker_inspector
from dashboard.services.broker.amqp import AmqpBrokerInspector
from dashboard.services.processes import CeleryWorker, ProcessError, free_port
from tests.support.http import Reply, call, get
from tests.support.live_server import (
    EXAMPLE_CONFIG,
    REPO_ROOT,
    LiveServer,
    LiveServerError,
    dashboard_config,
    start_live_server,
)
from tests.support.rabbitmq_server import RabbitMQServer, find_rabbitmq_server
from tests.support.waits import wait_until

TRANSCRIBE = "worker.tasks.stt.transcribe"
SUMMARIZE_NOTE = "worker.tasks.llm.summarize_note"  # routed to "llm", which the worker here does not consume
TRANSLATE = "worker.tasks.llm.translate"  # the example config's deliberate mismatch, left out here
WORKER_QUEUES = ("stt", "default")
INSTALL_TIMEOUT = 600.0
READY_DEADLINE = 20.0  # worker online and inspected, a first comparison made
TASK_DEADLINE = 15.0
ALERT_DEADLINE = 20.0  # alert_grace (1 s) + inspection every 0.5 s + routing every 0.5 s, with slack
INSPECTOR_TIMEOUT = 1.0



# -- the node ----------------------------------------------------------------------------------------------------


def _install_rabbitmq() -> str | None:
    """Install Debian's rabbitmq-server when root with apt-get; None when done, else why not."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "not root or no apt-get"
    environ = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "rabbitmq-server"]
    for attempt in ([install], [["apt-get", "update", "-qq"], install]):  # update only when the lists are stale
        try:
            for argv in attempt:
                subprocess.run(argv, env=environ, check=True, capture_output=True, timeout=INSTALL_TIMEOUT)
            return None
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            output = getattr(exc, "stderr", b"") or b""
            reason = f"{exc}: {output.decode(errors='replace').strip()[-300:]}"
    return reason


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQServer]:
    """This module's RabbitMQ node (management plugin on), installed with apt-get first if it must be and can be."""
    try:
        find_rabbitmq_server()
    except ProcessError:
        started = time.monotonic()
        problem = _install_rabbitmq()
        if problem is not None:
            pytest.skip(f"rabbitmq-server is not installed and cannot be installed here ({problem}); "
                        "install Debian's package: apt-get install rabbitmq-server")
        print(f"\n[rabbitmq] apt-get install rabbitmq-server took {time.monotonic() - started:.1f} s")
    directory = tmp_path_factory.mktemp("rabbitmq")
    server = RabbitMQServer(management=True, directory=directory / "node", log_path=directory / "rabbitmq.log")
    try:
        server.start()
    except ProcessError as exc:
        pytest.fail(str(exc), pytrace=False)
    print(f"\n[rabbitmq] {server.nodename} {server.version} ready on port {server.port} in {server.started_in:.2f} s")
    try:
        yield server
    finally:
        server.kill()  # a clean shutdown with the management plugin takes ~6 s; the data is thrown away
        server.stop()  # then our epmd, and the directory


# -- HTTP helpers ------------------------------------------------------------------------------------------------


def dispatch(server: LiveServer, name: str, kwargs: Mapping[str, Any], *, force: bool = False) -> Reply:
    body: dict[str, Any] = {"name": name, "kwargs": dict(kwargs)}
    if force:
        body["force"] = True
    return call(server, "POST", "/api/dispatch", body)


def row(rows: list[dict[str, Any]], key: str, value: str) -> dict[str, Any] | None:
    return next((item for item in rows if item[key] == value), None)


# -- the cluster: a worker and the dashboard ---------------------------------------------------------------------


@dataclass
class Cluster:
    rabbit: RabbitMQServer
    worker: CeleryWorker
    server: LiveServer


def _config_without_translate() -> dict[str, Any]:
    base = tomllib.loads(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    del base["routes"][TRANSLATE]
    del base["tasks"][TRANSLATE]
    return base


@pytest.fixture(scope="module")
def cluster(rabbit: RabbitMQServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A stub worker consuming stt and default, and `dispatch-dashboard serve`, both on the node; no backend."""
    directory = tmp_path_factory.mktemp("rabbitmq-cluster")
    worker = CeleryWorker(rabbit.url(), name="amqp-stub", queues=WORKER_QUEUES, log_path=directory / "worker.log",
                          cwd=REPO_ROOT, pythonpath=[REPO_ROOT])
    server: LiveServer | None = None
    started = time.monotonic()
    try:
        worker.start()
        worker_ready = time.monotonic() - started
        server = start_live_server(dashboard_config(rabbit.url(), None, base=_config_without_translate()),
                                   directory, name="dashboard-amqp")

        def inspected() -> bool:
            body = get(server, "/api/routing")
            found = row(body["tasks"], "task", SUMMARIZE_NOTE)
            return body["compared_at"] is not None and found is not None and found["registered_on"] == [
                worker.hostname]

        wait_until(inspected, READY_DEADLINE, "first comparison with the worker", server)
        print(f"\n[rabbitmq] worker ready (ping over amqp) in {worker_ready:.2f} s; worker + dashboard + first "
              f"comparison in {time.monotonic() - started:.2f} s")
        yield Cluster(rabbit, worker, server)
    except (ProcessError, LiveServerError) as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        if server is not None:
            server.stop()
        worker.stop()


# -- the tests ---------------------------------------------------------------------------------------------------


def test_dispatch_over_amqp_reaches_success_through_events(cluster: Cluster) -> None:
    server = cluster.server
    started = time.monotonic()
    reply = dispatch(server, TRANSCRIBE, {"audio_url": "https://example.com/a.wav"})
    sent_in = time.monotonic() - started
    assert reply.status == 202, reply
    assert (reply.data["queue"], reply.data["routing_key"]) == ("stt", "stt")
    task_id = reply.data["task_id"]

    def succeeded() -> dict[str, Any] | None:
        found = call(server, "GET", f"/api/tasks/{task_id}")
        return found.data if found.status == 200 and found.data.get("state") == "SUCCESS" else None

    task = wait_until(succeeded, TASK_DEADLINE, f"SUCCESS of {task_id}", server)
    print(f"\n[rabbitmq] dispatch answered 202 in {sent_in * 1000:.0f} ms; SUCCESS seen through events after "
          f"{time.monotonic() - started:.2f} s")
    assert task["name"] == TRANSCRIBE
    status = get(server, "/api/status")
    assert status["broker"] == "live", status


def test_route_to_unconsumed_queue_is_orphaned_and_forced_send_waits_there(cluster: Cluster) -> None:
    server, rabbit = cluster.server, cluster.rabbit
    body = get(server, "/api/routing")
    assert body["inspect_error"] is None, body
    task = row(body["tasks"], "task", SUMMARIZE_NOTE)
    assert task is not None
    assert (task["api_queue"], task["status"], task["consumers"]) == ("llm", "orphaned", [])
    assert task["registered_on"] == [cluster.worker.hostname]
    stt = row(body["queues"], "name", "stt")
    assert stt is not None and stt["consumers"] == [cluster.worker.hostname]

    kwargs = {"note_id": "amqp-orphan", "max_words": 5}
    refused = dispatch(server, SUMMARIZE_NOTE, kwargs)
    assert refused.status == 409 and refused.data["queue"] == "llm", refused
    forced = dispatch(server, SUMMARIZE_NOTE, kwargs, force=True)
    assert forced.status == 202 and forced.data["queue"] == "llm", forced

    # Celery declared "llm" on publish: the message waits there with nobody consuming (works without wiring).
    inspector = AmqpBrokerInspector(rabbit.url(), {}, INSPECTOR_TIMEOUT)
    try:
        stats = {stat.name: stat for stat in inspector.stats(["llm", "stt"])}
    finally:
        inspector.close()
    assert stats["llm"].exists and stats["llm"].depth is not None and stats["llm"].depth >= 1, stats
    assert stats["llm"].consumers == 0 and stats["stt"].consumers == 1, stats

    factory_made = broker_inspector(rabbit.url(), {}, INSPECTOR_TIMEOUT)  # what the dashboard reads depths with
    factory_made.close()
    assert isinstance(factory_made, AmqpBrokerInspector)
    started = time.monotonic()

    def orphaned_llm() -> dict[str, Any] | None:
        queue = row(get(server, "/api/routing")["queues"], "name", "llm")
        return queue if queue is not None and queue["status"] == "orphaned" else None

    llm = wait_until(orphaned_llm, ALERT_DEADLINE, "'llm' queue orphaned with a depth", server)
    assert llm["depth"] >= 1 and llm["consumers"] == []
    assert get(server, "/api/routing")["broker_error"] is None

    def alert() -> dict[str, Any] | None:
        return row(get(server, "/api/alerts"), "key", "orphaned_queue:llm")

    raised = wait_until(alert, ALERT_DEADLINE, "orphaned_queue:llm in /api/alerts", server)
    print(f"\n[rabbitmq] orphaned_queue:llm alert {time.monotonic() - started:.2f} s after the forced send")
    assert raised["kind"] == "orphaned_queue" and raised["queue"] == "llm"


def test_a_queue_declared_with_other_arguments_is_a_clear_503_and_dispatch_goes_on(cluster: Cluster) -> None:
    # RabbitMQ refuses to redeclare a queue with other arguments (406 PRECONDITION_FAILED, closing the channel):
    # a queue the workers declared with x-max-priority, published to by an API that declares it plainly.
    server, rabbit = cluster.server, cluster.rabbit
    queue = f"prio-{uuid.uuid4().hex[:8]}"
    with kombu.connection.Connection(rabbit.url(), connect_timeout=5) as connection:
        bound = kombu.entity.Queue(queue, kombu.entity.Exchange(queue, type="direct"), routing_key=queue,
                            queue_arguments={"x-max-priority": 10})(connection.default_channel)
        bound.declare()
        try:
            started = time.monotonic()
            body = {"name": TRANSCRIBE, "kwargs": {"audio_url": "https://example.com/p.wav"},
                    "options": {"queue": queue}, "force": True}
            refused = call(server, "POST", "/api/dispatch", body)
            answered_in = time.monotonic() - started
            print(f"\n[rabbitmq] dispatch into a queue with other arguments: {refused.status} in "
                  f"{answered_in * 1000:.0f} ms: {refused.data}")
            assert refused.status == 503, refused
            assert "PRECONDITION_FAILED" in refused.data["error"] and "x-max-priority" in refused.data["error"]
            assert "may still have been stored" not in refused.data["error"]  # RabbitMQ refused it: nothing was
            assert answered_in < 5.0
            # The closed channel is not left behind: the next dispatch goes through.
            after = dispatch(server, TRANSCRIBE, {"audio_url": "https://example.com/after.wav"})
            assert after.status == 202, after
            entry = get(server, "/api/tasks?limit=1")
            assert entry["total"] >= 1
        finally:
            bound.delete()


def test_inspector_depths_consumer_counts_and_absent_queues(rabbit: RabbitMQServer) -> None:
    url = rabbit.url()
    with kombu.connection.Connection(url, connect_timeout=2) as producer, \
            kombu.connection.Connection(url, connect_timeout=2) as listener:
        channel = producer.channel()
        channel.queue_declare("amqp-three", durable=False, auto_delete=False)
        for number in range(3):
            channel.basic_publish(amqp.Message(f"m{number}"), exchange="", routing_key="amqp-three")
        channel.queue_declare("amqp-consumed", durable=False, auto_delete=False)
        listener.channel().basic_consume("amqp-consumed", callback=lambda message: None)

        inspector = AmqpBrokerInspector(url, {}, INSPECTOR_TIMEOUT)
        try:
            started = time.monotonic()
            stats = {stat.name: stat for stat in inspector.stats(["amqp-three", "amqp-consumed", "amqp-absent"])}
            elapsed = time.monotonic() - started
            queues = inspector.queues(["amqp-three", "amqp-absent", "amqp-consumed"])
            counts = inspector.consumer_counts(["amqp-three", "amqp-consumed", "amqp-absent", "x" * 300])
        finally:
            inspector.close()
        print(f"\n[rabbitmq] 3 passive declares (one 404) on a new connection in {elapsed * 1000:.1f} ms")
        three, consumed, absent = stats["amqp-three"], stats["amqp-consumed"], stats["amqp-absent"]
        assert (three.exists, three.depth, three.consumers) == (True, 3, 0)
        assert (consumed.exists, consumed.depth, consumed.consumers) == (True, 0, 1)
        assert (absent.exists, absent.depth, absent.consumers) == (False, 0, None)  # the 404 did not end the call
        assert queues == [BrokerQueue("amqp-absent", 0), BrokerQueue("amqp-consumed", 0), BrokerQueue("amqp-three", 3)]
        assert counts == {"amqp-consumed": 1, "amqp-three": 0}  # absent and over-long names left out

        # With the management API, a queue nobody routes to is found too; Celery's own queues are not listed.
        listing = AmqpBrokerInspector(url, {"management_url": rabbit.management_url}, INSPECTOR_TIMEOUT)
        try:
            listed = listing.listed()
            found = {queue.name: queue.depth for queue in listing.queues()}
        finally:
            listing.close()
        assert {"amqp-three", "amqp-consumed"} <= set(listed)
        assert not [name for name in listed if name.startswith(("celeryev.", "amq.")) or name.endswith(".pidbox")]
        assert found["amqp-three"] == 3 and found["amqp-consumed"] == 0

        wrong = f"http://guest:not-the-password@{rabbit.host}:{rabbit.management_port}"
        refused = AmqpBrokerInspector(url, {"management_url": wrong}, INSPECTOR_TIMEOUT)
        with pytest.raises(BrokerUnavailable, match="401") as caught:
            refused.queues()
        assert "not-the-password" not in str(caught.value)
        channel.queue_delete("amqp-three")


def test_wrong_password_and_hung_broker_are_unavailable_within_the_timeout(rabbit: RabbitMQServer) -> None:
    wrong = rabbit.url().replace("guest:guest", "guest:s3cret-pw")
    with pytest.raises(BrokerUnavailable, match="ACCESS_REFUSED") as caught:
        AmqpBrokerInspector(wrong, {}, INSPECTOR_TIMEOUT).queues(["stt"])
    assert "s3cret-pw" not in str(caught.value)

    port = free_port()
    with socket.socket() as hung:  # accepts TCP (the kernel does) and never says a word
        hung.bind(("127.0.0.1", port))
        hung.listen(8)
        inspector = AmqpBrokerInspector(f"amqp://guest:s3cret-pw@127.0.0.1:{port}//", {}, INSPECTOR_TIMEOUT)
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable) as caught:
            inspector.queues(["stt"])
        elapsed = time.monotonic() - started
    print(f"\n[rabbitmq] hung broker -> BrokerUnavailable in {elapsed:.2f} s (timeout {INSPECTOR_TIMEOUT} s)")
    assert elapsed <= INSPECTOR_TIMEOUT + 1.0
    assert "s3cret-pw" not in str(caught.value) and "********" in str(caught.value)


def test_stopped_broker_is_unavailable_fast_and_everything_reconnects(cluster: Cluster) -> None:
    """Last: kills the node. The inspector, the dispatch endpoint and the event stream all come back after."""
    rabbit, server = cluster.rabbit, cluster.server
    inspector = AmqpBrokerInspector(rabbit.url(), {}, INSPECTOR_TIMEOUT)
    try:
        assert inspector.queues(["stt"])[0].name == "stt"  # a kept connection, which the outage will break
        rabbit.kill()
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="did not answer") as caught:
            inspector.queues(["stt"])
        elapsed = time.monotonic() - started
        print(f"\n[rabbitmq] stopped broker -> BrokerUnavailable in {elapsed * 1000:.1f} ms "
              f"(timeout {INSPECTOR_TIMEOUT} s): {caught.value}")
        assert elapsed <= INSPECTOR_TIMEOUT + 1.0
        assert "guest:guest" not in str(caught.value)

        started = time.monotonic()
        down = dispatch(server, TRANSCRIBE, {"audio_url": "https://example.com/down.wav"})
        answered = time.monotonic() - started
        print(f"[rabbitmq] dispatch while the broker is down -> {down.status} in {answered * 1000:.0f} ms")
        assert down.status == 503, down
        assert answered <= 2.0 + 1.0  # broker_timeout (2 s) + slack; refused connections answer at once
        assert "guest:guest" not in json.dumps(down.data)
        wait_until(lambda: get(server, "/api/status")["broker"] in ("reconnecting", "unreachable"), TASK_DEADLINE,
                   "the event stream reported down", server)
        wait_until(lambda: get(server, "/api/routing")["broker_error"], ALERT_DEADLINE,
                   "broker_error in /api/routing while the broker is down", server)

        started = time.monotonic()
        rabbit.start()  # same ports and data
        print(f"[rabbitmq] node restarted in {time.monotonic() - started:.2f} s")
        stats = {stat.name: stat for stat in inspector.stats(["stt"])}  # the next call reconnects by itself
        assert stats["stt"].exists
    finally:
        inspector.close()

    started = time.monotonic()
    wait_until(lambda: get(server, "/api/status")["broker"] == "live", TASK_DEADLINE, "event stream live again",
               server)
    wait_until(lambda: cluster.worker.running and dispatch(
        server, TRANSCRIBE, {"audio_url": "https://example.com/back.wav"}).status == 202, TASK_DEADLINE,
        "a 202 from dispatch after the restart", server)
    print(f"[rabbitmq] events live and dispatch 202 again {time.monotonic() - started:.2f} s after the restart")
    wait_until(lambda: get(server, "/api/routing")["broker_error"] is None, ALERT_DEADLINE,
               "broker_error cleared after the restart", server)


@pytest.mark.parametrize(
    ("url", "options", "match"),
    [
        ("redis://127.0.0.1:6379/0", {}, "not an AMQP URL"),
        ("amqp://guest:pw@127.0.0.1:5672//", {"management_url": "ftp://x"}, "http:// or https://"),
        ("amqp://guest:pw@127.0.0.1:5672//", {"management_url": 15672}, "must be a URL string"),
    ],
)
def test_inspector_refuses_bad_configuration_without_io(url: str, options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AmqpBrokerInspector(url, options, INSPECTOR_TIMEOUT)


def test_graceful_stop_is_unavailable_fast_and_leaves_no_process(tmp_path: Path) -> None:
    """A second node (no management plugin): `stop()` shuts it down properly, its epmd included; a kept
    inspector connection then fails within the timeout, and no process of the node is left behind."""
    try:
        find_rabbitmq_server()
    except ProcessError as exc:
        pytest.skip(str(exc))
    node = RabbitMQServer(directory=tmp_path / "node", log_path=tmp_path / "rabbitmq.log", stop_timeout=10.0)
    try:
        node.start()
    except ProcessError as exc:
        pytest.fail(str(exc), pytrace=False)
    pids = [pid for pid in (node.pid, node.epmd_pid) if pid is not None]
    inspector = AmqpBrokerInspector(node.url(), {}, INSPECTOR_TIMEOUT)
    try:
        assert inspector.stats(["nothing-here"])[0].exists is False
        started = time.monotonic()
        node.stop()
        stopped_in = time.monotonic() - started
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="did not answer"):
            inspector.queues(["nothing-here"])
        elapsed = time.monotonic() - started
    finally:
        inspector.close()
        node.stop()
    print(f"\n[rabbitmq] second node: started in {node.started_in:.2f} s, stopped (SIGTERM) in {stopped_in:.2f} s; "
          f"then BrokerUnavailable in {elapsed * 1000:.1f} ms")
    assert elapsed <= INSPECTOR_TIMEOUT + 1.0
    assert len(pids) == 2
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"pid {pid} is still there"


def test_inspector_repr_and_errors_hide_passwords() -> None:
    inspector = AmqpBrokerInspector("amqp://guest:topsecret@127.0.0.1:1//",
                                    {"management_url": "http://admin:mgmtsecret@127.0.0.1:1"}, INSPECTOR_TIMEOUT)
    shown = f"{inspector!r} {inspector.management!r}"
    assert "topsecret" not in shown and "mgmtsecret" not in shown
    with pytest.raises(BrokerUnavailable) as caught:  # the management API is asked first: refused on port 1
        inspector.queues(["stt"])
    assert "secret" not in str(caught.value)
    inspector.close()
