"""The event listener: one daemon thread per process, with reconnects. On Redis it reads the pub/sub stream
itself (redis_events.py); on other brokers it runs Celery's EventReceiver."""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from celery import Celery

from ...model.secrets import reason
from ..client import BROKER_ERRORS, ClientSettings
from ..priority import RequestPriority

log = logging.getLogger(__name__)


class BrokerStatus(enum.Enum):
    """The listener's connection to the broker, as the UI's indicator shows it."""

    CONNECTING = "connecting"
    LIVE = "live"
    RECONNECTING = "reconnecting"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True, slots=True)
class StatusReport:
    """A status change, with the reason and when it happened."""

    status: BrokerStatus
    since: float
    detail: str = ""
    reconnects: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"broker": self.status.value, "since": self.since, "detail": self.detail, "reconnects": self.reconnects}


def build_listener_app(settings: ClientSettings) -> Celery:
    """A Celery app for consuming events: quick to fail on connect, but no read timeout on the idle stream."""
    app = Celery("dispatch-dashboard-events", set_as_current=False, broker=settings.broker_url)
    transport_options = dict(settings.broker_transport_options)
    transport_options.update(
        {"max_retries": 0, "socket_connect_timeout": settings.timeout, "connect_timeout": settings.timeout,
         "socket_keepalive": True, "health_check_interval": 5}
    )
    transport_options.pop("socket_timeout", None)
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_timeout=settings.timeout,
        broker_connection_retry=False,
        broker_connection_max_retries=0,
        event_queue_expires=60.0,  # our event queue vanishes a minute after we die (amqp)
        event_queue_ttl=5.0,
        accept_content=["json"],
    )
    return app


class EventStream(Protocol):
    """A subscription that yields decoded events (redis_events.RedisEventStream)."""

    def open(self) -> None:
        """Connect and subscribe, within the timeouts; raises a broker error."""

    def read(self, wait: float) -> Iterable[dict[str, Any]]:
        """The events received, waiting up to `wait` seconds for the first."""

    def close(self) -> None:
        """Drop the connection."""


READ_WAIT_SECONDS = 1.0  # how long a read waits for events before the idle check runs


class EventListener:
    """Consumes every Celery event and hands it to `on_event`; reconnects with capped backoff forever.

    With `stream` (a factory of EventStreams), events are read from it; otherwise through Celery's EventReceiver
    on `app`.
    """

    def __init__(
        self,
        app: Celery | None,
        on_event: Callable[[Mapping[str, Any]], None],
        on_status: Callable[[StatusReport], None] | None = None,
        on_connect: Callable[[], None] | None = None,
        *,
        backoff_start: float = 0.2,
        backoff_max: float = 3.0,
        clock: Callable[[], float] = time.time,
        probe: Callable[[], None] | None = None,
        idle_probe_seconds: float = 2.0,
        stream: Callable[[], EventStream] | None = None,
        priority: RequestPriority | None = None,
    ) -> None:
        if app is None and stream is None:
            raise ValueError("an event listener needs a Celery app or an event stream")
        self._app = app
        self._stream = stream
        self._yield = priority.yield_to_requests if priority is not None else None
        self._on_event = on_event
        self._on_status = on_status
        self._on_connect = on_connect
        self._backoff_start = backoff_start
        self._backoff_max = backoff_max
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._receiver: Any = None
        self._lock = threading.Lock()
        self.reconnects = 0
        self.report = StatusReport(BrokerStatus.CONNECTING, clock())
        # The event stream reads without a timeout (an idle stream is normal), so a broker that stops answering
        # would look live for ever: when no event came for a while, `probe` (a bounded round trip on its own
        # connection) must succeed, or the stream is treated as lost. It also runs before each (re)connect.
        self._probe = probe
        self._idle_probe_seconds = idle_probe_seconds
        self._last_seen = time.monotonic()
        # The latest moment (clock() time) up to which no event can have been missed: the send time of the
        # newest event read (workers' heartbeats keep it within a couple of seconds). When the stream is found
        # cut, events were lost from about then, not from when the cut was noticed: a subscriber that Redis
        # dropped for falling behind first reads what was buffered, for seconds. A successful probe proves
        # nothing here: it runs on its own connection, and after a stall it runs before the backlog is read.
        self.sure_until: float | None = None
        self._last_probe = time.monotonic()

    def start(self) -> None:
        """Start the daemon thread (once; a second call does nothing)."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="dashboard-events", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to stop and wait for it."""
        self._stop.set()
        receiver = self._receiver
        if receiver is not None:
            receiver.should_stop = True
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    @property
    def running(self) -> bool:
        """True while the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def _set_status(self, status: BrokerStatus, detail: str = "") -> None:
        if status is self.report.status and detail == self.report.detail:
            return
        self.report = StatusReport(status, self._clock(), detail, self.reconnects)
        if status is BrokerStatus.LIVE:
            log.info("event stream live")
        else:
            log.warning("event stream %s: %s", status.value, detail)
        if self._on_status is not None:
            self._on_status(self.report)

    def _run(self) -> None:
        delay = self._backoff_start
        while not self._stop.is_set():
            try:
                self._capture()
                delay = self._backoff_start
            except BROKER_ERRORS as exc:
                lost = self.report.status is BrokerStatus.LIVE
                self._set_status(BrokerStatus.RECONNECTING if lost else BrokerStatus.UNREACHABLE, reason(exc))
                # Right after losing a live stream, retry at once; then back off, capped.
                delay = self._backoff_start if lost else min(delay * 2, self._backoff_max)
            except Exception as exc:  # noqa: BLE001 - the listener thread must outlive any one bad event
                log.exception("event listener error; restarting the stream")
                self._set_status(BrokerStatus.RECONNECTING, reason(exc))
                delay = min(delay * 2, self._backoff_max)
            if self._stop.wait(delay):
                break
            if self.report.status is not BrokerStatus.LIVE:
                self.reconnects += 1

    def _handle(self, event: Mapping[str, Any]) -> None:
        if self._yield is not None:
            self._yield()  # requests first (priority.py)
        self._last_seen = time.monotonic()
        sent = event.get("timestamp")
        if isinstance(sent, (int, float)) and not isinstance(sent, bool):
            # the sender's clock, never later than ours: a skewed worker clock must not hide a gap
            sure = min(float(sent), self._clock())
            if self.sure_until is None or sure > self.sure_until:
                self.sure_until = sure
        self._on_event(event)

    def _check_alive(self) -> None:
        """Called by kombu about once a second while consuming: probe the broker when the stream went quiet."""
        if self._probe is None:
            return
        now = time.monotonic()
        quiet = now - self._last_seen
        if quiet >= self._idle_probe_seconds and now - self._last_probe >= self._idle_probe_seconds:
            self._last_probe = now
            try:
                self._probe()
            except BROKER_ERRORS as exc:
                # Say so now: leaving the stream means closing a connection to a broker that does not answer,
                # which can itself take a while.
                self._set_status(BrokerStatus.RECONNECTING, f"the broker stopped answering ({reason(exc)})")
                raise

    def _capture(self) -> None:
        if self._probe is not None:
            self._probe()  # a hung broker would otherwise block the subscription forever
        if self._stream is not None:
            self._capture_stream(self._stream())
            return
        assert self._app is not None
        with self._app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=0, timeout=self._app.conf.broker_connection_timeout)
            receiver = self._app.events.Receiver(connection, handlers={"*": self._handle}, app=self._app)
            receiver.on_iteration = self._check_alive
            receiver.connect_max_retries = 0  # kombu's mixin would otherwise retry forever, blind to stop()
            receiver.should_stop = self._stop.is_set()
            self._receiver = receiver
            consumer = receiver.consume(limit=None, timeout=None, wakeup=True)
            next(consumer, None)  # the first pass subscribes; only then are we live
            self._set_status(BrokerStatus.LIVE)
            if self._on_connect is not None:
                self._on_connect()
            for _ in consumer:
                pass
            if not self._stop.is_set():
                raise ConnectionError("the event stream ended")

    def _capture_stream(self, stream: EventStream) -> None:
        """Read `stream` until stopped; the stop flag and the idle probe are checked at least once a second."""
        try:
            stream.open()
            self._set_status(BrokerStatus.LIVE)
            if self._on_connect is not None:
                self._on_connect()
            handle = self._handle
            while not self._stop.is_set():
                for event in stream.read(READ_WAIT_SECONDS):
                    handle(event)
                self._check_alive()
        finally:
            stream.close()
