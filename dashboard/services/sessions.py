"""Server-side end of browser sessions: a logged-out session id is refused by every replica.

Session cookies are signed, not stored, so logging out must leave a mark somewhere every replica reads: a key that
expires with the session, in the first Redis every replica already shares — the broker, else the result backend
(RabbitMQ with a Redis backend). With neither, the mark is kept in this process only (see the README).
Each process also remembers its own marks and, for a second, the ids it found unmarked, so a page's burst of
requests costs one Redis round trip.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

import redis

from ..exceptions import ConfigError
from .broker.redis import RedisTarget
from .broker.urls import REDIS_SCHEMES, broker_scheme

log = logging.getLogger(__name__)

KEY_PREFIX = "dispatch-dashboard:logged-out:"
CHECK_TIMEOUT = 0.5  # seconds: a slow Redis must not slow every page
NEGATIVE_TTL = 1.0  # seconds an id found valid is trusted without asking again (other replicas' logouts)
CAPACITY = 10_000


class SessionRevocations:
    """Marks session ids as logged out until they would have expired anyway."""

    def __init__(self, *redis_candidates: str | None, timeout: float = CHECK_TIMEOUT) -> None:
        self._lock = threading.Lock()
        self._revoked: OrderedDict[str, float] = OrderedDict()  # sid -> expiry (time.time())
        self._valid: OrderedDict[str, float] = OrderedDict()  # sid -> monotonic time it was last checked
        self._client: redis.Redis | None = None
        self._warned = False
        for url in redis_candidates:
            if not url:
                continue
            try:
                if broker_scheme(url) in REDIS_SCHEMES:
                    pool = redis.ConnectionPool(**RedisTarget.from_url(url).pool_kwargs(timeout))
                    self._client = redis.Redis(connection_pool=pool)
                    break
            except ConfigError:
                continue

    @property
    def shared(self) -> bool:
        """True when logouts are shared with other replicas through Redis."""
        return self._client is not None

    def revoke(self, sid: str, until: float) -> None:
        """Refuse `sid` from now until `until` (a time.time() value), here and on every replica."""
        with self._lock:
            self._revoked[sid] = until
            self._valid.pop(sid, None)
            self._trim(self._revoked)
        ttl = max(1, int(until - time.time()) + 1)
        if self._client is not None:
            try:
                self._client.set(KEY_PREFIX + sid, b"1", ex=ttl)
            except (redis.RedisError, OSError) as exc:
                log.warning("logout recorded in this process only (Redis: %s)", type(exc).__name__)

    def revoked(self, sid: str) -> bool:
        """True when `sid` was logged out (here, or on another replica sharing the Redis broker)."""
        now = time.time()
        with self._lock:
            until = self._revoked.get(sid)
            if until is not None:
                if until > now:
                    return True
                del self._revoked[sid]
            checked = self._valid.get(sid)
            if checked is not None and time.monotonic() - checked < NEGATIVE_TTL:
                return False
        if self._client is None:
            return False
        try:
            found = bool(self._client.exists(KEY_PREFIX + sid))
        except (redis.RedisError, OSError) as exc:
            # Redis down: the dashboard stays usable (this process's own logouts still hold); say so once.
            if not self._warned:
                log.warning("cannot check logouts of other replicas (Redis: %s)", type(exc).__name__)
                self._warned = True
            return False
        self._warned = False
        with self._lock:
            if found:
                self._revoked[sid] = now + NEGATIVE_TTL * 60
                self._trim(self._revoked)
            else:
                self._valid[sid] = time.monotonic()
                self._valid.move_to_end(sid)
                self._trim(self._valid)
        return found

    def close(self) -> None:
        """Release the Redis connections."""
        if self._client is not None:
            self._client.close()

    @staticmethod
    def _trim(items: OrderedDict[str, float]) -> None:
        while len(items) > CAPACITY:
            items.popitem(last=False)
