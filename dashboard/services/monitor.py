"""The live monitor: one per process. It owns the event state; web handlers only read snapshots.

Three threads, all daemons, all started lazily by `Monitor.start()` (never at import, never twice per process):
- the event listener (services.events) applies every Celery event to the State and marks the change in the Hub;
- the ticker flips workers offline when their heartbeat is overdue (no event says so);
- the jobs thread periodically asks workers to enable task events (`control.enable_events`), since a worker
  started without `-E` sends none, and runs the periodic jobs (`add_job`), such as the worker and broker
  inspection of the routing comparison. It is separate from the ticker: an inspection that waits on a dead
  worker must not delay the offline flip.

Readers (pages, API, websockets) call the State's snapshot methods, which copy under the State's own lock.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from ..config import MonitorSettings
from ..model.state import State
from .client import BROKER_ERRORS, ClientSettings, build_send_only_app
from .events import BrokerStatus, EventListener, StatusReport, build_listener_app
from .hub import Hub

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0  # the jobs thread wakes at least this often (and at once when kicked)
WORKER_CHECK_SECONDS = 0.5  # how often heartbeats are checked for overdue workers
ENABLE_EVENTS_EVERY = 30.0  # seconds between enable_events broadcasts (and once right after each connect)
JOB_RETRY_SECONDS = 1.0  # a job the broker failed runs again this soon, not a whole interval later


@dataclass
class Gap:
    """A time when events may have been lost: from `started` (the last moment the stream was known whole: the
    newest event's send time, or a successful probe) to `ended` (subscribed again); `detected` is when the cut
    was noticed, `resynced` when the recovery of task states after it finished."""

    started: float
    ended: float | None = None
    reason: str = ""
    detected: float | None = None
    resynced: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"started": self.started, "ended": self.ended, "reason": self.reason, "detected": self.detected,
                "resynced": self.resynced}


@dataclass
class _Job:
    name: str
    every: float
    run: Callable[[], None]
    due: float = 0.0
    kick: threading.Event = field(default_factory=threading.Event)
    failures: int = 0  # broker failures in a row


class Monitor:
    """Celery events -> State -> Hub, with a connection status and a record of stream gaps."""

    def __init__(
        self,
        settings: ClientSettings,
        monitor: MonitorSettings | None = None,
        *,
        state: State | None = None,
        hub: Hub | None = None,
        listener_app: Celery | None = None,
        control_app: Celery | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.monitor_settings = monitor or MonitorSettings()
        self.clock = clock
        self.state = state or State(self.monitor_settings.max_tasks, clock=clock)
        self.hub = hub or Hub()
        self._listener_app = listener_app
        self._control_app = control_app
        self.listener: EventListener | None = None
        self._lock = threading.Lock()
        self._started_pid: int | None = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._online: dict[str, bool] = {}
        self._jobs: list[_Job] = []
        self._connected = threading.Event()
        self._last_enable_events: float | None = None  # monotonic time of the last broadcast; None: never
        self._jobs_thread: threading.Thread | None = None
        self._wake_jobs = threading.Event()
        self._gaps: list[Gap] = []  # written by the event and job threads, read by web threads: under _gap_lock
        self._gap_lock = threading.Lock()
        self.gaps_total = 0
        self.connects = 0
        self._change_hooks: list[Callable[[str, str], None]] = []
        self._event_hooks: list[Callable[[Mapping[str, Any]], None]] = []
        self._status_hooks: list[Callable[[StatusReport], None]] = []
        self._was_live = False

    # -- lifecycle -------------------------------------------------------------------------------------------

    @property
    def control_app(self) -> Celery:
        """The bounded app used for broadcasts and inspection (built on first use)."""
        if self._control_app is None:
            self._control_app = build_send_only_app(self.settings)
        return self._control_app

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
                app = self._listener_app or build_listener_app(self.settings)
                self.listener = EventListener(app, self._on_event, self._on_status, self._on_connect,
                                              clock=self.clock, probe=self.probe_broker)
                self.listener.start()
                # Two threads, so that a slow inspection (a dead worker costs each question its full timeout)
                # never delays the offline flip of a worker whose heartbeat is overdue.
                self._ticker = threading.Thread(target=self._tick_loop, name="dashboard-ticker", daemon=True)
                self._ticker.start()
                self._jobs_thread = threading.Thread(target=self._jobs_loop, name="dashboard-jobs", daemon=True)
                self._jobs_thread.start()
            except Exception:
                self._stop.set()  # whatever did start winds down; a later start() may try again
                raise
            self._started_pid = pid
            log.info("monitor started in process %d", pid)
            return True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the threads (tests and clean shutdown)."""
        self._stop.set()
        if self.listener is not None:
            self.listener.stop(timeout)
        self._wake_jobs.set()
        for thread in (self._ticker, self._jobs_thread):
            if thread is not None:
                thread.join(timeout)
        with self._lock:
            self._started_pid = None

    @property
    def started(self) -> bool:
        """True once start() ran in this process."""
        return self._started_pid == os.getpid()

    @property
    def status(self) -> StatusReport:
        """The event stream's status, as the connection indicator shows it."""
        if self.listener is None:
            return StatusReport(BrokerStatus.CONNECTING, self.clock(), "not started")
        return self.listener.report

    def add_job(self, name: str, every: float, run: Callable[[], None]) -> None:
        """Run `run` on the ticker thread every `every` seconds (and soon after each broker connect)."""
        self._jobs.append(_Job(name, every, run))

    def kick(self, name: str | None = None) -> None:
        """Make a job (or every job) due now, e.g. after a worker came online or went offline."""
        for job in self._jobs:
            if name is None or job.name == name:
                job.due = 0.0
                job.failures = 0  # e.g. the broker is back: a failure now is retried after a second again
        self._wake_jobs.set()

    def on_change(self, hook: Callable[[str, str], None]) -> None:
        """Call `hook(kind, key)` for every change the listener or ticker publishes."""
        self._change_hooks.append(hook)

    def publish(self, kind: Any, key: str = "") -> None:
        """Publish a change to every websocket client and to the change hooks."""
        self.hub.publish(kind, key)
        for hook in self._change_hooks:
            hook(kind, key)

    # -- listener callbacks (event thread) -------------------------------------------------------------------

    def on_task_event(self, hook: Callable[[Mapping[str, Any]], None]) -> None:
        """Call `hook(event)` on the event thread after each task event is applied (keep it O(1))."""
        self._event_hooks.append(hook)

    def _on_event(self, event: Mapping[str, Any]) -> None:
        change = self.state.apply(event)
        if change is not None:
            self.publish(change.kind, change.key)
            if change.kind == "task":
                for hook in self._event_hooks:
                    hook(event)
            if change.kind == "worker" and (change.created or event.get("type") in ("worker-online", "worker-offline")):
                self.kick()  # re-inspect soon: what this worker consumes and registers may have changed

    @property
    def gaps(self) -> list[Gap]:
        """The latest gaps (at most 20), oldest first: copies, safe to read from any thread."""
        with self._gap_lock:
            return [dataclasses.replace(gap) for gap in self._gaps]

    def gap_resynced(self) -> None:
        """The resync after the latest closed gap finished: the indicator stops showing the gap as open."""
        with self._gap_lock:
            if not self._gaps or self._gaps[-1].ended is None or self._gaps[-1].resynced is not None:
                return
            self._gaps[-1].resynced = self.clock()
        self.publish("gap", str(self.gaps_total))

    def _on_status(self, report: StatusReport) -> None:
        if report.status is not BrokerStatus.LIVE and self._was_live:
            self._was_live = False
            sure = self.listener.sure_until if self.listener is not None else None
            started = min(sure, report.since) if sure is not None else report.since
            with self._gap_lock:
                self.gaps_total += 1
                self._gaps.append(Gap(started, None, report.detail, detected=report.since))
                del self._gaps[:-20]
            self.publish("gap", str(self.gaps_total))
        self.publish("status", report.status.value)
        for hook in self._status_hooks:
            hook(report)

    def on_status(self, hook: Callable[[StatusReport], None]) -> None:
        """Call `hook(report)` on every status change of the event stream."""
        self._status_hooks.append(hook)

    def _on_connect(self) -> None:
        self.connects += 1
        self._was_live = True
        with self._gap_lock:
            closing = self._gaps[-1] if self._gaps and self._gaps[-1].ended is None else None
            if closing is not None:
                closing.ended = self.clock()
        if closing is not None:
            self.publish("gap", str(self.gaps_total))
        # After a cut, everything a client shows may be stale: resend snapshots, and re-inspect soon.
        self.hub.resync_all()
        self._last_enable_events = None
        self.kick()
        self._connected.set()

    # -- ticker thread ---------------------------------------------------------------------------------------

    def _tick_loop(self) -> None:
        while not self._stop.wait(WORKER_CHECK_SECONDS):
            try:
                self._check_workers()
            except Exception:  # noqa: BLE001 - the ticker must outlive any one failure
                log.exception("worker check failed")

    def _jobs_loop(self) -> None:
        while not self._stop.is_set():
            self._wake_jobs.wait(TICK_SECONDS)
            self._wake_jobs.clear()
            if self._stop.is_set():
                return
            try:
                self.run_jobs()
            except Exception:  # noqa: BLE001 - the jobs thread must outlive any one failure
                log.exception("monitor jobs failed")

    def tick(self) -> None:
        """One pass of both threads' work: offline flips, then enable_events and due jobs (tests call this)."""
        self._check_workers()
        self.run_jobs()

    def run_jobs(self) -> None:
        """enable_events when due, then every due job, one after another (the jobs thread)."""
        now = time.monotonic()
        last = self._last_enable_events
        if self.status.status is BrokerStatus.LIVE and (last is None or now - last >= ENABLE_EVENTS_EVERY):
            self._last_enable_events = now
            self.enable_events()
        for job in self._jobs:
            if now >= job.due:
                job.due = now + job.every
                try:
                    job.run()
                except BROKER_ERRORS as exc:
                    # Try again soon rather than a whole interval later (the broker may be back in a second),
                    # backing off while it stays away: 1 s, 2 s, 4 s ... up to the job's own interval.
                    job.due = now + min(job.every, JOB_RETRY_SECONDS * 2 ** min(job.failures, 16))
                    job.failures += 1
                    level = logging.WARNING if job.failures == 1 else logging.DEBUG
                    log.log(level, "%s: broker unreachable (%s)", job.name, type(exc).__name__)
                except Exception:  # noqa: BLE001
                    log.exception("%s failed", job.name)
                else:
                    if job.failures:
                        log.info("%s: broker reachable again after %d failed run(s)", job.name, job.failures)
                    job.failures = 0

    def _check_workers(self) -> None:
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
