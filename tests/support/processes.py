"""Starting the servers a test needs (Redis, workers, RabbitMQ), failing the test with their log when they can't."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar

import pytest

from dashboard.services.processes import ProcessError


class _Process(Protocol):
    def start(self) -> object: ...

    def stop(self) -> object: ...


P = TypeVar("P", bound=_Process)


@contextmanager
def started(process: P) -> Iterator[P]:
    """Start a RedisServer, CeleryWorker or similar; fail the test with its log tail if it cannot; stop it after."""
    try:
        process.start()
    except ProcessError as exc:  # the message carries the process's log tail
        pytest.fail(str(exc), pytrace=False)
    try:
        yield process
    finally:
        process.stop()
