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
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import kombu
from celery.contrib.migrate import republish
from kombu.connection import Connection
from kombu.exceptions import KombuError

from ...exceptions import ActionInterrupted, BrokerUnavailable, CannotPeek, ConfigError, QueueNotFound
from ...model.kombu import EVENT_QUEUE_PREFIX, PIDBOX_SUFFIX
from ...model.messages import Envelope, Selection, management_envelope
from ...model.routing import BrokerQueue
from ...model.secrets import mask_text, mask_url, reason
from .queues import QueueBrowser, QueuePeek, checked_page, decoded, remaining, selected
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
_kombu: Any = kombu  # Queue, Exchange, Producer and Consumer: untyped as well

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




# -- the queue browser -----------------------------------------------------------------------------------------

MAX_PEEK_WINDOW: Final = 2_000  # offset + limit: the management API takes (and requeues) that many to show a page
PEEK_TRUNCATE: Final = 256 * 1024  # bytes of each payload the management API returns
IDLE_WAIT: Final = 1.0  # a move stops when no message came for this long (the rest were taken by others)


class AmqpQueueBrowser(QueueBrowser):
    """Queue messages on RabbitMQ.

    Peeking: AMQP has no way to read a message without taking it, so a page is read through the management API's
    `POST /api/queues/<vhost>/<queue>/get` with ``ackmode=ack_requeue_true``: RabbitMQ hands the messages over and
    puts them back at once, in place, flagged redelivered (a worker consuming the queue at that moment may get
    one of them a moment later). Without ``management_url`` it refuses (CannotPeek) rather than requeue by AMQP.

    Moving and deleting follow celery.contrib.migrate: consume with manual acks, republish with Celery's own
    `republish` (raw body, headers and properties kept) under publisher confirms, then ack. Messages that are not
    selected stay unacknowledged until the connection closes, and RabbitMQ requeues them then; a broker failure
    halfway requeues every message not yet acknowledged. Bodies are never decoded beyond JSON (no pickle).
    """

    transport = "amqp"

    def __init__(self, inspector: AmqpBrokerInspector) -> None:
        self.inspector = inspector
        self.timeout = inspector.timeout
        self.peek_method = ("the management API's get with requeue (messages are taken and put back at once)"
                            if inspector.management is not None else "")

    # -- reading -------------------------------------------------------------------------------------------------

    def _stat(self, queue: str) -> QueueStat:
        started = time.monotonic()  # one passive declare (stats() would list the whole vhost first)
        stat = self.inspector._with_connection(started, lambda: self.inspector._declare(queue, started))
        if stat.exists and stat.depth is None:
            raise BrokerUnavailable(f"RabbitMQ would not measure queue {queue!r} (another connection's exclusive "
                                    "queue?)")
        return stat

    def depth(self, queue: str) -> int:
        """A passive declare's message count (0 when the queue does not exist)."""
        return self._stat(queue).depth or 0

    def peek(self, queue: str, limit: int, offset: int = 0) -> QueuePeek:
        """The management API's get with requeue, or CannotPeek when it is not configured."""
        limit, offset = checked_page(limit, offset)
        stat = self._stat(queue)
        if not stat.exists:
            return QueuePeek(queue, 0, offset, (), exists=False)
        api = self.inspector.management
        if api is None:
            raise CannotPeek(
                f"queue {queue!r} holds {stat.depth} message(s), but RabbitMQ cannot show them without taking "
                "them: set broker_transport_options.management_url so the management API can read them and "
                "requeue them at once (see the README's queue browser section for the trade-off)"
            )
        count = min(offset + limit, MAX_PEEK_WINDOW, stat.depth or 0)
        if count <= offset:
            return QueuePeek(queue, stat.depth or 0, offset, (), exists=True, requeued=False)
        url = f"{api.base_url}/api/queues/{quote(self.inspector.vhost, safe='')}/{quote(queue, safe='')}/get"
        body = {"count": count, "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": PEEK_TRUNCATE}
        items = _management_post(api, url, body, self.timeout)
        if not isinstance(items, list):
            raise BrokerUnavailable(f"the management API at {api.base_url} answered a {type(items).__name__}, "
                                    "not a list of messages")
        envelopes = [management_envelope(item) for item in items[offset:offset + limit] if isinstance(item, dict)]
        return QueuePeek(queue, stat.depth or 0, offset, decoded(envelopes), exists=True, requeued=True)

    # -- acting --------------------------------------------------------------------------------------------------

    @contextmanager
    def _session(self, done: Callable[[], int] | None = None) -> Iterator[Any]:
        """A connection of its own with publisher confirms; failures become BrokerUnavailable (ActionInterrupted
        once something was done)."""
        template = self.inspector._template
        started = time.monotonic()
        connection = template.clone(transport_options={**template.transport_options, "confirm_publish": True})
        try:
            with self.inspector._translated(started):
                connection.ensure_connection(max_retries=max(len(connection.alt), 1) - 1, timeout=self.timeout)
            try:
                with self.inspector._translated(started):
                    yield connection
            except BrokerUnavailable as exc:
                count = done() if done is not None else 0
                if count:
                    raise ActionInterrupted(f"{exc}; {count} message(s) were handled before that, the others "
                                            "stay where they were", count) from None
                raise
        finally:
            with suppress(*self.inspector._errors):
                connection.collect()

    def _exists(self, connection: Any, queue: str) -> bool:
        channel = connection.channel()
        try:
            channel.queue_declare(queue=queue, passive=True)
        except self.inspector._channel_errors as exc:
            if getattr(exc, "code", None) == NOT_FOUND:
                return False
            raise
        finally:
            with suppress(*self.inspector._errors):
                channel.close()
        return True

    def purge(self, queue: str) -> int:
        """queue.purge: the ready messages are deleted by RabbitMQ in one step."""
        with self._session() as connection:
            if not self._exists(connection, queue):
                raise QueueNotFound(f"queue {queue!r} does not exist on the broker")
            channel = connection.channel()
            return int(channel.queue_purge(queue=queue) or 0)

    def move(self, queue: str, to: str, selection: Selection) -> int:
        """Consume, republish to `to` through the default exchange (confirmed), then ack — one message at a time."""
        done = 0

        def count() -> int:
            return done

        with self._session(count) as connection:
            if not self._exists(connection, queue):
                raise QueueNotFound(f"queue {queue!r} does not exist on the broker")
            if not self._exists(connection, to):
                # Declared as Celery declares a queue of that name, so the first worker that consumes it agrees.
                target = _kombu.Queue(to, _kombu.Exchange(to, type="direct"), routing_key=to)
                target(connection.channel()).declare()
            producer = _kombu.Producer(connection.channel(), auto_declare=False)

            def move_one(message: Any) -> None:
                nonlocal done
                republish(producer, message, exchange="", routing_key=to)  # the default exchange: straight to `to`
                message.ack()
                done += 1

            self._each_selected(connection, queue, selection, move_one, count)
        return done

    def delete(self, queue: str, selection: Selection) -> int:
        """Consume and ack the selected messages without republishing them."""
        done = 0

        def count() -> int:
            return done

        with self._session(count) as connection:
            if not self._exists(connection, queue):
                raise QueueNotFound(f"queue {queue!r} does not exist on the broker")

            def delete_one(message: Any) -> None:
                nonlocal done
                message.ack()
                done += 1

            self._each_selected(connection, queue, selection, delete_one, count)
        return done

    def _each_selected(self, connection: Any, queue: str, selection: Selection, act: Callable[[Any], None],
                       done: Callable[[], int]) -> None:
        """Consume `queue` once through (as many messages as it held when we started), acting on the selected
        ones; the others stay unacknowledged, so RabbitMQ requeues them when the connection closes."""
        channel = connection.channel()
        depth = int(channel.queue_declare(queue=queue, passive=True).message_count)

        # Deliveries are queued here and handled outside the callback: waiting for a publisher confirm drains the
        # connection, which would otherwise hand over the next message before this one is counted.
        delivered: deque[Any] = deque()
        seen = 0
        consumer = _kombu.Consumer(channel, queues=[_kombu.Queue(queue, no_declare=True)],
                                   on_message=delivered.append, accept=[], no_ack=False, auto_declare=False)
        with consumer:
            while seen < depth and ((left := remaining(selection, done())) is None or left > 0):
                if not delivered:
                    try:
                        connection.drain_events(timeout=min(self.timeout, IDLE_WAIT))
                    except TimeoutError:  # socket.timeout: nothing more came (others took the rest)
                        break
                    continue
                message = delivered.popleft()
                seen += 1
                body = message.body or b""
                envelope = Envelope(body.encode("utf-8", "surrogatepass") if isinstance(body, str) else bytes(body),
                                    str(message.content_type or ""), str(message.content_encoding or ""),
                                    message.headers or {}, message.properties.get("priority"))
                if selected(envelope, selection):
                    act(message)

    def close(self) -> None:
        """The inspector owns the kept connection."""
        self.inspector.close()


def _management_post(api: ManagementApi, url: str, body: Mapping[str, Any], timeout: float) -> Any:
    """POST JSON to the management API and decode its JSON answer; BrokerUnavailable on any failure."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": api.authorization(), "Accept": "application/json",
                 "Content-Type": "application/json"},
    )
    where = f"the management API at {api.base_url}"
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            raw = response.read(MAX_MANAGEMENT_BYTES + 1)
    except urllib.error.HTTPError as exc:
        if exc.code == NOT_FOUND:
            raise QueueNotFound("the queue does not exist on the broker (the management API answered 404)") from None
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
