"""The live monitor: one per process; it runs the threads that keep the event state current.

Three threads, all daemons, all started lazily by `Monitor.start()` (never at import, never twice per process):
- the event listener (listener.py) hands every Celery event to the sink (sink.py): state, hub, hooks;
- the ticker flips workers offline when their heartbeat is overdue (no event says so);
- the jobs thread periodically asks workers to enable task events (`control.enable_events`), since a worker
  started without `-E` sends none, and runs the jobs it was built with (jobs.py), such as the worker and broker
  inspection of the routing comparison. It is separate from the ticker: an inspection that waits on a dead
  worker must not delay the offline flip.

Everything it drives is given at construction (the composition root, dashboard/app.py, builds it last).
Readers (pages, API, websockets) call the State's snapshot methods, which copy under the State's own lock.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from celery import Celery

from ...model.state import State
from ..client import BROKER_ERRORS, ClientSettings, build_send_only_app
from ..priority import RequestPriority
from .hub import Hub
from .jobs import Jobs
from .listener import EventListener, StatusReport, build_listener_app
from .redis_events import redis_event_stream
from .sink import EventSink
from .stream import Gap, StreamLog

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0  # the jobs thread wakes at least this often (and at once when kicked)
WORKER_CHECK_SECONDS = 0.5  # how often heartbeats are checked for overdue workers
ENABLE_EVENTS_EVERY = 30.0  # seconds between enable_events broadcasts (and once right after each connect)


class Companion(Protocol):
    """Something with threads of its own that starts and stops with the monitor (the webhook notifier)."""

    def start(self) -> None: ...

    def stop(self, timeout: float = ...) -> None: ...


class Monitor:
    """Celery events -> sink (State, Hub, hooks), the stream's status and gaps, the offline ticker and the jobs."""

    def __init__(
        self,
        settings: ClientSettings,
        sink: EventSink,
        stream: StreamLog,
        jobs: Jobs,
        *,
        listener_app: Celery | None = None,
        control_app: Celery | None = None,
        clock: Callable[[], float] = time.time,
        companions: Iterable[Companion] = (),
        priority: RequestPriority | None = None,
    ) -> None:
        self.settings = settings
        self.companions = tuple(companions)
        self.priority = priority
        self.sink = sink
        self.stream = stream
        self.jobs = jobs
        self.clock = clock
        self._listener_app = listener_app
        self._control_app = control_app
        self.listener: EventListener | None = None
        self._lock = threading.Lock()
        self._started_pid: int | None = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._jobs_thread: threading.Thread | None = None
        self._online: dict[str, bool] = {}
        self._connected = threading.Event()
        self._last_enable_events: float | None = None  # monotonic time of the last broadcast; None: never

    # -- what readers use -------------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The event state."""
        return self.sink.state

    @property
    def hub(self) -> Hub:
        """The change hub the websockets subscribe to."""
        return self.sink.hub

    @property
    def status(self) -> StatusReport:
        """The event stream's status, as the connection indicator shows it."""
        return self.stream.status

    @property
    def gaps(self) -> list[Gap]:
        """The latest gaps in the stream (copies)."""
        return self.stream.gaps

    @property
    def gaps_total(self) -> int:
        """Gaps since start."""
        return self.stream.gaps_total

    @property
    def connects(self) -> int:
        """Subscriptions since start."""
        return self.stream.connects

    def kick(self, name: str | None = None) -> None:
        """Make a job (or every job) due now."""
        self.jobs.kick(name)

    def publish(self, kind: Any, key: str = "") -> None:
        """Mark a change for every websocket client."""
        self.sink.publish(kind, key)

    @property
    def control_app(self) -> Celery:
        """The bounded app used for broadcasts and inspection (built on first use)."""
        if self._control_app is None:
            self._control_app = build_send_only_app(self.settings)
        return self._control_app

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> bool:
        """Start the threads once per process; True when this call started them."""
        with self._lock:
            pid = os.getpid()
            if self._started_pid == pid:
                return False
            # A fork (gunicorn without --preload forks before we get here; with it, threads do not survive the
            # fork): whatever the parent started is gone in this process, so start afresh.
            self._stop.clear()
            try:
                stream = None if self._listener_app is not None else redis_event_stream(self.settings, self.clock)
                app = None if stream is not None else self._listener_app or build_listener_app(self.settings)
                self.listener = EventListener(app, self.sink.apply, self._on_status, self._on_connect,
                                              clock=self.clock, probe=self.probe_broker, stream=stream,
                                              priority=self.priority)
                self.listener.start()
                # Two threads, so that a slow inspection (a dead worker costs each question its full timeout)
                # never delays the offline flip of a worker whose heartbeat is overdue.
                self._ticker = threading.Thread(target=self._tick_loop, name="dashboard-ticker", daemon=True)
                self._ticker.start()
                self._jobs_thread = threading.Thread(target=self._jobs_loop, name="dashboard-jobs", daemon=True)
                self._jobs_thread.start()
                for companion in self.companions:
                    companion.start()
            except Exception:
                self._stop.set()  # whatever did start winds down; a later start() may try again
                raise
            self._started_pid = pid
        log.info("monitor started in process %d", pid)
        return True

    def wait_connected(self, timeout: float) -> bool:
        """Block until the listener subscribed once (or `timeout`); True if it did."""
        return self._connected.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the threads (tests and clean shutdown)."""
        self._stop.set()
        if self.listener is not None:
            self.listener.stop(timeout)
        self.jobs.wake()
        for thread in (self._ticker, self._jobs_thread):
            if thread is not None:
                thread.join(timeout)
        for companion in self.companions:
            companion.stop(timeout)
        with self._lock:
            self._started_pid = None

    @property
    def started(self) -> bool:
        """True once start() ran in this process."""
        return self._started_pid == os.getpid()

    # -- listener callbacks (event thread) -------------------------------------------------------------------

    def _on_status(self, report: StatusReport) -> None:
        sure = self.listener.sure_until if self.listener is not None else None
        if self.stream.reported(report, sure):
            self.publish("gap", str(self.stream.gaps_total))
        self.publish("status", report.status.value)

    def _on_connect(self) -> None:
        if self.stream.connected():
            self.publish("gap", str(self.stream.gaps_total))
        # After a cut, everything a client shows may be stale: resend snapshots, and re-inspect soon.
        self.hub.resync_all()
        self._last_enable_events = None
        self.kick()
        self._connected.set()

    # -- ticker and jobs threads -----------------------------------------------------------------------------

    def _tick_loop(self) -> None:
        while not self._stop.wait(WORKER_CHECK_SECONDS):
            try:
                self.check_workers()
            except Exception:  # noqa: BLE001 - the ticker must outlive any one failure
                log.exception("worker check failed")

    def _jobs_loop(self) -> None:
        while not self._stop.is_set():
            self.jobs.wait(TICK_SECONDS)
            if self._stop.is_set():
                return
            try:
                self.run_jobs()
            except Exception:  # noqa: BLE001 - the jobs thread must outlive any one failure
                log.exception("monitor jobs failed")

    def tick(self) -> None:
        """One pass of both threads' work: offline flips, then enable_events and due jobs (tests call this)."""
        self.check_workers()
        self.run_jobs()

    def run_jobs(self) -> None:
        """enable_events when due, then every due job, one after another (the jobs thread)."""
        now = time.monotonic()
        last = self._last_enable_events
        if self.stream.live and (last is None or now - last >= ENABLE_EVENTS_EVERY):
            self._last_enable_events = now
            self.enable_events()
        self.jobs.run_due()

    def check_workers(self) -> None:
        """Publish workers whose online state flipped since the last check (heartbeats overdue or back)."""
        flipped = False
        for view in self.state.workers():
            previous = self._online.get(view.hostname)
            if previous is None or previous != view.online:
                self._online[view.hostname] = view.online
                self.publish("worker", view.hostname)
                flipped = flipped or previous is not None
        if flipped:
            self.kick()

    def probe_broker(self) -> None:
        """One bounded round trip to the broker on a fresh connection (raises a broker error when it fails).

        Opening a channel talks to the broker (Redis: PING; AMQP: the handshake), within the control app's
        socket timeouts.
        """
        with self.control_app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=0, timeout=self.settings.timeout)
            connection.default_channel  # noqa: B018 - opening it is the round trip

    def enable_events(self) -> None:
        """Ask every worker to send task events (a broadcast without replies; bounded by the app's timeouts)."""
        try:
            # On a connection of its own, as every broadcast here (see services/inspection.py: pooled
            # connections are dead sockets right after a broker restart).
            with self.control_app.connection_for_write() as connection:
                self.control_app.control.enable_events(connection=connection)
        except BROKER_ERRORS as exc:
            log.info("enable_events broadcast failed: %s", type(exc).__name__)
