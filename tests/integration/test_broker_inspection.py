"""Broker inspection against a real redis-server: messages sent by a real send-only Celery app, a real worker."""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kombu.connection import Connection

from dashboard.exceptions import BrokerUnavailable
from dashboard.model.kombu import KombuRedisLayout
from dashboard.model.routing import BrokerQueue
from dashboard.services.broker import broker_inspector
from dashboard.services.broker.redis import RedisBrokerInspector
from dashboard.services.client import ClientSettings, build_send_only_app
from dashboard.services.inspection import WorkerInspector
from dashboard.services.processes import CeleryWorker, RedisServer, free_port
from tests.support.hung_broker import HungBroker

TIMEOUT = 1.0
SLACK = 1.0  # a failure must surface within TIMEOUT + SLACK
ORPHAN = "orphan-q"
PREFIX = "pfx:"
SEP = "\x06\x16"

SendApp = Callable[..., Celery]


def forget(client: redis.Redis, queue: str, prefix: str = "") -> None:
    """Delete a queue's lists and its binding sets (what kombu's queue.delete() removes, and the table)."""
    layout = KombuRedisLayout(prefix=prefix)
    client.delete(
        *layout.queue_keys(queue),
        f"{prefix}_kombu.binding.{queue}",
        f"{prefix}_kombu.binding_permanent.{queue}",
    )


@pytest.fixture
def raw(broker_url: str) -> Iterator[redis.Redis]:
    """A plain redis-py client on the test broker, to look behind the inspector's back."""
    client = redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def orphan(raw: redis.Redis) -> Iterator[str]:
    """A queue name of this test's own, its keys removed afterwards (the test Redis lives for the session).

    Unique because kombu's process-wide connection pool remembers which queues a broker URL already declared:
    a second app on the same URL never writes the binding set again, even after it was deleted.
    """
    name = f"{ORPHAN}-{uuid.uuid4().hex[:8]}"
    yield name
    for prefix in ("", PREFIX):
        forget(raw, name, prefix)


@pytest.fixture
def send_app(broker_url: str) -> Iterator[SendApp]:
    """Send-only Celery apps as the dashboard builds them (task_create_missing_queues on); closed after."""
    apps: list[Celery] = []

    def build(transport_options: Mapping[str, Any] | None = None, url: str = broker_url) -> Celery:
        settings = ClientSettings(
            broker_url=url,
            result_backend=None,
            task_routes={},
            task_default_queue="celery",
            broker_transport_options=dict(transport_options or {}),
            timeout=2.0,
        )
        app = build_send_only_app(settings)
        apps.append(app)
        return app

    try:
        yield build
    finally:
        for app in apps:
            app.close()


@pytest.fixture
def inspect(broker_url: str) -> Iterator[Callable[..., RedisBrokerInspector]]:
    """Inspectors built by the factory, closed after the test."""
    made: list[RedisBrokerInspector] = []

    def build(transport_options: Mapping[str, Any] | None = None, url: str = broker_url) -> RedisBrokerInspector:
        inspector = broker_inspector(url, dict(transport_options or {}), TIMEOUT)
        assert isinstance(inspector, RedisBrokerInspector)
        made.append(inspector)
        return inspector

    try:
        yield build
    finally:
        for inspector in made:
            inspector.close()


def send(app: Celery, queue: str, priorities: list[int | None]) -> None:
    for priority in priorities:
        options = {} if priority is None else {"priority": priority}
        app.send_task("probe.never_registered", queue=queue, retry=False, **options)


def depth_of(queues: list[BrokerQueue], name: str) -> int | None:
    found = [queue.depth for queue in queues if queue.name == name]
    assert len(found) == 1, f"{name!r} listed {len(found)} times in {queues}"
    return found[0]


def test_depth_sums_every_priority_sub_list(orphan: str, send_app: SendApp, inspect: Any, raw: redis.Redis) -> None:
    send(send_app(), orphan, [0, 0, None, 3, 5, 9, 9, 9])
    # kombu files 0 and no priority under the bare name, 5 under step 3 (the step at or below it).
    assert [raw.llen(key) for key in KombuRedisLayout().queue_keys(orphan)] == [3, 2, 0, 3]
    assert not raw.exists(f"{orphan}{SEP}6")  # an empty list is no key at all

    inspector = inspect()
    queues = inspector.queues()
    assert depth_of(queues, orphan) == 8
    assert [queue.name for queue in queues] == sorted(queue.name for queue in queues)
    snapshot = inspector.snapshot()
    assert depth_of(list(snapshot.queues), orphan) == 8
    assert snapshot.unacked is not None


def test_declared_queue_is_discovered_from_its_binding_when_drained(
    orphan: str, send_app: SendApp, inspect: Any, raw: redis.Redis
) -> None:
    send(send_app(), orphan, [0, 3, 9])
    for key in KombuRedisLayout().queue_keys(orphan):  # drain it as a consumer would, one message at a time
        while raw.rpop(key) is not None:
            pass
    assert raw.smembers(f"_kombu.binding.{orphan}") == {f"{orphan}{SEP}{SEP}{orphan}".encode()}
    assert not any(raw.exists(key) for key in KombuRedisLayout().queue_keys(orphan))

    assert depth_of(inspect().queues(), orphan) == 0


def test_queue_whose_binding_vanished_is_still_counted_when_known(
    orphan: str, send_app: SendApp, inspect: Any, raw: redis.Redis
) -> None:
    # A Redis restart without persistence or a FLUSHDB drops the binding set, and the sending process never
    # writes it again (see `orphan`): the caller passes the queues it routes to as `known`.
    send(send_app(), orphan, [0, 9])
    raw.delete(f"_kombu.binding.{orphan}", f"_kombu.binding_permanent.{orphan}")
    inspector = inspect()
    assert orphan not in {queue.name for queue in inspector.queues()}
    assert depth_of(inspector.queues(known=[orphan]), orphan) == 2


def test_known_queue_absent_from_redis_has_depth_zero(orphan: str, inspect: Any) -> None:
    queues = inspect().queues(known=["zz-never-declared", "aa-never-declared", orphan])
    assert depth_of(queues, "aa-never-declared") == 0
    assert depth_of(queues, "zz-never-declared") == 0
    assert depth_of(queues, orphan) == 0
    assert [queue.name for queue in queues] == sorted(queue.name for queue in queues)


def test_global_keyprefix_is_honoured(orphan: str, send_app: SendApp, inspect: Any, raw: redis.Redis) -> None:
    send(send_app({"global_keyprefix": PREFIX}), orphan, [0, 3, 9, 9])
    assert raw.exists(f"{PREFIX}_kombu.binding.{orphan}", f"{PREFIX}{orphan}{SEP}9") == 2
    assert not raw.exists(f"_kombu.binding.{orphan}", orphan)

    prefixed = inspect({"global_keyprefix": PREFIX})
    assert prefixed.queues() == [BrokerQueue(orphan, 4)]  # only the prefixed app's queue, none of the rest

    plain = inspect()
    assert orphan not in {queue.name for queue in plain.queues()}
    assert depth_of(plain.queues(known=[orphan]), orphan) == 0  # the prefixed lists are not its lists


def test_unacked_messages_are_counted_apart_from_the_depth(broker_url: str, inspect: Any) -> None:
    prefix = "unacked-test:"  # a prefix of its own: the stub worker's in-flight tasks never land in this hash
    options = {"global_keyprefix": prefix}
    with Connection(broker_url, transport_options=options) as conn:
        queue = conn.SimpleQueue("unacked-q")
        try:
            queue.put({"n": 1})
            queue.put({"n": 2})
            inspector = inspect(options)
            assert inspector.snapshot().queues == (BrokerQueue("unacked-q", 2),)
            message = queue.get(timeout=2)  # delivered: out of the list, into kombu's unacked hash
            snapshot = inspector.snapshot()
            assert snapshot.queues == (BrokerQueue("unacked-q", 1),)
            assert snapshot.unacked == 1
            message.ack()
            assert inspector.snapshot().unacked == 0
        finally:
            queue.queue.delete()
            queue.close()


def test_celery_internal_queues_are_not_listed(stub_worker: CeleryWorker, broker_url: str, inspect: Any) -> None:
    app = Celery("internal-probe", broker=broker_url, set_as_current=False)
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        # What a live event receiver and a pending control call declare; the worker has its pidbox queue.
        event_queue = app.events.Receiver(conn, handlers={}).queue(channel)
        reply_queue = app.control.mailbox(conn).get_reply_queue()(channel)
        event_queue.declare()
        reply_queue.declare()
        try:
            inspector = inspect()
            exchanges = {binding.exchange for binding in inspector.bindings()}
            assert {"celeryev", "celery.pidbox", "reply.celery.pidbox"} <= exchanges

            names = {queue.name for queue in inspector.queues()}
            assert set(stub_worker.queues) <= names
            assert event_queue.name not in names
            assert reply_queue.name not in names
            assert f"{stub_worker.hostname}.celery.pidbox" not in names
            leaked = sorted(name for name in names if name.startswith("celeryev") or name.endswith(".pidbox"))
            assert leaked == []
        finally:
            event_queue.delete()
            reply_queue.delete()
    app.close()


def test_killed_redis_raises_broker_unavailable_within_the_timeout(tmp_path: Path) -> None:
    server = RedisServer(directory=tmp_path / "redis")
    server.start()
    url = f"redis://:hunter2@127.0.0.1:{server.port}/0"
    try:
        # The password is set at runtime: RedisServer's readiness probe does not send one.
        control = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5)
        control.config_set("requirepass", "hunter2")
        control.close()
        inspector = broker_inspector(url, {}, TIMEOUT)
        try:
            assert inspector.queues(known=["q"]) == [BrokerQueue("q", 0)]  # a pooled, authenticated connection
            server.kill()

            started = time.monotonic()
            with pytest.raises(BrokerUnavailable) as caught:
                inspector.queues(known=["q"])
            elapsed = time.monotonic() - started
            print(f"\nkilled redis (pooled connection): BrokerUnavailable after {elapsed:.3f}s: {caught.value}")
            assert elapsed < TIMEOUT + SLACK
            assert "hunter2" not in str(caught.value)
            assert f"127.0.0.1:{server.port}" in str(caught.value)
            assert "did not answer" in str(caught.value)
        finally:
            inspector.close()

        fresh = broker_inspector(url, {}, TIMEOUT)  # no pooled connection: a refused connect
        try:
            started = time.monotonic()
            with pytest.raises(BrokerUnavailable) as caught:
                fresh.queues()
            elapsed = time.monotonic() - started
            print(f"killed redis (fresh inspector): BrokerUnavailable after {elapsed:.3f}s: {caught.value}")
            assert elapsed < TIMEOUT + SLACK
            assert "hunter2" not in str(caught.value)
        finally:
            fresh.close()
    finally:
        server.stop()


def test_inspector_survives_a_redis_restart_without_a_failed_poll(tmp_path: Path) -> None:
    # No retries are configured, yet a pooled connection the restart closed is not an error: the pool sees the
    # server's EOF before using it and reconnects.
    server = RedisServer(directory=tmp_path / "redis")
    with server:
        inspector = broker_inspector(server.url(0), {}, TIMEOUT)
        try:
            assert inspector.queues(known=["q"]) == [BrokerQueue("q", 0)]
            server.restart()
            assert inspector.queues(known=["q"]) == [BrokerQueue("q", 0)]
        finally:
            inspector.close()


def test_worker_inspection_right_after_a_redis_restart_does_not_fail(tmp_path: Path) -> None:
    # Celery's pool would hand the first broadcasts after a restart a dead socket ("Connection closed by
    # server"); every broadcast of the WorkerInspector runs on a connection of its own instead.
    server = RedisServer(directory=tmp_path / "redis")
    with server:
        settings = ClientSettings(broker_url=server.url(0), result_backend=None, task_routes={},
                                  task_default_queue="celery", timeout=TIMEOUT)
        app = build_send_only_app(settings)
        try:
            inspector = WorkerInspector(app, timeout=0.2)
            assert inspector.inspect().workers == {}  # no worker: every question waits its timeout, no error
            server.restart()
            assert inspector.inspect().workers == {}
            assert inspector.ask(lambda questions: questions.active()) is None
        finally:
            app.close()


@pytest.fixture
def silent_server() -> Iterator[HungBroker]:
    with HungBroker() as server:
        yield server


def test_hung_broker_raises_broker_unavailable_within_the_timeout(silent_server: HungBroker) -> None:
    inspector = broker_inspector(f"redis://:hunter2@127.0.0.1:{silent_server.port}/0", {}, TIMEOUT)
    try:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable) as caught:
            inspector.queues()
        elapsed = time.monotonic() - started
        print(f"\nhung TCP server: BrokerUnavailable after {elapsed:.3f}s: {caught.value}")
        assert silent_server.accepted, "the inspector never connected"
        assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + SLACK
        assert "hunter2" not in str(caught.value)
    finally:
        inspector.close()


def test_unused_port_raises_broker_unavailable_at_once() -> None:
    inspector = broker_inspector(f"redis://127.0.0.1:{free_port()}/0", {}, TIMEOUT)
    try:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="did not answer"):
            inspector.queues()
        elapsed = time.monotonic() - started
        print(f"\nrefused connection: BrokerUnavailable after {elapsed:.3f}s")
        assert elapsed < TIMEOUT + SLACK
    finally:
        inspector.close()


@pytest.fixture
def socket_redis() -> Iterator[tuple[RedisServer, Path]]:
    """A redis-server also listening on a Unix socket (in a short directory: socket paths max out near 107)."""
    directory = Path(tempfile.mkdtemp(prefix="rsock-"))
    path = directory / "redis.sock"
    server = RedisServer(directory=directory, extra_args=["--unixsocket", str(path), "--unixsocketperm", "700"])
    try:
        with server:
            yield server, path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_unix_socket_url(orphan: str, socket_redis: tuple[RedisServer, Path], send_app: SendApp, inspect: Any) -> None:
    server, path = socket_redis
    url = f"redis+socket://{path}?virtual_host=2"
    send(send_app(url=url), orphan, [0, 9])  # kombu reads the same URL: database 2 through the socket
    on_db2 = redis.Redis(host=server.host, port=server.port, db=2, socket_timeout=5)
    try:
        assert on_db2.exists(orphan, f"{orphan}{SEP}9") == 2
    finally:
        on_db2.close()
    assert inspect(url=url).queues() == [BrokerQueue(orphan, 2)]


def test_scan_that_outlasts_its_budget_raises_broker_unavailable(tmp_path: Path) -> None:
    with RedisServer(directory=tmp_path / "redis") as server:
        filler = redis.Redis(host=server.host, port=server.port, socket_timeout=5)
        with filler.pipeline(transaction=False) as pipe:
            for number in range(5_000):  # several SCAN round trips of SCAN_COUNT keys
                pipe.set(f"celery-task-meta-{number}", "x")
            pipe.execute()
        filler.close()
        inspector = RedisBrokerInspector(server.url(0), {}, TIMEOUT, scan_budget=0.0)
        try:
            with pytest.raises(BrokerUnavailable, match="took more than 0.0s"):
                inspector.queues()
            assert RedisBrokerInspector(server.url(0), {}, TIMEOUT).queues(known=["q"]) == [BrokerQueue("q", 0)]
        finally:
            inspector.close()
