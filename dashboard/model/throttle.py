"""Throttling of failed logins (pure): per client address and per user name, bounded in memory."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(slots=True)
class _Failures:
    count: int
    last: float


class LoginThrottle:
    """Counts failed logins per key and says how long the next attempt must wait.

    The first `free` failures of a key within `window` seconds cost nothing; each one after that doubles the
    wait (from `base` seconds, at most `ceiling`), counted from the key's latest failure. A success clears the
    key; a quiet `window` forgets it. At most `capacity` keys are remembered (the oldest go first), so a flood
    of made-up names cannot grow memory. Time is passed in (`now`), so tests need no clock.
    """

    def __init__(self, free: int = 5, base: float = 1.0, ceiling: float = 60.0, window: float = 900.0,
                 capacity: int = 10_000) -> None:
        self._free = free
        self._base = base
        self._ceiling = ceiling
        self._window = window
        self._capacity = capacity
        self._keys: OrderedDict[str, _Failures] = OrderedDict()
        self._lock = threading.Lock()

    def wait(self, keys: Iterable[str], now: float) -> float:
        """Seconds until an attempt for any of `keys` is allowed (0: allowed now)."""
        longest = 0.0
        with self._lock:
            for key in keys:
                failures = self._keys.get(key)
                if failures is None:
                    continue
                if now - failures.last >= self._window:
                    del self._keys[key]
                    continue
                longest = max(longest, failures.last + self._delay(failures.count) - now)
        return max(0.0, longest)

    def failed(self, keys: Iterable[str], now: float) -> None:
        """Record one failed attempt for each of `keys`."""
        with self._lock:
            for key in keys:
                failures = self._keys.pop(key, None)
                if failures is None or now - failures.last >= self._window:
                    failures = _Failures(0, now)
                failures.count += 1
                failures.last = now
                self._keys[key] = failures
                while len(self._keys) > self._capacity:
                    self._keys.popitem(last=False)

    def succeeded(self, keys: Iterable[str]) -> None:
        """Forget the failures of `keys` (a correct password)."""
        with self._lock:
            for key in keys:
                self._keys.pop(key, None)

    def _delay(self, count: int) -> float:
        over = count - self._free
        if over < 0:
            return 0.0
        return min(self._ceiling, self._base * 2.0 ** min(over, 30))

    def __len__(self) -> int:
        return len(self._keys)


def throttle_keys(address: str | None, user: str | None) -> tuple[str, ...]:
    """The keys a login attempt counts against: its client address and the user name it tried."""
    keys = []
    if address:
        keys.append(f"addr:{address}")
    if user:
        keys.append(f"user:{user[:128]}")
    return tuple(keys)
