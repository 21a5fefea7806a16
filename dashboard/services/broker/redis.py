"""Broker inspection on Redis: queues from kombu's binding sets, depths by pipelined LLEN over the priority
sub-lists (the key layout is dashboard.model.kombu)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ...exceptions import BrokerUnavailable, ConfigError
from ...model.kombu import Binding, KombuRedisLayout, user_queues
from ...model.routing import BrokerQueue
from ...model.secrets import reason
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

    @property
    def client(self) -> redis.Redis:
        """The bounded client (the queue browser issues its own commands through it)."""
        return self._client

    def translated(self) -> AbstractContextManager[None]:
        """A block whose Redis or socket failures become BrokerUnavailable, timed from now."""
        return self._translated(time.monotonic())

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
