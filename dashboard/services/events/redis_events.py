"""Celery events read straight off Redis pub/sub: the same wire format kombu's Redis transport publishes, without
kombu's consumer machinery on the read path.

Why: draining a backlog, ~65 % of the event thread went to redis-py's pure-Python reply parser and to decoding
each message through kombu's channel, message and receiver layers (bench/README.md). Here a subscribed socket is
read a buffer at a time, its replies parsed by hiredis (redis-py's optional C parser), and each message's
envelope and body decoded once with orjson. On a captured 20 000-event backlog (bench/README.md): kombu's
receiver took 100 µs of CPU per event; this path decodes one in 7.5 µs from a buffer (17 µs reading the socket
too), against 39.5 µs with the standard library's json and a pure-Python reply parser. AMQP brokers keep kombu's
EventReceiver (listener.py).

The wire format (kombu 5, Celery's event dispatcher): a PUBLISH on `{global_keyprefix}{fanout_prefix}celeryev/
{routing_key}` (fanout_prefix is `/{db}.` by default) of a JSON envelope whose `body` is the event, or a list of
events (`task.multi`), as JSON, base64-encoded when `properties.body_encoding` says so. The subscription is the
pattern kombu's receiver uses: the routing key `#` becomes `*`.
"""

from __future__ import annotations

import binascii
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

import hiredis
import orjson
import redis
from celery.utils.time import utcoffset

from ..broker.redis import RedisTarget
from ..broker.urls import REDIS_SCHEMES, broker_scheme
from ..client import ClientSettings

log = logging.getLogger(__name__)

EVENT_EXCHANGE: Final = "celeryev"
READ_SIZE: Final = 1 << 18  # bytes per recv: a backlog is read 256 KiB (~300 events) at a time
CLIENT_NAME: Final = "dispatch-dashboard-events"
JSON_TYPES: Final = frozenset({"application/json", "application/x-json"})


class StreamLost(ConnectionError):
    """The subscription ended: the server closed it, refused a command, or sent something that is not RESP."""


def subscribe_pattern(transport_options: Mapping[str, Any], db: int, exchange: str = EVENT_EXCHANGE) -> str:
    """The PSUBSCRIBE pattern kombu's Redis transport uses for an event receiver's fanout queue."""
    prefix = transport_options.get("global_keyprefix") or ""
    fanout_prefix = transport_options.get("fanout_prefix", True)
    if isinstance(fanout_prefix, str):
        keyprefix = fanout_prefix.format(db=db)
    elif fanout_prefix:
        keyprefix = f"/{db}."
    else:
        keyprefix = ""
    if transport_options.get("fanout_patterns", True):
        return f"{prefix}{keyprefix}{exchange}/*"
    return f"{prefix}{keyprefix}{exchange}"


class EventDecoder:
    """Turns a published envelope into the events Celery's EventReceiver would hand its handlers: timestamps
    moved to this host's timezone, `local_received` set. Messages that are not JSON events are counted and
    skipped, as kombu's receiver (accept_content = json) refuses them."""

    __slots__ = ("_here", "rejected")

    def __init__(self) -> None:
        self._here = utcoffset()
        self.rejected = 0

    def decode(self, data: bytes, now: float) -> list[dict[str, Any]]:
        """The events in one published message (none when it is not a JSON Celery event)."""
        try:
            envelope = orjson.loads(data)
            body: Any = envelope["body"]
            properties = envelope.get("properties") or {}
            if envelope.get("content-type") not in JSON_TYPES:
                raise ValueError(f"content type {envelope.get('content-type')!r}")
            if properties.get("body_encoding") == "base64":
                body = binascii.a2b_base64(body)
            payload = orjson.loads(body)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # orjson's and binascii's are ValueErrors
            self.rejected += 1
            if self.rejected in (1, 10, 100) or self.rejected % 1000 == 0:
                log.warning("skipped a message on the event channel that is not a JSON Celery event (%s); "
                            "%d so far", type(exc).__name__, self.rejected)
            return []
        events = payload if isinstance(payload, list) else [payload]
        out = []
        here = self._here
        for event in events:
            if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                self.rejected += 1
                continue
            offset = event.get("utcoffset")
            timestamp = event.get("timestamp")
            if offset is not None and timestamp is not None:
                with contextlib.suppress(TypeError):  # celery.utils.time.adjust_timestamp: into our timezone
                    event["timestamp"] = timestamp - (offset - here) * 3600
            event["local_received"] = now
            out.append(event)
        return out


class RedisEventStream:
    """One PSUBSCRIBE connection; `read()` returns the events received since the last call."""

    def __init__(self, broker_url: str, transport_options: Mapping[str, Any], timeout: float,
                 clock: Callable[[], float] = time.time) -> None:
        self._target = RedisTarget.from_url(broker_url)
        self.pattern = subscribe_pattern(transport_options, self._target.db)
        self._timeout = timeout
        self._clock = clock
        self._connection: redis.connection.AbstractConnection | None = None
        self._sock: socket.socket | None = None
        self._parser = hiredis.Reader()
        self._pending: list[Any] = []  # replies read along with the subscription's confirmation
        self.decoder = EventDecoder()

    def open(self) -> None:
        """Connect, authenticate, select, and subscribe; every step bounded by the timeout. Raises redis-py's
        ConnectionError/TimeoutError, or StreamLost when the server refuses."""
        kwargs = self._target.pool_kwargs(self._timeout)
        kwargs["client_name"] = CLIENT_NAME
        kwargs.pop("health_check_interval", None)  # this connection is read raw: redis-py never checks it
        kwargs["protocol"] = 2  # RESP2 pub/sub replies (redis-py 8 would say HELLO 3)
        connection_class = kwargs.pop("connection_class", redis.Connection)
        connection = connection_class(**kwargs)
        connection.connect()
        self._connection = connection
        connection.send_command("PSUBSCRIBE", self.pattern)
        sock = connection._sock
        if sock is None:
            raise StreamLost("the connection closed while subscribing")
        self._sock = sock
        deadline = time.monotonic() + self._timeout
        while True:  # the subscription's confirmation, within the timeout
            replies = self._receive(max(0.01, deadline - time.monotonic()))
            if replies is None:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"no answer to PSUBSCRIBE within {self._timeout:.1f}s")
                continue
            first = replies[0] if replies else None
            if isinstance(first, hiredis.ReplyError):
                raise StreamLost(f"Redis refused the subscription: {first}")
            if isinstance(first, list) and first and first[0] == b"psubscribe":
                # anything after it in the same read is already events
                self._pending = replies[1:]
                return
            raise StreamLost(f"unexpected answer to PSUBSCRIBE: {first!r:.80}")

    def read(self, wait: float) -> Iterator[dict[str, Any]]:
        """The events that arrived, waiting up to `wait` seconds for the first (none when none came). A buffer's
        messages are decoded one at a time as the caller takes them, so it can pause between events."""
        replies: list[Any] | None
        if self._pending:
            replies, self._pending = self._pending, []
        else:
            replies = self._receive(wait)
            if not replies:
                return
        now = self._clock()
        decode = self.decoder.decode
        for reply in replies:
            if isinstance(reply, list) and len(reply) == 4 and reply[0] == b"pmessage":
                data = reply[3]
                if isinstance(data, bytes) and data:
                    yield from decode(data, now)
            elif isinstance(reply, hiredis.ReplyError):
                raise StreamLost(f"Redis sent an error on the event stream: {reply}")

    def _receive(self, wait: float) -> list[Any] | None:
        """Parse what arrives within `wait` seconds: None when nothing did."""
        sock = self._sock
        if sock is None:
            raise StreamLost("not subscribed")
        sock.settimeout(wait)
        try:
            data = sock.recv(READ_SIZE)
        except TimeoutError:  # socket.timeout
            return None
        if not data:
            raise StreamLost("Redis closed the event stream's connection")
        parser = self._parser
        try:  # a reply split across reads stays buffered in the reader until the rest arrives
            parser.feed(data)
            replies = []
            while (reply := parser.gets()) is not False:
                replies.append(reply)
        except hiredis.ProtocolError as exc:
            raise StreamLost(f"the event stream is not RESP: {exc}") from None
        return replies

    def close(self) -> None:
        """Drop the connection (never raises)."""
        connection, self._connection, self._sock = self._connection, None, None
        if connection is not None:
            try:
                connection.disconnect()  # type: ignore[no-untyped-call]
            except Exception:  # noqa: BLE001 - closing a broken connection may fail in many ways
                log.debug("closing the event stream's connection failed", exc_info=True)


def redis_event_stream(settings: ClientSettings, clock: Callable[[], float]) -> Callable[[], RedisEventStream] | None:
    """A factory of event streams for the settings' broker, or None when it is not Redis (AMQP keeps kombu)."""
    if broker_scheme(settings.broker_url) not in REDIS_SCHEMES:
        return None
    url, options, timeout = settings.broker_url, dict(settings.broker_transport_options), settings.timeout
    RedisTarget.from_url(url)  # a malformed URL fails here, at start, not in the thread
    return lambda: RedisEventStream(url, options, timeout, clock)
