"""The one wait loop of the tests: poll a condition with a deadline, fail with the server's log when it passes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import pytest

POLL_SECONDS = 0.05


class _Logged(Protocol):
    def log_tail(self, lines: int = ...) -> str: ...


def wait_for(condition: Callable[[], Any], timeout: float, what: str, server: _Logged | None = None,
             interval: float = POLL_SECONDS) -> tuple[Any, float]:
    """Poll until `condition()` is truthy: (its value, seconds it took); fail the test after `timeout`."""
    started = time.monotonic()
    while True:
        value = condition()
        elapsed = time.monotonic() - started
        if value:
            return value, elapsed
        if elapsed >= timeout:
            tail = f"\n--- server log ---\n{server.log_tail(40)}" if server is not None else ""
            pytest.fail(f"no {what} within {timeout:.1f} s{tail}", pytrace=False)
        time.sleep(interval)


def wait_until(condition: Callable[[], Any], timeout: float, what: str, server: _Logged | None = None,
               interval: float = POLL_SECONDS) -> Any:
    """wait_for, returning the condition's value only."""
    return wait_for(condition, timeout, what, server, interval)[0]
