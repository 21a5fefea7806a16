"""Shared fixtures: a real redis-server on a free port and real stub `celery worker` subprocesses.

Integration and browser tests both use them. Nothing here touches the Redis on 6379: each test session starts
its own server, so the suite passes on a bare machine as well as on one that already runs services.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from dashboard.services.processes import CeleryWorker, ProcessError, RedisServer
from tests.support.postgres_server import PostgresServer
from tests.support.processes import started

REPO_ROOT = Path(__file__).resolve().parents[1]  # where `worker_stub` lives, importable without installing
STUB_QUEUES: tuple[str, ...] = ("stt", "llm", "default")

WorkerFactory = Callable[..., CeleryWorker]


@pytest.fixture(scope="session", autouse=True)
def private_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The dashboard's state directory (audit log, history) for this session: never the user's own, and never
    another session's, for every app and subprocess that reads the environment."""
    directory = tmp_path_factory.mktemp("state")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(directory))
        yield directory


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of our own on a free port, with its directory and log under the session's tmp dir."""
    directory = tmp_path_factory.mktemp("redis")
    with started(RedisServer(directory=directory, log_path=directory / "redis.log")) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server of our own (initdb in a temporary directory, a free loopback port), never the
    machine's; one per session, a fresh database per test (`postgres_url`)."""
    with started(PostgresServer()) as server:
        yield server


_databases = itertools.count(1)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a new, empty database on the session's PostgreSQL server."""
    import psycopg

    name = f"test_{next(_databases)}"
    with psycopg.connect(postgres_server.url("postgres"), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_server.url(name)


@pytest.fixture(scope="session")
def broker_url(redis_server: RedisServer) -> str:
    """Database 0 of the test Redis: the broker."""
    return redis_server.url(0)


@pytest.fixture(scope="session")
def backend_url(redis_server: RedisServer) -> str:
    """Database 1 of the test Redis: the result backend."""
    return redis_server.url(1)


def _worker(
    broker_url: str,
    backend_url: str,
    log_dir: Path,
    *,
    name: str,
    queues: Sequence[str],
    routes: Mapping[str, str] | None,
    **options: Any,
) -> CeleryWorker:
    """A stub worker configured for tests: threads pool, cwd and PYTHONPATH at the repository root."""
    return CeleryWorker(
        broker_url,
        backend_url=backend_url,
        name=name,
        queues=queues,
        routes=routes,
        log_path=log_dir / f"worker-{name}.log",
        cwd=REPO_ROOT,
        pythonpath=[REPO_ROOT],
        **options,
    )


@pytest.fixture(scope="session")
def stub_worker(
    broker_url: str, backend_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CeleryWorker]:
    """One worker consuming stt, llm and default with the stub's own routes, for the whole session."""
    with started(_worker(
        broker_url,
        backend_url,
        tmp_path_factory.mktemp("workers"),
        name="stub",
        queues=STUB_QUEUES,
        routes=None,
    )) as worker:
        yield worker


_worker_numbers = itertools.count(1)


@pytest.fixture
def start_worker(broker_url: str, backend_url: str, tmp_path: Path) -> Iterator[WorkerFactory]:
    """Start extra workers: `start_worker(queues=("q",), routes={"glob": "q"}, name="x")`; stopped after."""
    running: list[CeleryWorker] = []

    def start(
        queues: Sequence[str] = STUB_QUEUES,
        routes: Mapping[str, str] | None = None,
        name: str | None = None,
        **options: Any,
    ) -> CeleryWorker:
        worker = _worker(
            broker_url,
            backend_url,
            tmp_path,
            name=name or f"extra{next(_worker_numbers)}",  # unique, so pings never reach the session worker
            queues=queues,
            routes=routes,
            **options,
        )
        running.append(worker)
        try:
            worker.start()
        except ProcessError as exc:
            pytest.fail(str(exc), pytrace=False)
        return worker

    try:
        yield start
    finally:
        for worker in reversed(running):
            worker.stop()


@pytest.fixture
def celery_client(broker_url: str, backend_url: str) -> Iterator[Any]:
    """A plain throwaway Celery app on the test Redis, to send by name and read results; closed afterwards."""
    app = Celery("integration-client", broker=broker_url, backend=backend_url, set_as_current=False)
    app.conf.update(
        broker_connection_timeout=2,
        broker_connection_retry_on_startup=False,
        broker_transport_options={"max_retries": 0, "socket_connect_timeout": 2, "socket_timeout": 2},
        redis_socket_connect_timeout=2,
        redis_socket_timeout=5,
        result_extended=True,
    )
    try:
        yield app
    finally:
        app.close()
