"""Acknowledgements and silences of alerts, shared by every replica through the Redis they already share.

Like logouts (sessions.py), the marks live in the first Redis the replicas share — the broker, else the result
backend — in two hashes (alert key -> JSON). Each process keeps a copy that a job refreshes every couple of
seconds, so pages and the notifier read memory only; another replica's mark shows within that refresh. With no
Redis (RabbitMQ and no Redis backend) the marks belong to this process only (see the README).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable

import redis

from ..exceptions import ConfigError
from ..model.alerts import Alert, AlertChange
from ..model.notify import Acknowledgement, AlertMark, Silence, forgets, mark_of, parse_mark, silence_for
from .broker.redis import RedisTarget
from .broker.urls import REDIS_SCHEMES, broker_scheme
from .events.hub import Hub
from .events.jobs import Job

log = logging.getLogger(__name__)

ACKS_KEY = "dispatch-dashboard:alert-acks"
SILENCES_KEY = "dispatch-dashboard:alert-silences"
REFRESH_EVERY = 2.0  # seconds: how soon another replica's acknowledgement or silence shows here
ACK_KEPT_SECONDS = 30 * 86_400.0  # an acknowledgement older than this is pruned (its occurrence is long gone)
TIMEOUT = 0.5
_REDIS_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OSError)


class AlertMarks:
    """Who acknowledged which alert occurrence, and which alert keys are silenced until when."""

    def __init__(self, hub: Hub, *redis_candidates: str | None, clock: Callable[[], float] = time.time,
                 timeout: float = TIMEOUT) -> None:
        self.hub = hub
        self.clock = clock
        self._lock = threading.Lock()
        self._acks: dict[str, Acknowledgement] = {}
        self._silences: dict[str, Silence] = {}
        self._client: redis.Redis | None = None
        self._unsynced: dict[tuple[str, str], tuple[str, dict[str, object] | None]] = {}
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
        """True when the marks are shared with other replicas through Redis."""
        return self._client is not None

    # -- readers (any thread, memory only) -------------------------------------------------------------------

    def mark(self, alert: Alert) -> AlertMark:
        """The acknowledgement and silence that hold for `alert` now."""
        with self._lock:
            return mark_of(alert, self._acks, self._silences, self.clock())

    def silenced(self, key: str) -> Silence | None:
        """The silence of `key` that holds now, if any."""
        with self._lock:
            silence = self._silences.get(key)
        return silence if silence is not None and silence.active(self.clock()) else None

    # -- actions ---------------------------------------------------------------------------------------------

    def acknowledge(self, alert: Alert, by: str) -> Acknowledgement:
        """Acknowledge `alert`'s current occurrence."""
        ack = Acknowledgement(alert.key, by, max(self.clock(), alert.raised_at))
        self._write("hset", ACKS_KEY, alert.key, ack.to_dict())
        with self._lock:
            self._acks[alert.key] = ack
        self.hub.publish("alert", alert.key)
        return ack

    def note_change(self, change: AlertChange) -> None:
        """The routing job's hook: a cleared alert's acknowledgement ends with it (here and in Redis)."""
        if not forgets(change):
            return
        key = change.alert.key
        with self._lock:
            known = self._acks.pop(key, None)
        if known is not None or self._client is not None:
            self._write("hdel", ACKS_KEY, key, None)

    def silence(self, key: str, by: str, minutes: object) -> Silence:
        """Silence `key` for `minutes` (MarkInvalid for a bad number)."""
        silence = silence_for(key, by, minutes, self.clock())
        self._write("hset", SILENCES_KEY, key, silence.to_dict())
        with self._lock:
            self._silences[key] = silence
        self.hub.publish("alert", key)
        return silence

    def unsilence(self, key: str) -> Silence | None:
        """End `key`'s silence; the silence that held, or None when there was none."""
        held = self.silenced(key)
        self._write("hdel", SILENCES_KEY, key, None)
        with self._lock:
            self._silences.pop(key, None)
        self.hub.publish("alert", key)
        return held

    def _write(self, command: str, hash_key: str, field: str, value: dict[str, object] | None) -> None:
        """Write through to Redis; when it does not answer, keep the change here and write it on a later refresh
        (the mark holds in this process at once, on the other replicas once Redis is back)."""
        if self._client is None:
            return
        with self._lock:
            self._unsynced.pop((hash_key, field), None)
        try:
            self._apply(command, hash_key, field, value)
        except _REDIS_ERRORS as exc:
            log.warning("alert mark kept by this process until Redis answers (%s)", type(exc).__name__)
            with self._lock:
                self._unsynced[(hash_key, field)] = (command, value)

    def _apply(self, command: str, hash_key: str, field: str, value: dict[str, object] | None) -> None:
        assert self._client is not None
        if command == "hset":
            self._client.hset(hash_key, field, json.dumps(value))
        else:
            self._client.hdel(hash_key, field)

    @property
    def unsynced(self) -> int:
        """Marks made here that Redis has not taken yet (the other replicas do not see them yet)."""
        return len(self._unsynced)

    # -- the refresh job -------------------------------------------------------------------------------------

    def job(self) -> Job:
        """The monitor's job that reads the other replicas' marks."""
        return Job("alert-marks", REFRESH_EVERY, self.refresh)

    def refresh(self) -> None:
        """Read every mark from Redis (pruning expired ones there), replace the copy, publish changed keys."""
        if self._client is None:
            self._prune_local()
            return
        now = self.clock()
        try:
            with self._lock:
                unsynced = list(self._unsynced.items())
            for (hash_key, field), (command, value) in unsynced:
                self._apply(command, hash_key, field, value)
                with self._lock:
                    if self._unsynced.get((hash_key, field)) == (command, value):
                        del self._unsynced[(hash_key, field)]
            pipe = self._client.pipeline(transaction=False)
            pipe.hgetall(ACKS_KEY)
            pipe.hgetall(SILENCES_KEY)
            raw_acks, raw_silences = pipe.execute()
        except _REDIS_ERRORS as exc:
            if not self._warned:
                log.warning("cannot read the other replicas' acknowledgements and silences (Redis: %s)",
                            type(exc).__name__)
                self._warned = True
            return
        self._warned = False
        acks: dict[str, Acknowledgement] = {}
        silences: dict[str, Silence] = {}
        stale: dict[str, list[str]] = {ACKS_KEY: [], SILENCES_KEY: []}
        for hash_key, raw, kind in ((ACKS_KEY, raw_acks, "ack"), (SILENCES_KEY, raw_silences, "silence")):
            for field_raw, value_raw in raw.items():
                field = _text(field_raw)
                mark = parse_mark(kind, field, _text(value_raw))
                if isinstance(mark, Acknowledgement) and now - mark.at < ACK_KEPT_SECONDS:
                    acks[field] = mark
                elif isinstance(mark, Silence) and mark.active(now):
                    silences[field] = mark
                else:
                    stale[hash_key].append(field)
        for hash_key, fields in stale.items():
            if fields:
                with contextlib.suppress(*_REDIS_ERRORS):  # pruned next time
                    self._client.hdel(hash_key, *fields)
        with self._lock:
            changed = {key for key in acks.keys() | self._acks.keys() if acks.get(key) != self._acks.get(key)}
            changed |= {key for key in silences.keys() | self._silences.keys()
                        if silences.get(key) != self._silences.get(key)}
            self._acks, self._silences = acks, silences
        self.hub.publish_many("alert", sorted(changed))

    def _prune_local(self) -> None:
        now = self.clock()
        with self._lock:
            expired = [key for key, silence in self._silences.items() if not silence.active(now)]
            for key in expired:
                del self._silences[key]
            for key in [key for key, ack in self._acks.items() if now - ack.at >= ACK_KEPT_SECONDS]:
                del self._acks[key]
        self.hub.publish_many("alert", expired)  # the banner drops "silenced until" when it ends

    def close(self) -> None:
        """Release the Redis connections."""
        if self._client is not None:
            self._client.close()


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
