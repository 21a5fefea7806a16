"""Broker inspection on RabbitMQ (amqp://): depth and consumer count per queue by a passive queue declare.

AMQP 0-9-1 cannot list queues: `queue.declare(passive=True)` answers for one named queue with its ready messages
(delivered but unacknowledged ones are not counted, like the Redis lists) and its consumers, or closes the channel
with 404 NOT_FOUND when it does not exist. So the queues measured are the `known` ones (what the API routes to);
with the transport option ``management_url`` (the management plugin's HTTP API, e.g. http://host:15672) the
vhost's queues are listed there first, so a queue nothing routes to shows up too. Depths always come from the
passive declares: the management API's counters lag by its statistics interval (5 s by default).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from kombu.connection import Connection
from kombu.exceptions import KombuError

from ...exceptions import BrokerUnavailable, ConfigError
from ...model.kombu import EVENT_QUEUE_PREFIX, PIDBOX_SUFFIX
from ...model.routing import BrokerQueue
from ...model.secrets import mask_text, mask_url, reason
from .urls import AMQP_SCHEMES, broker_scheme, shown_url

log = logging.getLogger(__name__)

T = TypeVar("T")

MANAGEMENT_OPTION: Final = "management_url"
SERVER_NAMED_PREFIX: Final = "amq."  # amq.gen-… (server-named, exclusive) and the reserved amq.* names
NOT_FOUND: Final = 404
MAX_QUEUE_NAME_BYTES: Final = 255  # a shortstr: RabbitMQ has no longer queue names
STALE_CONNECTION_WINDOW: Final = 0.5  # a failure faster than this on a reused connection: a broker restart
MAX_MANAGEMENT_BYTES: Final = 32 * 1024 * 1024  # a /api/queues answer larger than this is refused
# kombu's Connection has no type hints; one alias keeps every call on it from tripping mypy's strict mode.
_KombuConnection: Any = Connection

# The management API is reached directly: proxy settings in the environment are for the outside world.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True, slots=True)
class QueueStat:
    """One queue as a passive declare saw it: ready messages and consumers (None when the broker would not say)."""

    name: str
    exists: bool
    depth: int | None  # 0 for a queue that does not exist (nothing waits), like an absent Redis list
    consumers: int | None  # None when it does not exist or the broker refused to answer (e.g. exclusive)


def is_internal_queue(name: str) -> bool:
    """Celery's own plumbing (event and pidbox queues) and server-named queues: never user queues."""
    return name.startswith((EVENT_QUEUE_PREFIX, SERVER_NAMED_PREFIX)) or name.endswith(PIDBOX_SUFFIX)


@dataclass(frozen=True, slots=True)
class ManagementApi:
    """Where the management HTTP API is and how to log in (the broker's credentials unless the URL has its own)."""

    base_url: str  # without credentials and without a trailing slash
    username: str
    password: str = field(repr=False)

    @classmethod
    def from_option(cls, value: Any, username: str, password: str) -> ManagementApi:
        """Parse the ``management_url`` transport option; ConfigError when it is not an http(s) URL."""
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"broker_transport_options.{MANAGEMENT_OPTION} must be a URL string, not {value!r}")
        shown = mask_url(value.strip())
        try:
            parts = urlsplit(value.strip())
            port = parts.port
        except ValueError:
            raise ConfigError(f"broker_transport_options.{MANAGEMENT_OPTION} {shown!r} is malformed") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"broker_transport_options.{MANAGEMENT_OPTION} {shown!r} must be an http:// or https:// URL, "
                "like http://127.0.0.1:15672"
            )
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        netloc = host + (f":{port}" if port is not None else "")
        base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        if parts.username is not None:
            username, password = unquote(parts.username), unquote(parts.password or "")
        return cls(base, username, password)

    def queues_url(self, vhost: str) -> str:
        """GET this for the vhost's queue names only (no statistics: cheap on a large broker)."""
        return f"{self.base_url}/api/queues/{quote(vhost, safe='')}?disable_stats=true&columns=name"

    def authorization(self) -> str:
        """The Basic authorization header value."""
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode("ascii")
        return f"Basic {token}"

    def post_json(self, path: str, body: Mapping[str, Any], timeout: float) -> Any:
        """POST JSON to `path` (under /api) and decode the JSON answer; 404 is None, any other failure is
        BrokerUnavailable."""
        request = urllib.request.Request(
            f"{self.base_url}/api/{path}", data=json.dumps(body).encode(), method="POST",
            headers={"Authorization": self.authorization(), "Accept": "application/json",
                     "Content-Type": "application/json"},
        )
        where = f"the management API at {self.base_url}"
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                raw = response.read(MAX_MANAGEMENT_BYTES + 1)
        except urllib.error.HTTPError as exc:
            if exc.code == NOT_FOUND:
                return None
            raise BrokerUnavailable(f"{where} answered {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise BrokerUnavailable(f"{where} did not answer ({reason(exc.reason)})") from None
        except (OSError, http.client.HTTPException) as exc:
            raise BrokerUnavailable(f"{where} did not answer ({reason(exc)})") from None
        if len(raw) > MAX_MANAGEMENT_BYTES:
            raise BrokerUnavailable(f"{where} answered more than {MAX_MANAGEMENT_BYTES} bytes")
        try:
            return json.loads(raw)
        except ValueError:
            raise BrokerUnavailable(f"{where} did not answer with JSON (is it the management plugin?)") from None


class AmqpBrokerInspector:
    """Queues, depths and consumer counts on RabbitMQ, one passive declare per queue over one kept connection.

    Every socket operation is bounded by `timeout` (connect and handshake, reads, writes) and a call as a whole
    by `budget` (default 4 x timeout); nothing is retried except once, at once, when a reused connection fails
    within half a second (a broker restart killed it). Any failure is one BrokerUnavailable with the password
    masked, and the next call connects afresh. Safe to call from several threads (calls are serialized).
    """

    def __init__(
        self,
        broker_url: str,
        transport_options: Mapping[str, Any] | None = None,
        timeout: float = 2.0,
        *,
        budget: float | None = None,
    ) -> None:
        if timeout <= 0:
            raise ConfigError(f"broker timeout must be > 0 seconds, not {timeout!r}")
        scheme = broker_scheme(broker_url)
        self.broker_display = shown_url(broker_url)
        if scheme not in AMQP_SCHEMES:
            raise ConfigError(f"broker URL {self.broker_display!r} is not an AMQP URL")
        self.timeout = timeout
        self.budget = budget if budget is not None else 4 * timeout
        options = dict(transport_options or {})
        management = options.pop(MANAGEMENT_OPTION, None)
        # py-amqp takes the transport options as Connection arguments: bound the socket reads and writes too.
        options.update(connect_timeout=timeout, read_timeout=timeout, write_timeout=timeout)
        try:
            # amqps keeps kombu's SSL transport; amqp, pyamqp and librabbitmq all go through py-amqp here.
            self._template: Any = _KombuConnection(
                broker_url,
                transport="amqps" if scheme == "amqps" else "pyamqp",
                connect_timeout=timeout,
                heartbeat=0,  # a kept, mostly idle connection: no heartbeat frames to owe the server
                transport_options=options,
            )
        except (ValueError, KombuError) as exc:
            raise ConfigError(f"broker URL {self.broker_display!r} is malformed: {mask_text(str(exc))}") from None
        self.vhost: str = self._template.virtual_host or "/"
        self.management = (
            ManagementApi.from_option(management, self._template.userid or "guest", self._password())
            if management is not None
            else None
        )
        # What py-amqp raises, through kombu: AccessRefused, NotFound, ConnectionForced, … (amqp's ChannelError
        # and ConnectionError families), socket errors and timeouts (OSError), and kombu's own wrappers.
        self._channel_errors: tuple[type[BaseException], ...] = tuple(self._template.channel_errors)
        self._errors: tuple[type[BaseException], ...] = (
            KombuError, OSError, *self._template.connection_errors, *self._channel_errors
        )
        self._lock = threading.Lock()
        self._connection: Any = None
        self._channel: Any = None

    def _password(self) -> str:
        password = self._template.password
        return str(password() if callable(password) else password or "guest")

    # -- public --------------------------------------------------------------------------------------------------

    def queues(self, known: Iterable[str] = ()) -> list[BrokerQueue]:
        """Queues listed by the management API (when configured) plus `known`, with their depth, sorted by name."""
        return [BrokerQueue(stat.name, stat.depth) for stat in self.stats(known)]

    def consumer_counts(self, known: Iterable[str] = ()) -> dict[str, int]:
        """Consumers per queue, for the same queues as `queues()` that exist and answered."""
        return {stat.name: stat.consumers for stat in self.stats(known) if stat.consumers is not None}

    def stats(self, known: Iterable[str] = ()) -> list[QueueStat]:
        """One passive declare per queue (management-listed plus `known`), sorted by name."""
        started = time.monotonic()
        wanted = set(known)
        with self._translated(started):
            if self.management is not None:
                wanted |= self._listed()
        names = sorted(wanted)
        return self._with_connection(started, lambda: [self._declare(name, started) for name in names])

    def listed(self) -> list[str]:
        """The vhost's user queues according to the management API (empty when it is not configured)."""
        if self.management is None:
            return []
        started = time.monotonic()
        with self._translated(started):
            return sorted(self._listed())

    def declare(self, name: str) -> QueueStat:
        """One queue's passive declare on the kept connection (stats() would list the vhost first)."""
        started = time.monotonic()
        return self._with_connection(started, lambda: self._declare(name, started))

    def connection(self, **transport_options: Any) -> Any:
        """A new, not yet connected kombu Connection like the kept one, with more transport options."""
        return self._template.clone(transport_options={**self._template.transport_options, **transport_options})

    def translated(self) -> AbstractContextManager[None]:
        """A block whose AMQP, HTTP or socket failures become BrokerUnavailable, timed from now."""
        return self._translated(time.monotonic())

    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        """Everything a call to the broker may raise (the channel errors included)."""
        return self._errors

    @property
    def channel_errors(self) -> tuple[type[BaseException], ...]:
        """What the broker raises when it closes a channel (404 NOT_FOUND and the like)."""
        return self._channel_errors

    def close(self) -> None:
        """Close the connection (politely, within the timeouts); the next call opens a new one."""
        with self._lock:
            connection, self._connection, self._channel = self._connection, None, None
            if connection is not None:
                try:
                    connection.release()
                except self._errors:
                    connection.collect()

    def __repr__(self) -> str:
        management = f", management={self.management.base_url!r}" if self.management else ""
        return f"AmqpBrokerInspector({self.broker_display!r}, vhost={self.vhost!r}{management})"

    # -- connection ----------------------------------------------------------------------------------------------

    def _with_connection(self, started: float, work: Callable[[], T]) -> T:
        with self._lock:
            reused = self._connection is not None
            try:
                with self._translated(started, drop=True, report=not reused):
                    return work()
            except BrokerUnavailable as exc:
                if not reused or time.monotonic() - started > STALE_CONNECTION_WINDOW:
                    if reused:  # logged quietly above, in case the retry below would have saved the call
                        log.warning("broker inspection failed: %s", exc)
                    raise
            log.info("broker connection to %s was stale; reconnecting once", self.broker_display)
            with self._translated(started, drop=True):
                return work()

    def _connect(self) -> None:
        connection = self._template.clone()
        try:
            # max_retries counts retries: 0 tries each failover URL once, with no sleep in between.
            connection.ensure_connection(max_retries=max(len(connection.alt), 1) - 1, timeout=self.timeout)
            self._channel = connection.channel()
        except BaseException:
            connection.collect()
            raise
        self._connection = connection

    def _channel_ready(self) -> Any:
        if self._connection is None:
            self._connect()
        elif self._channel is None or not getattr(self._channel, "is_open", False):
            assert self._connection is not None
            self._channel = self._connection.channel()
        return self._channel

    def _drop(self) -> None:
        """Forget the connection without a handshake (it may be dead): the next call reconnects."""
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            with suppress(*self._errors):
                connection.collect()

    @contextmanager
    def _translated(self, started: float, *, drop: bool = False, report: bool = True) -> Iterator[None]:
        """Turn any AMQP, HTTP or socket failure into BrokerUnavailable, the URL's password masked."""
        try:
            yield
        except BrokerUnavailable:
            if drop:
                self._drop()
            raise
        except self._errors as exc:
            if drop:
                self._drop()
            elapsed = time.monotonic() - started
            message = f"the broker at {self.broker_display} did not answer ({reason(exc)}) after {elapsed:.1f}s"
            if report:
                log.warning("broker inspection failed: %s", message)
            else:  # a reused connection: _with_connection may retry on a fresh one before giving up
                log.info("broker inspection failed on a kept connection: %s", message)
            raise BrokerUnavailable(message) from None

    # -- the questions -------------------------------------------------------------------------------------------

    def _declare(self, name: str, started: float) -> QueueStat:
        if time.monotonic() - started > self.budget:
            raise BrokerUnavailable(
                f"measuring the queues on the broker at {self.broker_display} took more than {self.budget:.1f}s"
            )
        if len(name.encode("utf-8", "surrogatepass")) > MAX_QUEUE_NAME_BYTES:
            return QueueStat(name, exists=False, depth=0, consumers=None)  # AMQP cannot even say the name
        channel = self._channel_ready()
        try:
            ok = channel.queue_declare(queue=name, passive=True)
        except self._channel_errors as exc:
            # The server closed the channel (py-amqp reopens it; _channel_ready checks on the next declare).
            if getattr(exc, "code", None) == NOT_FOUND:
                return QueueStat(name, exists=False, depth=0, consumers=None)
            # 403 or 405 (another connection's exclusive queue): it exists, its numbers are not ours to see.
            log.info("queue %r could not be measured: %s", name, reason(exc))
            return QueueStat(name, exists=True, depth=None, consumers=None)
        return QueueStat(name, exists=True, depth=int(ok.message_count), consumers=int(ok.consumer_count))

    def _listed(self) -> set[str]:
        api = self.management
        assert api is not None
        request = urllib.request.Request(
            api.queues_url(self.vhost),
            headers={"Authorization": api.authorization(), "Accept": "application/json"},
        )
        where = f"the management API at {api.base_url}"
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                body = response.read(MAX_MANAGEMENT_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise BrokerUnavailable(f"{where} answered {exc.code} {exc.reason} for vhost {self.vhost!r}") from None
        except urllib.error.URLError as exc:
            raise BrokerUnavailable(f"{where} did not answer ({reason(exc.reason)})") from None
        except (OSError, http.client.HTTPException) as exc:  # a timeout or a reset while reading
            raise BrokerUnavailable(f"{where} did not answer ({reason(exc)})") from None
        if len(body) > MAX_MANAGEMENT_BYTES:
            raise BrokerUnavailable(f"{where} listed more than {MAX_MANAGEMENT_BYTES} bytes of queues")
        try:
            items = json.loads(body)
        except ValueError:
            raise BrokerUnavailable(f"{where} did not answer with JSON (is it the management plugin?)") from None
        if not isinstance(items, list):
            raise BrokerUnavailable(f"{where} answered with a {type(items).__name__}, not a list of queues")
        return {
            item["name"]
            for item in items
            if isinstance(item, dict) and isinstance(item.get("name"), str) and not is_internal_queue(item["name"])
        }


