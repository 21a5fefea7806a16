"""Unit tests for the live monitor (dashboard.services.events), driven by hand: no broker, no threads of its own.

The monitor is built with an unreachable broker URL and never started (except in the start() tests, where the
listener is a dummy), its callbacks are called directly with Celery-shaped event dicts, and both of its clocks
(the wall clock it is given, and the time.monotonic its ticker reads) are moved by the test.
"""

from __future__ import annotations

import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dashboard.model.state import State, heartbeat_expires
from dashboard.services.client import ClientSettings
from dashboard.services.events import monitor as monitor_module
from dashboard.services.events.hub import Batch, Hub, Kind, Subscriber
from dashboard.services.events.jobs import JOB_RETRY_SECONDS, Bell, Job, Jobs
from dashboard.services.events.listener import BrokerStatus, StatusReport
from dashboard.services.events.monitor import ENABLE_EVENTS_EVERY, Monitor
from dashboard.services.events.sink import EventSink
from dashboard.services.events.stream import StreamLog

T0 = 1_700_000_000.0
MONO0 = 10_000.0  # a monotonic reading well past ENABLE_EVENTS_EVERY, as on any host up for a while
WORKER = "celery@worker-1"
FREQ = 2.0
UNREACHABLE_BROKER = "redis://127.0.0.1:1/0"  # nothing listens on port 1; and nothing here connects anyway


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeListener:
    """Stands in for the EventListener where the monitor only reads its `report`."""

    def __init__(self, status: BrokerStatus, since: float = T0, sure_until: float | None = None) -> None:
        self.report = StatusReport(status, since)
        self.sure_until = sure_until


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def monotonic(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Replace the monitor module's view of `time` so that tick() reads a monotonic clock the test moves."""
    fake = FakeClock(MONO0)
    fake_time = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("__")})
    fake_time.monotonic = fake
    monkeypatch.setattr(monitor_module, "time", fake_time)
    return fake


@pytest.fixture
def enable_calls(monkeypatch: pytest.MonkeyPatch, monotonic: FakeClock) -> list[float]:
    """Record enable_events broadcasts (by monotonic time) instead of sending them."""
    calls: list[float] = []
    monkeypatch.setattr(Monitor, "enable_events", lambda self: calls.append(monotonic()))
    return calls


class RecordingHub(Hub):
    """A hub that also records every change published, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.changes: list[tuple[str, str]] = []

    def publish(self, kind: Kind, key: str = "") -> None:
        self.changes.append((kind, key))
        super().publish(kind, key)


SETTINGS = ClientSettings(broker_url=UNREACHABLE_BROKER, result_backend=None, task_routes={},
                          task_default_queue="celery")


def build_monitor(clock: FakeClock, monotonic: FakeClock, *jobs: Job, control_app: Any = None) -> Monitor:
    """A monitor as the composition root builds one: a sink ringing the jobs' bell, the given jobs."""
    bell = Bell()
    sink = EventSink(State(clock=clock), RecordingHub(), on_worker_change=bell.ring)
    return Monitor(SETTINGS, sink, StreamLog(clock), Jobs(jobs, bell, clock=monotonic), clock=clock,
                   control_app=control_app)


def with_jobs(monitor: Monitor, *jobs: Job) -> Monitor:
    """Another monitor over the same sink, stream and bell, with `jobs` (subscribers of the first still listen)."""
    return Monitor(SETTINGS, monitor.sink, monitor.stream, Jobs(jobs, monitor.jobs.bell, clock=monitor.jobs.clock),
                   clock=monitor.clock)


def published(monitor: Monitor) -> list[tuple[str, str]]:
    """Every change the monitor's hub published so far."""
    hub = monitor.hub
    assert isinstance(hub, RecordingHub)
    return hub.changes


@pytest.fixture
def monitor(clock: FakeClock, monotonic: FakeClock, enable_calls: list[float]) -> Monitor:
    return build_monitor(clock, monotonic)


@pytest.fixture
def subscriber(monitor: Monitor) -> Subscriber:
    return monitor.hub.subscribe()


def take(subscriber: Subscriber) -> Batch:
    """What the subscriber has pending now (it must not be closed)."""
    batch = subscriber.take(0)
    assert batch is not None
    return batch


def task_sent(task_id: str = "t1", ts: float = T0) -> dict[str, Any]:
    """A task-sent event as Celery's producer emits it."""
    return {
        "type": "task-sent", "uuid": task_id, "name": "llm.summarize", "queue": "llm", "routing_key": "llm",
        "exchange": "", "args": "(1,)", "kwargs": "{}", "retries": 0, "eta": None, "expires": None,
        "root_id": task_id, "parent_id": None, "hostname": "gen42@web-1", "timestamp": ts,
        "local_received": ts, "pid": 42, "clock": 1, "utcoffset": 0,
    }  # fmt: skip


def worker_event(kind: str = "worker-heartbeat", ts: float = T0, hostname: str = WORKER) -> dict[str, Any]:
    """A worker-online/heartbeat/offline event as a Celery worker emits it."""
    return {
        "type": kind, "hostname": hostname, "timestamp": ts, "local_received": ts, "freq": FREQ,
        "sw_ident": "py-celery", "sw_ver": "5.4.0", "sw_sys": "Linux", "pid": 1234, "active": 0,
        "processed": 7, "loadavg": [0.1, 0.2, 0.3], "clock": 3, "utcoffset": 0,
    }  # fmt: skip


def connect(monitor: Monitor) -> None:
    """What the listener does when the stream goes live: report LIVE, then call on_connect."""
    report = StatusReport(BrokerStatus.LIVE, monitor.clock())
    monitor.listener = FakeListener(BrokerStatus.LIVE, report.since)  # type: ignore[assignment]
    monitor._on_status(report)
    monitor._on_connect()


def lose_stream(monitor: Monitor, status: BrokerStatus = BrokerStatus.RECONNECTING, detail: str = "cut",
                sure_until: float | None = None) -> None:
    """What the listener does when the stream breaks."""
    report = StatusReport(status, monitor.clock(), detail)
    monitor.listener = FakeListener(status, report.since, sure_until)  # type: ignore[assignment]
    monitor._on_status(report)


class Recorder:
    """A job body that counts its runs and can be told to fail."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.runs = 0
        self.error = error

    def __call__(self) -> None:
        self.runs += 1
        if self.error is not None:
            raise self.error


# -- events ------------------------------------------------------------------------------------------------------


def test_a_task_event_updates_the_state_and_is_published(monitor: Monitor, subscriber: Subscriber) -> None:
    monitor.sink.apply(task_sent("t1"))
    changes = published(monitor)

    task = monitor.state.task("t1")
    assert task is not None
    assert (task.name, task.queue, task.state) == ("llm.summarize", "llm", "PENDING")
    assert take(subscriber).keys == {"task": ["t1"]}
    assert changes == [("task", "t1")]


def test_a_burst_of_events_about_one_task_is_one_pending_key(monitor: Monitor, subscriber: Subscriber) -> None:
    monitor.sink.apply(task_sent("t1"))
    for kind in ("task-received", "task-started", "task-succeeded"):
        monitor.sink.apply({"type": kind, "uuid": "t1", "hostname": WORKER, "timestamp": T0 + 1})

    task = monitor.state.task("t1")
    assert task is not None
    assert task.state == "SUCCESS"
    assert take(subscriber).keys == {"task": ["t1"]}


def test_an_ignored_event_publishes_nothing(monitor: Monitor, subscriber: Subscriber) -> None:
    monitor.sink.apply({"type": "task-sent", "timestamp": T0})  # no uuid
    monitor.sink.apply({"type": "something-else"})

    assert not take(subscriber)


def test_a_worker_heartbeat_adds_an_online_worker_and_kicks_jobs(
    monitor: Monitor, subscriber: Subscriber, monotonic: FakeClock
) -> None:
    job = Recorder()
    monitor = with_jobs(monitor, Job("inspect", 1_000.0, job))
    monitor.tick()  # the first tick runs every job once; the next run is 1000 s away
    take(subscriber)

    monitor.sink.apply(worker_event("worker-heartbeat"))
    monitor.tick()

    worker = monitor.state.worker(WORKER)
    assert worker is not None
    assert worker.online is True
    assert (worker.freq, worker.pid, worker.processed) == (FREQ, 1234, 7)
    assert take(subscriber).keys == {"worker": [WORKER]}
    assert job.runs == 2  # the new worker made the job due at once


def test_a_worker_offline_event_publishes_and_kicks_jobs(monitor: Monitor, subscriber: Subscriber) -> None:
    job = Recorder()
    monitor = with_jobs(monitor, Job("inspect", 1_000.0, job))
    monitor.sink.apply(worker_event("worker-online"))
    monitor.tick()
    take(subscriber)

    monitor.sink.apply(worker_event("worker-offline", ts=T0 + 1))
    monitor.tick()

    worker = monitor.state.worker(WORKER)
    assert worker is not None
    assert worker.online is False
    assert take(subscriber).keys == {"worker": [WORKER]}
    assert job.runs == 2


# -- status, gaps and reconnects ---------------------------------------------------------------------------------


def test_the_status_before_start_is_connecting(monitor: Monitor) -> None:
    assert monitor.status.status is BrokerStatus.CONNECTING
    assert monitor.started is False


def test_losing_a_live_stream_opens_a_gap_and_publishes_it(
    monitor: Monitor, subscriber: Subscriber, clock: FakeClock
) -> None:
    connect(monitor)
    take(subscriber)

    clock.now = T0 + 5
    lose_stream(monitor, detail="Connection refused")

    assert monitor.gaps_total == 1
    assert [gap.to_dict() for gap in monitor.gaps] == [
        {"started": T0 + 5, "ended": None, "reason": "Connection refused", "detected": T0 + 5, "resynced": None}
    ]
    assert take(subscriber).keys == {"gap": ["1"], "status": ["reconnecting"]}
    assert [key for kind, key in published(monitor) if kind == "status"] == ["live", "reconnecting"]


def test_further_failures_while_down_do_not_open_another_gap(monitor: Monitor, subscriber: Subscriber) -> None:
    connect(monitor)
    lose_stream(monitor, BrokerStatus.RECONNECTING)
    take(subscriber)

    lose_stream(monitor, BrokerStatus.UNREACHABLE)

    assert monitor.gaps_total == 1
    assert take(subscriber).keys == {"status": ["unreachable"]}


def test_failing_before_ever_being_live_is_not_a_gap(monitor: Monitor, subscriber: Subscriber) -> None:
    lose_stream(monitor, BrokerStatus.UNREACHABLE)

    assert monitor.gaps == []
    assert monitor.gaps_total == 0
    assert take(subscriber).keys == {"status": ["unreachable"]}


def test_reconnecting_closes_the_gap_and_resyncs_every_subscriber(
    monitor: Monitor, subscriber: Subscriber, clock: FakeClock
) -> None:
    other = monitor.hub.subscribe()
    connect(monitor)
    clock.now = T0 + 5
    lose_stream(monitor)
    take(subscriber)
    take(other)

    clock.now = T0 + 9
    connect(monitor)

    assert monitor.connects == 2
    assert monitor.gaps[-1].to_dict() == {"started": T0 + 5, "ended": T0 + 9, "reason": "cut", "detected": T0 + 5,
                                          "resynced": None}
    for each in (subscriber, other):
        batch = take(each)
        # The resync replaces the pending "gap"/"status" keys: the snapshot it asks for shows both anyway.
        assert batch.resync is True


def test_a_gap_starts_when_the_stream_was_last_known_whole_not_when_the_cut_was_noticed(
    monitor: Monitor, clock: FakeClock
) -> None:
    # Redis dropped a subscriber that had fallen 19.5 s behind: it read buffered events for seconds before the
    # cut showed, so the gap was once recorded as starting then (0.21 s long instead of ~20 s).
    connect(monitor)
    clock.now = T0 + 30
    lose_stream(monitor, sure_until=T0 + 10.5)
    clock.now = T0 + 30.2
    connect(monitor)

    gap = monitor.gaps[-1]
    assert (gap.started, gap.detected, gap.ended) == (T0 + 10.5, T0 + 30, T0 + 30.2)


def test_the_gap_shows_as_open_until_the_resync_after_it_finished(monitor: Monitor, clock: FakeClock) -> None:
    connect(monitor)
    lose_stream(monitor)
    clock.now = T0 + 3
    connect(monitor)
    assert monitor.gaps[-1].resynced is None

    clock.now = T0 + 4
    assert monitor.stream.resynced(monitor.gaps_total)

    assert monitor.gaps[-1].resynced == T0 + 4
    monitor.gaps[-1].resynced = None  # a copy: the monitor's own record does not change
    assert monitor.gaps[-1].resynced == T0 + 4


def test_the_listener_knows_the_stream_whole_up_to_the_newest_event_sent() -> None:
    from dashboard.services.events.listener import EventListener, build_listener_app

    settings = ClientSettings(UNREACHABLE_BROKER, None, {}, "celery")
    clock = FakeClock(T0 + 100)
    listener = EventListener(build_listener_app(settings), lambda event: None, clock=clock)
    assert listener.sure_until is None

    listener._handle({"type": "task-sent", "uuid": "a", "timestamp": T0 + 50})
    listener._handle({"type": "task-sent", "uuid": "b", "timestamp": T0 + 40})  # out of order: keeps the newest
    assert listener.sure_until == T0 + 50
    listener._handle({"type": "task-sent", "uuid": "c", "timestamp": T0 + 500})  # a clock ahead of ours
    assert listener.sure_until == T0 + 100


def test_a_connect_publishes_the_status_and_the_gap_end(monitor: Monitor) -> None:
    connect(monitor)
    lose_stream(monitor)
    before = len(published(monitor))

    connect(monitor)
    changes = [change for change in published(monitor)[before:] if change[0] in ("status", "gap")]

    assert changes == [("status", "live"), ("gap", "1")]


def test_a_connect_kicks_every_job(monitor: Monitor, monotonic: FakeClock) -> None:
    jobs = [Recorder(), Recorder()]
    monitor = with_jobs(monitor, *(Job(f"job{n}", 1_000.0, job) for n, job in enumerate(jobs)))
    monitor.tick()

    connect(monitor)
    monitor.tick()

    assert [job.runs for job in jobs] == [2, 2]


def test_only_the_last_twenty_gaps_are_kept(monitor: Monitor, clock: FakeClock) -> None:
    for n in range(25):
        clock.now = T0 + n
        connect(monitor)
        lose_stream(monitor)

    assert monitor.gaps_total == 25
    assert len(monitor.gaps) == 20
    assert monitor.gaps[0].started == T0 + 5


# -- tick: offline detection -------------------------------------------------------------------------------------


def test_tick_flips_a_silent_worker_offline_at_celerys_heartbeat_expiry(
    monitor: Monitor, subscriber: Subscriber, clock: FakeClock
) -> None:
    job = Recorder()
    monitor = with_jobs(monitor, Job("inspect", 1_000.0, job))
    monitor.sink.apply(worker_event("worker-heartbeat", ts=T0))
    monitor.tick()
    take(subscriber)
    expires = heartbeat_expires(T0, FREQ)
    assert expires == T0 + 2 * FREQ  # Celery: freq * HEARTBEAT_EXPIRE_WINDOW / 100

    clock.now = expires - 0.01
    monitor.tick()
    assert not take(subscriber)

    clock.now = expires
    monitor.tick()

    worker = monitor.state.worker(WORKER)
    assert worker is not None
    assert worker.online is False
    assert take(subscriber).keys == {"worker": [WORKER]}
    assert job.runs == 2  # the flip made the job due at once


def test_tick_publishes_an_offline_flip_only_once(monitor: Monitor, subscriber: Subscriber, clock: FakeClock) -> None:
    monitor.sink.apply(worker_event("worker-heartbeat", ts=T0))
    clock.now = heartbeat_expires(T0, FREQ) + 1
    monitor.tick()
    take(subscriber)

    clock.now += 60
    monitor.tick()

    assert not take(subscriber)


def test_a_heartbeat_after_going_offline_brings_the_worker_back(
    monitor: Monitor, subscriber: Subscriber, clock: FakeClock
) -> None:
    monitor.sink.apply(worker_event("worker-heartbeat", ts=T0))
    clock.now = heartbeat_expires(T0, FREQ) + 1
    monitor.tick()
    take(subscriber)

    monitor.sink.apply(worker_event("worker-heartbeat", ts=clock.now))
    monitor.tick()

    worker = monitor.state.worker(WORKER)
    assert worker is not None
    assert worker.online is True
    assert take(subscriber).keys == {"worker": [WORKER]}


# -- tick: jobs --------------------------------------------------------------------------------------------------


def test_jobs_run_on_the_first_tick_then_every_interval(monitor: Monitor, monotonic: FakeClock) -> None:
    job = Recorder()
    monitor = with_jobs(monitor, Job("inspect", 10.0, job))

    monitor.tick()
    monitor.tick()
    monotonic.now += 9.9
    monitor.tick()
    runs_before_due = job.runs
    monotonic.now += 0.1
    monitor.tick()

    assert runs_before_due == 1
    assert job.runs == 2


def test_kick_by_name_makes_only_that_job_due(monitor: Monitor, monotonic: FakeClock) -> None:
    inspect, routing = Recorder(), Recorder()
    monitor = with_jobs(monitor, Job("inspect", 1_000.0, inspect), Job("routing", 1_000.0, routing))
    monitor.tick()

    monitor.kick("inspect")
    monitor.tick()

    assert (inspect.runs, routing.runs) == (2, 1)


@pytest.mark.parametrize("error", [RuntimeError("bug in a job"), OSError("broker unreachable"), ValueError("bad")])
def test_a_failing_job_does_not_break_tick_or_the_other_jobs(
    monitor: Monitor, monotonic: FakeClock, error: BaseException
) -> None:
    failing, healthy = Recorder(error), Recorder()
    monitor = with_jobs(monitor, Job("failing", 10.0, failing), Job("healthy", 10.0, healthy))

    monitor.tick()
    monotonic.now += 10.0
    monitor.tick()

    assert (failing.runs, healthy.runs) == (2, 2)  # still scheduled after failing


def test_a_job_the_broker_failed_runs_again_soon_not_a_whole_interval_later(
    monitor: Monitor, monotonic: FakeClock
) -> None:
    flaky = Recorder(ConnectionError("Connection closed by server."))
    monitor = with_jobs(monitor, Job("inspect", 10.0, flaky))

    monitor.tick()
    monotonic.now += JOB_RETRY_SECONDS - 0.01
    monitor.tick()
    runs_before_retry = flaky.runs
    monotonic.now += 0.01
    monitor.tick()

    assert runs_before_retry == 1
    assert flaky.runs == 2


def test_a_job_the_broker_keeps_failing_backs_off_up_to_its_interval(monitor: Monitor, monotonic: FakeClock) -> None:
    flaky = Recorder(ConnectionError("Connection refused"))
    monitor = with_jobs(monitor, Job("inspect", 10.0, flaky))
    runs_at: list[float] = []
    start = monotonic.now
    while monotonic.now - start < 40.0:
        before = flaky.runs
        monitor.tick()
        if flaky.runs > before:
            runs_at.append(round(monotonic.now - start, 1))
        monotonic.now += 0.1

    gaps = [round(later - earlier, 1) for earlier, later in zip(runs_at, runs_at[1:], strict=False)]
    assert gaps[:5] == [1.0, 2.0, 4.0, 8.0, 10.0]
    assert set(gaps[4:]) == {10.0}


def test_a_kick_after_broker_failures_restarts_the_quick_retry(monitor: Monitor, monotonic: FakeClock) -> None:
    flaky = Recorder(ConnectionError("Connection refused"))
    monitor = with_jobs(monitor, Job("inspect", 10.0, flaky))
    for _ in range(4):
        monitor.tick()
        monotonic.now += 10.0

    monitor.kick()  # e.g. the event stream reconnected
    monitor.tick()
    runs = flaky.runs
    monotonic.now += JOB_RETRY_SECONDS
    monitor.tick()

    assert flaky.runs == runs + 1


def test_a_job_failing_for_another_reason_keeps_its_interval(monitor: Monitor, monotonic: FakeClock) -> None:
    buggy = Recorder(RuntimeError("bug in a job"))
    monitor = with_jobs(monitor, Job("inspect", 10.0, buggy))

    monitor.tick()
    monotonic.now += JOB_RETRY_SECONDS
    monitor.tick()

    assert buggy.runs == 1  # a bug would fail again at once: no tight retry loop


# -- tick: enable_events -----------------------------------------------------------------------------------------


def test_enable_events_is_not_broadcast_while_the_stream_is_not_live(
    monitor: Monitor, enable_calls: list[float], monotonic: FakeClock
) -> None:
    monitor.tick()  # not started: CONNECTING
    lose_stream(monitor, BrokerStatus.UNREACHABLE)
    monotonic.now += ENABLE_EVENTS_EVERY
    monitor.tick()

    assert enable_calls == []


def test_enable_events_right_after_a_connect_then_every_interval(
    monitor: Monitor, enable_calls: list[float], monotonic: FakeClock
) -> None:
    connect(monitor)
    monitor.tick()
    monitor.tick()
    monotonic.now += ENABLE_EVENTS_EVERY - 0.1
    monitor.tick()
    calls_before_due = list(enable_calls)
    monotonic.now += 0.1
    monitor.tick()

    assert calls_before_due == [MONO0]
    assert enable_calls == [MONO0, MONO0 + ENABLE_EVENTS_EVERY]


def test_a_reconnect_broadcasts_enable_events_again_at_once(
    monitor: Monitor, enable_calls: list[float], monotonic: FakeClock
) -> None:
    connect(monitor)
    monitor.tick()
    monotonic.now += 1.0
    lose_stream(monitor)
    monitor.tick()

    connect(monitor)
    monitor.tick()

    assert enable_calls == [MONO0, MONO0 + 1.0]


def test_enable_events_right_after_a_connect_even_on_a_young_monotonic_clock(
    monitor: Monitor, enable_calls: list[float], monotonic: FakeClock
) -> None:
    monotonic.now = 5.0  # a host (VM, container sandbox) booted five seconds ago

    connect(monitor)
    monitor.tick()

    assert enable_calls == [5.0]


class FakeConnection:
    """What connection_for_write() returns: a context manager that records being released."""

    def __init__(self) -> None:
        self.released = False

    def __enter__(self) -> FakeConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.released = True


class FakeControlApp:
    """A control app whose broadcasts are recorded (or refused) without a broker."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.connections: list[FakeConnection] = []
        self.sent: list[FakeConnection] = []
        self.error = error
        self.control = types.SimpleNamespace(enable_events=self._enable_events)

    def connection_for_write(self) -> FakeConnection:
        self.connections.append(FakeConnection())
        return self.connections[-1]

    def _enable_events(self, connection: FakeConnection) -> None:
        if self.error is not None:
            raise self.error
        self.sent.append(connection)


def test_enable_events_broadcasts_on_a_connection_of_its_own(clock: FakeClock) -> None:
    control_app = FakeControlApp()
    monitor = build_monitor(clock, FakeClock(MONO0), control_app=control_app)

    monitor.enable_events()
    monitor.enable_events()

    # Never a pooled connection: right after a broker restart those are dead sockets.
    assert control_app.sent == control_app.connections and len(control_app.sent) == 2
    assert all(connection.released for connection in control_app.connections)


def test_enable_events_swallows_broker_errors(clock: FakeClock) -> None:
    control_app = FakeControlApp(ConnectionRefusedError("no broker"))
    monitor = build_monitor(clock, FakeClock(MONO0), control_app=control_app)

    monitor.enable_events()  # logged, not raised: the ticker must carry on

    assert control_app.sent == [] and control_app.connections[0].released


# -- start -------------------------------------------------------------------------------------------------------


class DummyListener:
    """An EventListener that connects to nothing; counts what the monitor asks of it."""

    instances: list[DummyListener] = []

    def __init__(self, app: Any, on_event: Callable[..., None], *callbacks: Any, **options: Any) -> None:
        self.app = app
        self.starts = 0
        self.stops = 0
        self.report = StatusReport(BrokerStatus.CONNECTING, T0)
        DummyListener.instances.append(self)

    def start(self) -> None:
        self.starts += 1

    def stop(self, timeout: float = 5.0) -> None:
        self.stops += 1


@pytest.fixture
def startable(monitor: Monitor, monkeypatch: pytest.MonkeyPatch) -> Iterator[Monitor]:
    """The monitor with a dummy listener and no listener app; stopped (its ticker thread joined) afterwards."""
    DummyListener.instances = []
    monkeypatch.setattr(monitor_module, "EventListener", DummyListener)
    monkeypatch.setattr(monitor_module, "build_listener_app", lambda settings: None)
    yield monitor
    monitor.stop(timeout=5.0)
    assert monitor._ticker is None or not monitor._ticker.is_alive()


def test_start_twice_in_one_process_starts_once(startable: Monitor) -> None:
    first = startable.start()
    second = startable.start()

    assert (first, second) == (True, False)
    assert startable.started is True
    assert len(DummyListener.instances) == 1
    assert DummyListener.instances[0].starts == 1


def test_start_after_stop_starts_again(startable: Monitor) -> None:
    startable.start()
    startable.stop(timeout=5.0)

    assert startable.started is False
    assert startable.start() is True
    assert [listener.starts for listener in DummyListener.instances] == [1, 1]
    assert DummyListener.instances[0].stops == 1


def test_start_in_a_forked_child_starts_afresh(startable: Monitor, monkeypatch: pytest.MonkeyPatch) -> None:
    startable.start()
    child_os = types.SimpleNamespace(getpid=lambda: -1)  # as if this were the child of a fork
    monkeypatch.setattr(monitor_module, "os", child_os)

    assert startable.started is False
    assert startable.start() is True
    assert len(DummyListener.instances) == 2


def test_a_start_that_fails_can_be_retried(startable: Monitor, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("cannot build the listener")

    # the event stream on Redis, Celery's receiver elsewhere: break whichever the monitor builds
    monkeypatch.setattr(monitor_module, "build_listener_app", broken)
    monkeypatch.setattr(monitor_module, "redis_event_stream", broken)
    with pytest.raises(RuntimeError):
        startable.start()
    monkeypatch.setattr(monitor_module, "build_listener_app", lambda settings: None)
    monkeypatch.setattr(monitor_module, "redis_event_stream", lambda settings, clock: None)

    assert startable.started is False
    assert startable.start() is True
