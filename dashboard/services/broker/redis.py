"""Broker inspection on Redis: queues from kombu's binding sets, depths by pipelined LLEN over the priority
sub-lists (the key layout is dashboard.model.kombu)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ...exceptions import ActionInterrupted, BrokerUnavailable, ConfigError
from ...model.kombu import Binding, KombuRedisLayout, user_queues
from ...model.messages import (
    Selection,
    load_redis_payload,
    redis_envelope,
    redis_name_and_id,
    retarget_redis_payload,
)
from ...model.routing import BrokerQueue
from ...model.secrets import reason
from .queues import (
    MOVE_BATCH,
    QueueBrowser,
    QueuePeek,
    checked_page,
    decoded,
    page_slices,
    remaining,
)
from .urls import REDIS_SCHEMES, broker_scheme, shown_url

log = logging.getLogger(__name__)

DEFAULT_REDIS_PORT: Final = 6379
SCAN_COUNT: Final = 1000  # keys Redis looks at per SCAN round trip
HEALTH_CHECK_INTERVAL: Final = 30  # seconds idle before a pooled connection is PINGed before use
CLIENT_NAME: Final = "dispatch-dashboard-broker"  # shows in CLIENT LIST
_SSL_CERT_REQS: Final = frozenset({"required", "optional", "none"})  # also as CERT_REQUIRED etc.


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where a Redis broker URL points, parsed the way kombu reads it. Pure: no I/O."""

    scheme: str
    db: int
    host: str | None = None
    port: int | None = None
    path: str | None = None  # the Unix socket, for redis+socket://
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: Mapping[str, Any] | None = None  # ssl_* options for rediss://

    @classmethod
    def from_url(cls, broker_url: str) -> RedisTarget:
        """Parse redis://, rediss:// or redis+socket:// (the first of a ``;`` list); ConfigError if malformed."""
        url = broker_url.split(";", 1)[0].strip()
        shown = shown_url(url)
        scheme = broker_scheme(url)
        if scheme not in REDIS_SCHEMES:
            raise ConfigError(f"broker URL {shown!r} is not a Redis URL")
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"broker URL {shown!r} has a malformed port") from None
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        if scheme == "redis+socket":
            if parts.hostname or not parts.path:
                raise ConfigError(
                    f"broker URL {shown!r}: a Redis socket URL names an absolute path, "
                    "like redis+socket:///run/redis/redis.sock?virtual_host=0"
                )
            vhost = query.get("virtual_host", query.get("db"))
            return cls(scheme, _db_number(vhost, shown), path=unquote(parts.path), username=username, password=password)
        ssl = _ssl_options(query, shown) if scheme == "rediss" else None
        return cls(
            scheme,
            _db_number(unquote(parts.path[1:] if parts.path.startswith("/") else parts.path), shown),
            host=parts.hostname or "127.0.0.1",
            port=port or DEFAULT_REDIS_PORT,
            username=username,
            password=password,
            ssl=ssl,
        )

    def pool_kwargs(self, timeout: float) -> dict[str, Any]:
        """redis.ConnectionPool arguments: every socket operation bounded by `timeout`, no retries."""
        kwargs: dict[str, Any] = {
            "db": self.db,
            "username": self.username,
            "password": self.password,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            # redis-py 8.1 retries 10 times with backoff by default: the caller decides when to ask again.
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": HEALTH_CHECK_INTERVAL,
            "client_name": CLIENT_NAME,
        }
        if self.path is not None:
            kwargs.update(connection_class=redis.UnixDomainSocketConnection, path=self.path)
        else:
            kwargs.update(host=self.host, port=self.port)
            if self.ssl is not None:
                kwargs.update(connection_class=redis.SSLConnection, **self.ssl)
        return kwargs


def _db_number(vhost: str | None, shown: str) -> int:
    """kombu's `_prepare_virtual_host`: '' or '/' is 0, else an integer."""
    if not vhost or vhost == "/":
        return 0
    try:
        db = int(vhost.removeprefix("/"))
    except ValueError:
        raise ConfigError(f"broker URL {shown!r}: the Redis database must be a number, not {vhost!r}") from None
    if db < 0:
        raise ConfigError(f"broker URL {shown!r}: the Redis database must be >= 0, not {db}")
    return db


def _ssl_options(query: Mapping[str, str], shown: str) -> dict[str, Any]:
    """The ssl_* query options of a rediss:// URL as redis.SSLConnection arguments."""
    options: dict[str, Any] = {}
    if "ssl_cert_reqs" in query:
        reqs = query["ssl_cert_reqs"].lower().removeprefix("cert_")
        if reqs not in _SSL_CERT_REQS:
            raise ConfigError(
                f"broker URL {shown!r}: ssl_cert_reqs must be required, optional or none, "
                f"not {query['ssl_cert_reqs']!r}"
            )
        options["ssl_cert_reqs"] = reqs
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if name in query:
            options[name] = query[name]
    if "ssl_check_hostname" in query:
        options["ssl_check_hostname"] = query["ssl_check_hostname"].lower() in ("1", "true", "yes", "on")
    return options


@dataclass(frozen=True, slots=True)
class BrokerSnapshot:
    """One inspection: queues sorted by name, and the messages delivered but not yet acknowledged overall."""

    queues: tuple[BrokerQueue, ...]
    unacked: int | None  # kombu's `unacked` hash is keyed by delivery tag, not by queue


class RedisBrokerInspector:
    """Queues and depths on a Redis broker: SCAN for kombu's binding sets, then one pipelined LLEN round trip.

    Every socket operation is bounded by `timeout` and nothing is retried, so a refused or hung Redis raises
    BrokerUnavailable within about `timeout`. The SCAN loop as a whole must finish within `scan_budget`
    (default 4 x timeout), so a huge keyspace fails clearly instead of stalling the caller.
    """

    def __init__(
        self,
        broker_url: str,
        transport_options: Mapping[str, Any] | None = None,
        timeout: float = 2.0,
        *,
        scan_budget: float | None = None,
    ) -> None:
        if timeout <= 0:
            raise ConfigError(f"broker timeout must be > 0 seconds, not {timeout!r}")
        self.layout = KombuRedisLayout.from_transport_options(transport_options or {})
        self.target = RedisTarget.from_url(broker_url)
        self.timeout = timeout
        self.scan_budget = scan_budget if scan_budget is not None else 4 * timeout
        self.broker_display = shown_url(broker_url)
        self._pool = redis.ConnectionPool(**self.target.pool_kwargs(timeout))
        self._client = redis.Redis(connection_pool=self._pool)

    def queues(self, known: Iterable[str] = ()) -> list[BrokerQueue]:
        """Queues bound on the broker plus `known`, with their waiting messages, sorted by name."""
        return list(self.snapshot(known).queues)

    def snapshot(self, known: Iterable[str] = ()) -> BrokerSnapshot:
        """Queues and depths as `queues()` gives them, plus the overall unacked count (one HLEN, same trip)."""
        started = time.monotonic()
        with self._translated(started):
            names = user_queues(self._bindings(started)) | set(known)
            return self._depths(sorted(names))

    def bindings(self) -> list[Binding]:
        """Every member of every kombu binding set under the prefix, Celery's internal ones included."""
        started = time.monotonic()
        with self._translated(started):
            return self._bindings(started)

    @contextmanager
    def _translated(self, started: float) -> Iterator[None]:
        """Turn any Redis or socket failure into BrokerUnavailable, the URL's password masked."""
        try:
            yield
        except (redis.RedisError, OSError) as exc:
            elapsed = time.monotonic() - started
            message = f"the broker at {self.broker_display} did not answer ({reason(exc)}) after {elapsed:.1f}s"
            log.warning("broker inspection failed: %s", message)
            raise BrokerUnavailable(message) from None

    def _bindings(self, started: float) -> list[Binding]:
        layout = self.layout
        keys: set[bytes | str] = set()  # SCAN may return a key twice
        cursor: int = 0
        while True:
            cursor, batch = self._client.scan(cursor, match=layout.binding_pattern, count=SCAN_COUNT)
            keys.update(batch)
            if cursor == 0:
                break
            if time.monotonic() - started > self.scan_budget:
                raise BrokerUnavailable(
                    f"scanning the broker at {self.broker_display} for kombu's binding sets took more than "
                    f"{self.scan_budget:.1f}s (a very large keyspace in this database?)"
                )
        if not keys:
            return []
        ordered = sorted(keys, key=_text)
        with self._client.pipeline(transaction=False) as pipe:
            for key in ordered:
                pipe.smembers(key)
            # A key that matches the pattern but is not a set answers WRONGTYPE: skip it, keep the rest.
            replies: list[Any] = pipe.execute(raise_on_error=False)
        found: list[Binding] = []
        for key, members in zip(ordered, replies, strict=True):
            exchange = layout.exchange_of(_text(key))
            if exchange is None or not isinstance(members, (set, list)):
                continue
            for member in members:
                binding = layout.parse_member(exchange, _text(member))
                if binding is not None:
                    found.append(binding)
        return found

    def _depths(self, names: list[str]) -> BrokerSnapshot:
        """One pipelined round trip: LLEN of every priority sub-list of every queue, and HLEN of unacked."""
        layout = self.layout
        per_queue = len(layout.priority_steps)
        with self._client.pipeline(transaction=False) as pipe:
            for name in names:
                for key in layout.queue_keys(name):
                    pipe.llen(key)
            pipe.hlen(layout.unacked)
            replies: list[Any] = pipe.execute(raise_on_error=False)
        queues = tuple(
            # Like kombu's own `_size`: a sub-list that is not a list (WRONGTYPE) counts as empty.
            BrokerQueue(name, sum(r for r in replies[i * per_queue : (i + 1) * per_queue] if isinstance(r, int)))
            for i, name in enumerate(names)
        )
        unacked = replies[-1]
        return BrokerSnapshot(queues, unacked if isinstance(unacked, int) else None)

    def close(self) -> None:
        """Disconnect every pooled connection."""
        self._client.close()
        self._pool.disconnect()

    def __repr__(self) -> str:
        return f"RedisBrokerInspector({self.broker_display!r}, prefix={self.layout.prefix!r})"


def _text(value: bytes | str) -> str:
    """A Redis reply as text (kombu writes UTF-8)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


# -- the queue browser -----------------------------------------------------------------------------------------

# One window of a move or delete, atomic. The caller read the window (`n` messages just past the `kept` ones at the
# tail, which it leaves in place) and says, per message in serving order, what becomes of it: ARGV = kept, n, a
# tombstone (a value no message has), then per message (as read, as it goes to the target), the second "" to keep
# it (for a delete, any other value takes it). The script checks the window is still exactly what was read (else
# -1: a worker changed the tail; the caller handles it), then pushes the taken ones onto the target (oldest
# first) and removes them from the source: with nothing kept, by popping the tail and pushing back the others;
# past kept messages, by overwriting each taken one with the tombstone (LSET) and removing the tombstones in one
# scan from the tail (LREM), so the kept messages are never copied. A Redis that dies between two windows leaves
# every message either moved or where it was.
_WINDOW_SCRIPT: Final = """
local kept, n, tombstone = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local window = redis.call('LRANGE', KEYS[1], -(kept + n), -(kept + 1))
if #window ~= n then return -1 end
for i = 1, n do
  if window[n - i + 1] ~= ARGV[2 + 2 * i] then return -1 end
end
local taken = 0
for i = 1, n do
  local replacement = ARGV[3 + 2 * i]
  if replacement ~= '' then
    if KEYS[2] ~= KEYS[1] then redis.call('LPUSH', KEYS[2], replacement) end
    taken = taken + 1
    if kept > 0 then redis.call('LSET', KEYS[1], -(kept + i), tombstone) end
  end
end
if kept > 0 then
  if taken > 0 then redis.call('LREM', KEYS[1], -taken, tombstone) end
  return taken
end
local popped = redis.call('RPOP', KEYS[1], n)
for i = n, 1, -1 do
  if ARGV[3 + 2 * i] == '' then redis.call('RPUSH', KEYS[1], popped[i]) end
end
return taken
"""
_IDLE_RETRIES: Final = 50  # windows in a row that changed under us and moved nothing: give up
# When the tail changed under a window (a worker took a message), its selected messages are handled by value
# instead, each atomically: LREM (count -1: from the tail) finds it wherever it now is, or finds it gone.
_BY_VALUE_SCRIPT: Final = """
local taken = 0
for i = 1, #ARGV, 2 do
  if redis.call('LREM', KEYS[1], -1, ARGV[i]) == 1 then
    if KEYS[2] ~= KEYS[1] then redis.call('LPUSH', KEYS[2], ARGV[i + 1]) end
    taken = taken + 1
  end
end
return taken
"""


class RedisQueueBrowser(QueueBrowser):
    """Queue messages on a Redis broker, read with LRANGE (nothing removed) and moved by an atomic Lua script.

    A queue is one list per priority step (dashboard.model.kombu); kombu pushes on the left (LPUSH) and workers
    pop from the right (BRPOP over the steps in ascending order), so serving order is: step 0's list from its
    tail, then step 3's, and so on. Moving keeps each message's step and its order.
    """

    transport = "redis"
    peek_method = "LRANGE over the queue's lists (nothing is taken)"

    def __init__(self, inspector: RedisBrokerInspector, *, batch: int = MOVE_BATCH) -> None:
        self.inspector = inspector
        self.layout = inspector.layout
        self.batch = batch
        client = inspector._client
        self._client = client
        self._window = client.register_script(_WINDOW_SCRIPT)
        self._by_value = client.register_script(_BY_VALUE_SCRIPT)

    @contextmanager
    def _translated(self, done: Callable[[], int] | None = None) -> Iterator[None]:
        started = time.monotonic()
        try:
            with self.inspector._translated(started):
                yield
        except BrokerUnavailable as exc:
            if done is None:
                raise
            count = done()
            raise ActionInterrupted(f"{exc}; {count} message(s) were handled before that, the others stay where "
                                    "they were", count) from None

    def _lengths(self, queue: str) -> list[tuple[str, int]]:
        keys = self.layout.queue_keys(queue)
        with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.llen(key)
            replies: list[Any] = pipe.execute(raise_on_error=False)
        return [(key, reply if isinstance(reply, int) else 0) for key, reply in zip(keys, replies, strict=True)]

    def depth(self, queue: str) -> int:
        """Sum of LLEN over the priority sub-lists."""
        with self._translated():
            return sum(length for _, length in self._lengths(queue))

    def peek(self, queue: str, limit: int, offset: int = 0) -> QueuePeek:
        """LLEN of every sub-list, then LRANGE of the slices the page covers (two round trips, nothing taken)."""
        limit, offset = checked_page(limit, offset)
        with self._translated():
            lengths = self._lengths(queue)
            with self._client.pipeline(transaction=False) as pipe:
                for index, first, last in page_slices([length for _, length in lengths], offset, limit):
                    pipe.lrange(lengths[index][0], -(last + 1), -(first + 1))
                slices: list[Any] = pipe.execute(raise_on_error=False)
        raw: list[bytes] = []
        for items in slices:
            if isinstance(items, list):
                raw.extend(reversed(items))  # LRANGE reads head to tail; the tail is served first
        depth = sum(length for _, length in lengths)
        return QueuePeek(queue, depth, offset, decoded([redis_envelope(item) for item in raw[:limit]]),
                         exists=depth > 0)

    def target_binding(self, queue: str) -> tuple[str, str]:
        """(exchange, routing_key) a message for `queue` is delivered with: the queue's own binding when there is
        one (Celery binds a queue to an exchange of its name by default), else (queue, queue)."""
        bindings = [binding for binding in self.inspector.bindings() if binding.queue == queue]
        for binding in sorted(bindings, key=lambda b: (b.exchange != queue, b.exchange, b.routing_key)):
            return binding.exchange, binding.routing_key
        return queue, queue

    def move(self, queue: str, to: str, selection: Selection) -> int:
        """Move the selected messages, oldest first, keeping their priority step (see _WINDOW_SCRIPT)."""
        exchange, routing_key = self.target_binding(to)
        targets = dict(zip(self.layout.queue_keys(queue), self.layout.queue_keys(to), strict=True))

        def moved(raw: bytes, payload: Any) -> bytes | str:
            return retarget_redis_payload(raw, exchange, routing_key) or raw

        return self._each_selected(queue, selection, targets, moved)

    def delete(self, queue: str, selection: Selection) -> int:
        """Delete the selected messages, window by window (each atomic)."""
        keys = self.layout.queue_keys(queue)
        return self._each_selected(queue, selection, dict(zip(keys, keys, strict=True)), lambda raw, payload: "x")

    def _each_selected(self, queue: str, selection: Selection, targets: Mapping[str, str],
                       replacement: Callable[[bytes, Any], bytes | str]) -> int:
        """Walk every sub-list from its tail, window by window: the selected messages go to `targets[key]` as
        `replacement` makes them (to nowhere when the target is the list itself), the others stay in place.

        `kept` counts the messages left at the tail end, so the next window starts past them: a new message is
        pushed at the head and never shifts it. When the tail changed since the window was read (a worker took a
        message), that window's selected messages are moved by value and reading starts again from the tail: a
        message is never moved twice, never lost.
        """
        done = 0
        tombstone = f"\x00dispatch-dashboard-moved-{uuid.uuid4()}"  # no kombu message looks like this
        with self._translated(lambda: done):
            for key in self.layout.queue_keys(queue):
                kept = idle = 0
                while (left := remaining(selection, done)) is None or left > 0:
                    items: list[Any] = self._client.lrange(key, -(kept + self.batch), -(kept + 1))
                    if not items:
                        break
                    args: list[Any] = []
                    taking = skipped = 0
                    for item in reversed(items):  # oldest first
                        take = left is None or taking < left
                        payload = None
                        if take and not selection.everything:
                            payload = load_redis_payload(item)
                            take = selection.matches(*redis_name_and_id(payload))
                        taking += take
                        skipped += not take
                        args += [item, replacement(item, payload) if take else ""]
                    taken = int(self._window(keys=[key, targets[key]], args=[kept, len(items), tombstone, *args]))
                    if taken < 0:  # the tail moved under us: this window by value, then read again from the tail
                        chosen = [arg for i in range(0, len(args), 2) if args[i + 1] != "" for arg in args[i:i + 2]]
                        by_value = int(self._by_value(keys=[key, targets[key]], args=chosen)) if chosen else 0
                        done += by_value
                        kept, idle = 0, 0 if by_value else idle + 1
                        if idle > _IDLE_RETRIES:
                            raise BrokerUnavailable(f"queue {queue!r} changed under every read ({idle} in a row); "
                                                    "try again when it is quieter")
                        continue
                    idle = 0
                    done += taken
                    kept += skipped
                    if len(items) < self.batch:
                        break
        return done

    def purge(self, queue: str) -> int:
        """LLEN and DEL of every sub-list in one MULTI (kombu's own purge, atomic)."""
        keys = self.layout.queue_keys(queue)
        with self._translated(), self._client.pipeline(transaction=True) as pipe:
            for key in keys:
                pipe.llen(key)
                pipe.delete(key)
            replies: list[Any] = pipe.execute()
        return sum(reply for reply in replies[::2] if isinstance(reply, int))

    def close(self) -> None:
        """The inspector owns the connections."""
        self.inspector.close()
