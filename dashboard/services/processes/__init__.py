"""Foreground child processes for the demo and the tests: a redis-server and a stub Celery worker."""

from .base import (
    LOG_TAIL_LINES,
    POLL_INTERVAL,
    ManagedProcess,
    ProcessError,
    free_port,
    kill_group,
    log_tail,
    signal_and_wait,
    terminate,
)
from .redis_server import RedisServer, find_redis_server
from .worker import DEFAULT_WORKER_QUEUES, STUB_WORKER_APP, CeleryWorker

__all__ = [
    "DEFAULT_WORKER_QUEUES", "LOG_TAIL_LINES", "POLL_INTERVAL", "STUB_WORKER_APP", "CeleryWorker", "ManagedProcess",
    "ProcessError", "RedisServer", "find_redis_server", "free_port", "kill_group", "log_tail", "signal_and_wait",
    "terminate",
]
