"""End-to-end ingest benchmark: synthetic Celery events -> a real `dispatch-dashboard serve` (gunicorn gthread).

Usage: python bench/bench_ingest.py [--tasks N] [--quick] [--publishers P] [--profile DIR] [--json FILE] ...
Prints figures only; it asserts nothing (timed assertions do not belong in tests).

What runs: its own redis-server on a free port, `dispatch-dashboard serve --config <tmp toml>` on a free port
(default server: gunicorn gthread, 1 process x 64 threads) and P publisher processes, each sending the events of
whole tasks (task-sent from a client host, task-received/started/succeeded from worker hosts, 1% task-failed,
plus worker-online and worker-heartbeat) through Celery's own `app.events.Dispatcher`. Every figure about the
dashboard is read from outside: events absorbed from GET /metrics, CPU and RSS of the gunicorn worker from /proc.

Redis pub/sub keeps no backlog, and on this 2-core machine the publishers cannot outpace the subscriber while
both run (a Dispatcher sends ~4.5k events/s per process). So "draining a backlog" is done in cycles: SIGSTOP the
dashboard's worker process, publish a batch of B tasks (the events wait in the kernel socket buffers and in
Redis's output buffer for that client, kept well under its 32 MB pub/sub limit), SIGCONT it, and time from the
SIGCONT until /metrics counts every event of the batch. Publishers are idle meanwhile, so the rate is the
dashboard's own, with the machine's other core left to Redis and the bench's HTTP client.

Phases: (1) baseline RSS of the idle, warmed-up dashboard; (2) fill to N tasks by drain cycles -> events/s,
CPU per event, RSS per retained task; (3) latency of the tasks API/page with N retained, idle; (4) drain cycles
alternately without and with a paced latency probe -> ingest rate with and without readers, latency under a
saturated event thread; (5) live ingest at a fixed publish rate, without then with the probe.

The report also gives the CPU that other processes on the machine took during each phase (a shared machine
disturbs every figure). Diagnosis without touching dashboard/: --profile (py-spy), --gc-log (the worker's
garbage-collector pauses) and --switch-interval (the GIL's), the last two through a sitecustomize.py put on the
dashboard's PYTHONPATH. See bench/README.md for what the figures mean and the ones measured.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dashboard.services.processes import RedisServer, free_port, log_tail  # noqa: E402

NAMES = ("llm.summarize", "llm.embed", "mail.send", "reports.build", "billing.charge")
QUEUES = ("llm", "llm", "default", "reports", "billing")
WORKERS = ("celery@worker-1", "celery@worker-2", "celery@worker-3", "celery@worker-4")
HEARTBEAT_EVERY = 250  # tasks per publisher between two rounds of worker-heartbeats
READY_TIMEOUT = 30.0
DRAIN_TIMEOUT = 120.0
STALL_SECONDS = 5.0  # no progress for this long during a drain: events were lost (see gaps)
POLL_SECONDS = 0.025  # /metrics poll while draining: bounds the error on a drain's end time
FOREIGN_CPU_WARNING = 0.1  # cores
PY_SPY_RATE = 500  # samples/s
PUBSUB_HARD_LIMIT = 32 * 2**20  # Redis default: client-output-buffer-limit pubsub 32mb 8mb 60

TARGETS = {"ingest": 15_000.0, "rss_per_task": 1.5 * 1024, "latency_ms": 15.0}
FLOWER = {"ingest": "5,200 ev/s (4.4-5.2k); bare EventReceiver 17,000", "rss_per_task": "6.8 KiB",
          "latency": "/api/tasks?limit=100: 357 ms", "cpu": "~200 us/event"}

ENDPOINTS = (
    ("GET /api/tasks?limit=50", "/api/tasks?limit=50"),
    ("GET /tasks (HTML)", "/tasks"),
    ("GET /api/tasks?state=SUCCESS&limit=50", "/api/tasks?state=SUCCESS&limit=50"),
    ("GET /api/tasks/<id>", "/api/tasks/{id}"),
)


# -- publishers (separate processes) ---------------------------------------------------------------------------


def _task_events(index: int, task_id: str, now: float) -> list[tuple[str, str, dict[str, Any]]]:
    """(hostname, type, fields) of one task's four events, as Celery's client and worker send them."""
    kind = index % len(NAMES)
    worker = WORKERS[index % len(WORKERS)]
    args, kwargs = f"({index}, 'doc-{index % 977}')", "{'lang': 'en', 'max_words': 120}"
    common = {"root_id": task_id, "parent_id": None, "retries": 0, "eta": None, "expires": None}
    outcome: tuple[str, dict[str, Any]] = (
        ("task-failed", {"exception": "ValueError('bad input')",
                         "traceback": "Traceback (most recent call last):\n  ...\nValueError: bad input\n"})
        if index % 100 == 0
        else ("task-succeeded", {"result": repr({"id": index, "words": 118}), "runtime": 0.047})
    )
    return [
        ("client", "task-sent", {"uuid": task_id, "name": NAMES[kind], "args": args, "kwargs": kwargs,
                                 "queue": QUEUES[kind], "exchange": "", "routing_key": QUEUES[kind],
                                 "timestamp": now, **common}),
        (worker, "task-received", {"uuid": task_id, "name": NAMES[kind], "args": args, "kwargs": kwargs,
                                   "timestamp": now + 0.002, **common}),
        (worker, "task-started", {"uuid": task_id, "timestamp": now + 0.003}),
        (worker, outcome[0], {"uuid": task_id, "timestamp": now + 0.050, **outcome[1]}),
    ]


class _Publisher:
    """One process's dispatchers: one per hostname, as each Celery client or worker has its own."""

    def __init__(self, app: Any, connection: Any, index: int) -> None:
        import celery

        client_host = f"gen{os.getpid()}@web-{index}"
        self.dispatchers = {
            host: app.events.Dispatcher(connection, hostname=host, enabled=True, buffer_while_offline=False)
            for host in (client_host, *WORKERS)
        }
        self.dispatchers["client"] = self.dispatchers[client_host]
        self.sw = {"sw_ident": "py-celery", "sw_ver": celery.__version__, "sw_sys": platform.system()}
        self.tasks_sent = 0
        for worker in WORKERS:
            self.dispatchers[worker].send("worker-online", freq=2.0, **self.sw)
        self.events = len(WORKERS)

    def heartbeats(self) -> None:
        for worker in WORKERS:
            self.dispatchers[worker].send("worker-heartbeat", freq=2.0, active=2, processed=self.tasks_sent,
                                          loadavg=[0.5, 0.4, 0.3], **self.sw)
        self.events += len(WORKERS)

    def tasks(self, start: int, count: int, rate: float | None = None, until: float | None = None) -> int:
        """Publish tasks start..start+count (stopping at `until`), pipelined 3 deep as tasks overlap in life;
        paced to `rate` events/s when given. Returns how many tasks were published."""
        pending: deque[list[tuple[str, str, dict[str, Any]]]] = deque()
        begun, sent_before = time.perf_counter(), self.events
        index, end = start, start + count
        while index < end or pending:
            if index < end and (until is None or time.monotonic() < until):
                pending.append(_task_events(index, str(uuid.uuid4()), time.time()))
                index += 1
            elif index < end:
                end = index  # out of time: finish the tasks in flight, start no more
            # Each pass sends the next event of every task in flight: sent(i), received(i-1), ...
            for events in list(pending):
                host, kind, fields = events.pop(0)
                self.dispatchers[host].send(kind, **fields)
                self.events += 1
            while pending and not pending[0]:
                pending.popleft()
                self.tasks_sent += 1
                if self.tasks_sent % HEARTBEAT_EVERY == 0:
                    self.heartbeats()
            if rate is not None:
                ahead = (self.events - sent_before) / rate - (time.perf_counter() - begun)
                if ahead > 0.002:
                    time.sleep(ahead)
        return index - start


def _publisher_main(broker_url: str, index: int, conn: Connection) -> None:
    """Command loop of one publisher process: ("batch", start, count), ("stream", start, rate, seconds), None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent owns Ctrl-C and stops us
    from celery import Celery

    app = Celery(f"bench-publisher-{index}", broker=broker_url, set_as_current=False)
    with app.connection_for_write() as connection:
        publisher = _Publisher(app, connection, index)
        conn.send(("ready", publisher.events))
        while (command := conn.recv()) is not None:
            before, cpu_before, started = publisher.events, time.process_time(), time.perf_counter()
            if command[0] == "batch":
                tasks = publisher.tasks(command[1], command[2])
            else:
                _, start, rate, seconds = command
                tasks = publisher.tasks(start, 10**9, rate=rate, until=time.monotonic() + seconds)
            conn.send(("done", tasks, publisher.events - before, time.perf_counter() - started,
                       time.process_time() - cpu_before))


class Publishers:
    """P publisher processes driven over pipes; they stay alive across phases."""

    def __init__(self, broker_url: str, count: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.procs: list[Any] = []
        self.pipes: list[Connection] = []
        self.next_index = 0
        for index in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_publisher_main, args=(broker_url, index, child), daemon=True,
                               name=f"bench-publisher-{index}")
            proc.start()
            self.procs.append(proc)
            self.pipes.append(parent)
        self.startup_events = sum(self._reply(pipe, 60.0)[1] for pipe in self.pipes)

    @staticmethod
    def _reply(pipe: Connection, timeout: float) -> tuple[Any, ...]:
        if not pipe.poll(timeout):
            raise RuntimeError(f"a publisher did not answer within {timeout:.0f} s")
        reply: tuple[Any, ...] = pipe.recv()
        return reply

    def batch(self, tasks: int) -> tuple[int, float]:
        """Publish `tasks` tasks split across the publishers; return (events sent, seconds)."""
        share, extra = divmod(tasks, len(self.pipes))
        for i, pipe in enumerate(self.pipes):
            count = share + (1 if i < extra else 0)
            pipe.send(("batch", self.next_index, count))
            self.next_index += count
        replies = [self._reply(pipe, 600.0) for pipe in self.pipes]
        return sum(r[2] for r in replies), max(r[3] for r in replies)

    def stream_start(self, rate: float, seconds: float) -> None:
        """Start publishing at `rate` events/s in all for `seconds` (returns at once)."""
        for pipe in self.pipes:
            pipe.send(("stream", self.next_index, rate / len(self.pipes), seconds))
            self.next_index += 10_000_000  # disjoint index ranges; indexes only vary the fields

    def stream_wait(self, timeout: float) -> tuple[int, int, float, float]:
        """(tasks, events, seconds, publisher CPU seconds) of the stream just finished."""
        replies = [self._reply(pipe, timeout) for pipe in self.pipes]
        return (sum(r[1] for r in replies), sum(r[2] for r in replies), max(r[3] for r in replies),
                sum(r[4] for r in replies))

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError, ValueError):
                pipe.send(None)
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


# -- the dashboard under test ------------------------------------------------------------------------------------


def _proc_stat(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()  # fields from the 3rd (state) on; comm may hold spaces


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = _proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def children_of(pid: int) -> list[int]:
    """Pids whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int(_proc_stat(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
    return found


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (every process on the machine), from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


class Load:
    """How much CPU processes other than ours took during a phase (the machine may be shared)."""

    def __init__(self) -> None:
        self.pids: list[int] = [os.getpid()]
        self.phases: dict[str, float] = {}
        self._start: tuple[float, float, float] | None = None

    def _ours(self) -> float:
        total = 0.0
        for pid in self.pids:
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += cpu_seconds(pid)
        return total

    def begin(self) -> None:
        self._start = (time.perf_counter(), machine_busy_seconds(), self._ours())

    def end(self, phase: str) -> None:
        """Record the cores' worth of CPU that others used since begin()."""
        assert self._start is not None
        wall, busy, ours = self._start
        elapsed = time.perf_counter() - wall
        self.phases[phase] = max(0.0, (machine_busy_seconds() - busy) - (self._ours() - ours)) / elapsed


class Http:
    """One keep-alive HTTP/1.1 connection to the dashboard (one per thread)."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.port = port
        self.timeout = timeout
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def get(self, path: str) -> tuple[int, bytes, float]:
        """(status, body, seconds from sending the request to the last byte of the body)."""
        for attempt in (1, 2):
            started = time.perf_counter()
            try:
                self.conn.request("GET", path)
                response = self.conn.getresponse()
                body = response.read()
                return response.status, body, time.perf_counter() - started
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()  # gunicorn closed an idle keep-alive connection: reconnect once
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def json(self, path: str) -> Any:
        status, body, _ = self.get(path)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status}: {body[:200]!r}")
        return json.loads(body)

    def close(self) -> None:
        self.conn.close()


_METRIC_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)$")


@dataclass(frozen=True)
class Scrape:
    """What the bench reads from /metrics."""

    at: float
    events: int
    by_type: dict[str, int]
    retained: int
    evicted: int
    gaps: int
    connects: int
    up: int
    history_pending: int = 0  # changed tasks the history writer has not written yet (0 with history off)


def parse_metrics(text: str, at: float) -> Scrape:
    """Sum dispatch_dashboard_events_total over types and pick the other series."""
    values: dict[str, float] = {}
    by_type: dict[str, int] = {}
    for line in text.splitlines():
        match = _METRIC_LINE.match(line)
        if match is None:
            continue
        name, value = match["name"], float(match["value"])
        if name == "dispatch_dashboard_events_total":
            kind = re.search(r'type="([^"]*)"', match["labels"] or "")
            by_type[kind.group(1) if kind else "?"] = int(value)
        else:
            values[name] = value
    return Scrape(at, sum(by_type.values()), by_type,
                  int(values.get("dispatch_dashboard_tasks_retained", 0)),
                  int(values.get("dispatch_dashboard_tasks_evicted_total", 0)),
                  int(values.get("dispatch_dashboard_event_stream_gaps_total", 0)),
                  int(values.get("dispatch_dashboard_event_stream_connects_total", 0)),
                  int(values.get("dispatch_dashboard_event_stream_up", 0)),
                  int(values.get("dispatch_dashboard_history_pending", 0)))


# Logs every cyclic-GC pass of the dashboard (pid, generation, pause in ms); see --gc-log.
_GC_LOGGER = r"""
import gc, os, time
_gc_log = open(__GC_LOG_PATH__, "a", buffering=1)
_gc_started = [0.0]
def _gc_timer(phase, info):
    if phase == "start":
        _gc_started[0] = time.perf_counter()
    else:
        _gc_log.write(f"{os.getpid()} {info['generation']} {(time.perf_counter() - _gc_started[0]) * 1e3:.3f} "
                      f"{time.time():.3f}\n")
gc.callbacks.append(_gc_timer)
"""


def gc_pauses(path: Path, pid: int, marks: list[tuple[float, str]]) -> dict[str, Any]:
    """Per generation: how many collections the process ran, their total and longest pause (ms); and where
    each full (gen2) collection fell, named by the first bench mark after it."""
    found: dict[str, list[float]] = {}
    full: list[str] = []
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            who, generation, ms, at = line.split()
            if int(who) != pid:
                continue
            found.setdefault(f"gen{generation}", []).append(float(ms))
            if generation == "2":
                where = next((label for stamp, label in marks if stamp >= float(at)), "end")
                full.append(f"{float(ms):.0f} ms ({where})")
    summary: dict[str, Any] = {gen: {"count": len(ms), "total_ms": sum(ms), "max_ms": max(ms)}
                               for gen, ms in sorted(found.items())}
    summary["full_collections"] = full
    return summary


class Dashboard:
    """`dispatch-dashboard serve` as a child process in its own session, logging to a file."""

    def __init__(self, broker_url: str, max_tasks: int, workdir: Path, server: str,
                 switch_interval: float | None = None, gc_log: bool = False, extra_args: tuple[str, ...] = (),
                 extra_config: str = "", history: str = "") -> None:
        self.port = free_port()
        self.config = workdir / "bench.toml"
        self.config.write_text(f'broker_url = "{broker_url}"\n\n[monitor]\nmax_tasks = {max_tasks}\n{extra_config}')
        self.log_path = workdir / "dashboard.log"
        self.history = history
        script = Path(sys.executable).with_name("dispatch-dashboard")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "dashboard.cli"]
        self.argv = [*command, "serve", "--config", str(self.config), "--port", str(self.port),
                     "--server", server, "--log-level", "warning", *extra_args]
        # The config file must win: these variables would override it.
        env = {k: v for k, v in os.environ.items()
               if k not in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "DASHBOARD_CONFIG", "DASHBOARD_CLIENT_APP")}
        # History as asked (off unless --history), never the user's own files; no audit log (nothing dispatched).
        env["DASHBOARD_HISTORY_URL"] = history
        env["DASHBOARD_AUDIT_PATH"] = ""
        self.gc_log = workdir / "gc.log" if gc_log else None
        site_code = ""
        if switch_interval is not None:
            # The experiment's value wins over the server's own (serving.tune_interpreter sets 1 ms).
            site_code += (f"import sys\nsys.setswitchinterval({switch_interval!r})\n"
                          "sys.setswitchinterval = lambda interval: None\n")
        if self.gc_log is not None:
            site_code += _GC_LOGGER.replace("__GC_LOG_PATH__", repr(str(self.gc_log)))
        if site_code:
            # Experiments without touching the dashboard: the interpreter imports sitecustomize at start-up.
            site_dir = workdir / "site"
            site_dir.mkdir(exist_ok=True)
            (site_dir / "sitecustomize.py").write_text(site_code)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site_dir), env.get("PYTHONPATH")]))
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log_file,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=ROOT)
        self.http = Http(self.port)
        self.server_pid = self.proc.pid  # gunicorn's worker (the process that listens to events), once found
        self.stopped = False

    def wait_live(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait until /api/status says the event stream is live (with a deadline), then find the worker pid."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dashboard exited with {self.proc.returncode}\n{log_tail(self.log_path)}")
            with contextlib.suppress(OSError, http.client.HTTPException, RuntimeError, ValueError):
                if self.http.json("/api/status").get("broker") == "live":
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"dashboard not live within {timeout:.0f} s\n{log_tail(self.log_path)}")
            time.sleep(0.1)
        workers = children_of(self.proc.pid)
        if len(workers) > 1:
            raise RuntimeError(f"expected one gunicorn worker, found {workers}")
        self.server_pid = workers[0] if workers else self.proc.pid  # werkzeug serves in the process itself

    def scrape(self, http: Http | None = None) -> Scrape:
        status, body, _ = (http or self.http).get("/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics: HTTP {status}")
        return parse_metrics(body.decode(), time.perf_counter())

    def pause(self) -> None:
        os.kill(self.server_pid, signal.SIGSTOP)
        self.stopped = True

    def resume(self) -> None:
        if self.stopped:
            os.kill(self.server_pid, signal.SIGCONT)
            self.stopped = False

    def close(self) -> None:
        self.http.close()
        with contextlib.suppress(ProcessLookupError):
            self.resume()  # a stopped worker cannot act on SIGTERM
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # a worker left behind by its master, if any


# -- measurements ----------------------------------------------------------------------------------------------


@dataclass
class Latency:
    """Samples of one endpoint, in seconds."""

    samples: list[float] = field(default_factory=list)
    errors: Counter[int] = field(default_factory=Counter)

    def summary(self) -> dict[str, float | int]:
        ordered = sorted(self.samples)
        if not ordered:
            return {"n": 0}
        p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
        return {"n": len(ordered), "p50_ms": statistics.median(ordered) * 1e3, "p95_ms": p95 * 1e3,
                "max_ms": ordered[-1] * 1e3, "errors": sum(self.errors.values())}


class Probe:
    """Requests the four endpoints in turn from its own thread, paced to `rate` requests/s (0: back to back)."""

    def __init__(self, port: int, rate: float) -> None:
        self.http = Http(port)
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.latency = {label: Latency() for label, _ in ENDPOINTS}
        self.task_id: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def one_round(self) -> None:
        """One request to each endpoint, /api/tasks first (it supplies the id for /api/tasks/<id>)."""
        for label, path in ENDPOINTS:
            if "{id}" in path:
                if self.task_id is None:
                    continue
                path = path.format(id=self.task_id)
            status, body, seconds = self.http.get(path)
            if status != 200:
                self.latency[label].errors[status] += 1
                continue
            self.latency[label].samples.append(seconds)
            if path == "/api/tasks?limit=50":
                tasks = json.loads(body)["tasks"]
                if tasks:
                    self.task_id = tasks[len(tasks) // 2]["id"]
            if self.interval and self._stop.wait(self.interval):
                return

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.one_round()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="bench-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None

    def summaries(self) -> dict[str, dict[str, float | int]]:
        return {label: latency.summary() for label, latency in self.latency.items()}


@dataclass
class Drain:
    """One drain cycle: events published while the dashboard was stopped, then absorbed."""

    events: int
    seconds: float
    cpu: float
    publish_seconds: float
    backlog_bytes: int
    complete: bool
    persisted_seconds: float = 0.0  # until history had written every task too (== seconds with history off)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def subscriber_backlog(redis_client: Any) -> int:
    """Bytes Redis holds for the pub/sub subscribers (their output buffers: `omem` in CLIENT LIST)."""
    return sum(int(c.get("omem", 0)) for c in redis_client.client_list()
               if int(c.get("psub", 0)) or int(c.get("sub", 0)))


def drain_cycle(dash: Dashboard, pubs: Publishers, redis_client: Any, tasks: int,
                probe: Probe | None = None) -> Drain:
    """Stop the dashboard, publish `tasks` tasks, resume it and time how long it takes to absorb them."""
    before = dash.scrape().events
    dash.pause()
    try:
        published, publish_seconds = pubs.batch(tasks)
        backlog = subscriber_backlog(redis_client)
        cpu_before = cpu_seconds(dash.server_pid)
        target = before + published
    finally:
        dash.resume()
    started = time.perf_counter()
    if probe is not None:
        probe.start()
    try:
        last, last_progress = before, started
        while True:
            time.sleep(POLL_SECONDS)
            scrape = dash.scrape()
            if scrape.events >= target:
                break
            if scrape.events > last:
                last, last_progress = scrape.events, scrape.at
            elif scrape.at - last_progress > STALL_SECONDS or scrape.at - started > DRAIN_TIMEOUT:
                break  # lost events (a cut stream): stop waiting, report incomplete
    finally:
        if probe is not None:
            probe.stop()
    seconds = scrape.at - started
    persisted = seconds
    if dash.history:  # and until the history writer has written every task of the batch
        while scrape.history_pending and scrape.at - started < DRAIN_TIMEOUT:
            time.sleep(POLL_SECONDS)
            scrape = dash.scrape()
        persisted = scrape.at - started
    return Drain(scrape.events - before, seconds, cpu_seconds(dash.server_pid) - cpu_before, publish_seconds,
                 backlog, scrape.events >= target, persisted)


def summarize_drains(drains: list[Drain]) -> dict[str, Any]:
    events = sum(d.events for d in drains)
    seconds = sum(d.seconds for d in drains)
    cpu = sum(d.cpu for d in drains)
    return {"cycles": len(drains), "events": events, "seconds": seconds,
            "rate": events / seconds if seconds else 0.0,
            "cycle_rates": [round(d.rate) for d in drains],
            "cpu_us_per_event": cpu / events * 1e6 if events else 0.0,
            "cpu_utilisation": cpu / seconds if seconds else 0.0,
            "max_backlog_bytes": max((d.backlog_bytes for d in drains), default=0),
            "persisted_rate": events / persisted if (persisted := sum(d.persisted_seconds for d in drains)) else 0.0,
            "incomplete": sum(not d.complete for d in drains)}


def publish_calls(redis_client: Any) -> int:
    """PUBLISH commands Redis has run: every event sent, whoever sent it."""
    stats = redis_client.info("commandstats").get("cmdstat_publish", {})
    return int(stats.get("calls", 0))


def live_window(dash: Dashboard, redis_client: Any, seconds: float, probe: Probe | None) -> dict[str, Any]:
    """Published and absorbed events/s, the dashboard's CPU and Redis's backlog for it, over a window of a live
    stream (probe running or not)."""
    first, published_before = dash.scrape(), publish_calls(redis_client)
    cpu_before = cpu_seconds(dash.server_pid)
    if probe is not None:
        probe.start()
    backlog = 0
    try:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            time.sleep(0.25)
            backlog = max(backlog, subscriber_backlog(redis_client))
    finally:
        if probe is not None:
            probe.stop()
    last, published_after = dash.scrape(), publish_calls(redis_client)
    cpu_after = cpu_seconds(dash.server_pid)
    elapsed = last.at - first.at
    return {"seconds": elapsed, "rate": (last.events - first.events) / elapsed,
            "published_rate": (published_after - published_before) / elapsed,
            "cpu_utilisation": (cpu_after - cpu_before) / elapsed, "max_backlog_bytes": backlog}


# -- profiling (optional) --------------------------------------------------------------------------------------


def find_py_spy(explicit: str | None) -> str | None:
    """py-spy from --py-spy, PATH, or next to this interpreter."""
    for candidate in (explicit, shutil.which("py-spy"), str(Path(sys.executable).with_name("py-spy"))):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@contextlib.contextmanager
def py_spy_record(py_spy: str, pid: int, out: Path, rate: int, settle: float = 0.0) -> Iterator[None]:
    """Record `pid` with py-spy (collapsed stacks per thread, idle excluded) while the block runs."""
    out.unlink(missing_ok=True)
    spy = subprocess.Popen([py_spy, "record", "--pid", str(pid), "--rate", str(rate), "--threads",
                            "--format", "raw", "--output", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(settle)
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            _, err = spy.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
    if not out.exists():
        raise RuntimeError(f"py-spy wrote no profile: {err.decode(errors='replace')[-500:]}")


def profile_drains(dash: Dashboard, pubs: Publishers, redis_client: Any, tasks: int, cycles: int, py_spy: str,
                   out_dir: Path, rate: int) -> tuple[list[Drain], list[Path]]:
    """Drain cycles recorded by py-spy, attached right after each SIGCONT (a stopped process is not sampled)."""
    drains, outs = [], []
    for cycle in range(cycles):
        before = dash.scrape().events
        dash.pause()
        try:
            published, publish_seconds = pubs.batch(tasks)
            backlog = subscriber_backlog(redis_client)
            cpu_before = cpu_seconds(dash.server_pid)
        finally:
            dash.resume()
        started = time.perf_counter()
        out = out_dir / f"ingest-drain-{cycle + 1}.txt"
        with py_spy_record(py_spy, dash.server_pid, out, rate):
            target = before + published
            scrape = dash.scrape()
            while scrape.events < target and scrape.at - started < DRAIN_TIMEOUT:
                time.sleep(POLL_SECONDS)
                scrape = dash.scrape()
        drains.append(Drain(scrape.events - before, scrape.at - started,
                            cpu_seconds(dash.server_pid) - cpu_before, publish_seconds, backlog,
                            scrape.events >= target))
        outs.append(out)
    return drains, outs


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def summarize_profile(paths: list[Path], title: str, threads: str | None = None, within: str | None = None,
                      top: int = 12) -> str:
    """Self and inclusive shares by function from py-spy raw (collapsed) profiles, over the stacks of threads
    whose name contains `threads` and that pass through a frame containing `within` (None: no condition)."""
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    samples = 0
    lines = [line for path in paths for line in path.read_text().splitlines()]
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        thread, *frames = stack.split(";")
        count = int(count_text)
        if (threads is not None and threads not in thread) or (within is not None and within not in stack):
            continue
        samples += count
        names = []
        for frame in frames:
            match = _FRAME.match(frame)
            names.append(f"{match['func']} ({'/'.join(Path(match['file']).parts[-2:])})" if match else frame)
        inclusive.update(dict.fromkeys(set(names), count))
        if names:
            self_time[names[-1]] += count
    if not samples:
        return f"{title}: (no samples)"
    lines = [f"{title}: {samples} samples", "  self time:"]
    lines += [f"    {count / samples:6.1%}  {name}" for name, count in self_time.most_common(top)]
    lines.append("  inclusive:")
    lines += [f"    {count / samples:6.1%}  {name}" for name, count in inclusive.most_common(top + 8)]
    return "\n".join(lines)


# -- the run -------------------------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    found = {"python": platform.python_version()}
    for dist in ("celery", "kombu", "redis", "gunicorn", "flask"):
        with contextlib.suppress(md.PackageNotFoundError):
            found[dist] = md.version(dist)
    return found


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _git_state() -> str:
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "dashboard", "templates"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return head + (" + uncommitted changes in dashboard/ or templates/" if dirty else "")


def idle_latency(port: int, rounds: int) -> dict[str, dict[str, float | int]]:
    """Back-to-back requests, nothing else running: `rounds` of each endpoint after a short warm-up."""
    probe = Probe(port, rate=0)
    for _ in range(5):
        probe.one_round()
    probe.latency = {label: Latency() for label, _ in ENDPOINTS}
    for _ in range(rounds):
        probe.one_round()
    probe.http.close()
    return probe.summaries()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every phase; returns the figures (also printed as they come)."""
    import redis

    results: dict[str, Any] = {"args": vars(args), "versions": _versions(), "cpu": _cpu_model(),
                               "cores": os.cpu_count(), "git": _git_state()}
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ingest-")))
        if args.keep_logs:
            workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-logs-"))
        redis_server = stack.enter_context(RedisServer(directory=workdir / "redis"))
        redis_client = redis.Redis(port=redis_server.port, socket_timeout=10)
        stack.callback(redis_client.close)
        results["versions"]["redis-server"] = redis_server.version or "?"
        history = {"off": "", "sqlite": str(workdir / "history.sqlite3")}.get(args.history, args.history)
        if args.history == "postgres":  # a server of the bench's own, durable
            from tests.support.postgres_server import durable_server

            history = stack.enter_context(durable_server()).url()
        dash = Dashboard(redis_server.url(0), args.max_tasks, workdir, args.server, args.switch_interval,
                         args.gc_log, history=history)
        results["history"] = args.history
        stack.callback(dash.close)
        pubs = Publishers(redis_server.url(0), args.publishers)
        stack.callback(pubs.close)
        dash.wait_live()
        load = Load()
        marks: list[tuple[float, str]] = []  # (time, what the bench was doing up to then), for --gc-log
        load.pids += [pid for pid in (redis_server.pid, dash.proc.pid, dash.server_pid, *(p.pid for p in pubs.procs))
                      if pid is not None and pid != os.getpid()]
        print(f"redis-server {redis_server.version} :{redis_server.port}; dashboard {args.server} :{dash.port} "
              f"(worker pid {dash.server_pid}); {args.publishers} publisher processes; logs in {workdir}")

        # (1) Idle baseline, after every page was rendered once (templates compiled, imports done).
        idle_latency(dash.port, 3)
        time.sleep(1.0)
        baseline_rss = rss_bytes(dash.server_pid)
        start = dash.scrape()
        print(f"idle dashboard: RSS {baseline_rss / 2**20:.1f} MiB; events seen so far {start.events}")

        # (2) Fill to N tasks by drain cycles.
        load.begin()
        fill: list[Drain] = []
        remaining = args.tasks
        profiles: list[str] = []
        py_spy = find_py_spy(args.py_spy) if args.profile else None
        if args.profile and py_spy is None:
            print("--profile: py-spy not found (pip install py-spy, or pass --py-spy PATH); no profiles")
        profile_dir = Path(args.profile) if py_spy else None
        if profile_dir is not None:
            profile_dir.mkdir(parents=True, exist_ok=True)
        while remaining > 0:
            batch = min(args.batch, remaining)
            if py_spy and profile_dir is not None and remaining <= args.tasks // 2 and not profiles:
                cycles = max(1, min(3, remaining // batch))
                batch *= cycles
                drains, outs = profile_drains(dash, pubs, redis_client, args.batch, cycles, py_spy, profile_dir,
                                              PY_SPY_RATE)
                profiles.append(summarize_profile(
                    outs, f"profile: draining a backlog ({cycles} cycles), event thread (py-spy {PY_SPY_RATE} Hz; "
                    f"{profile_dir}/ingest-drain-*.txt)", threads="dashboard-events"))
                drain = drains[-1]
                print(f"  profiled drains: {', '.join(f'{d.rate:,.0f}' for d in drains)} ev/s under py-spy "
                      f"(not counted)")
            else:
                drain = drain_cycle(dash, pubs, redis_client, batch)
                fill.append(drain)
            remaining -= batch
            retained_so_far = args.tasks - remaining
            marks.append((time.time(), f"fill cycle ending at {retained_so_far:,} tasks"))
            print(f"  fill {retained_so_far:>7,} tasks: drained {drain.events:,} events in {drain.seconds:.2f} s "
                  f"= {drain.rate:,.0f} ev/s (published in {drain.publish_seconds:.1f} s; "
                  f"Redis backlog {drain.backlog_bytes / 2**20:.1f} MiB)", flush=True)
        load.end("fill")
        time.sleep(1.0)
        filled = dash.scrape()
        filled_rss = rss_bytes(dash.server_pid)
        results["fill"] = summarize_drains(fill)
        results["memory"] = {"baseline_rss": baseline_rss, "rss": filled_rss, "retained": filled.retained,
                             "per_task": (filled_rss - baseline_rss) / max(1, filled.retained)}
        print(f"filled: {filled.retained:,} retained, RSS {filled_rss / 2**20:.1f} MiB "
              f"(+{(filled_rss - baseline_rss) / 2**20:.1f} MiB) -> {results['memory']['per_task']:,.0f} B/task")

        # (3) Latency, idle, N retained.
        load.begin()
        results["latency_idle"] = idle_latency(dash.port, args.rounds)
        load.end("idle latency")
        marks.append((time.time(), "idle latency"))
        if py_spy and profile_dir is not None:
            out = profile_dir / "read-idle.txt"
            probe = Probe(dash.port, rate=0)
            with py_spy_record(py_spy, dash.server_pid, out, PY_SPY_RATE, settle=1.0):
                until = time.monotonic() + 6.0
                while time.monotonic() < until:
                    probe.one_round()
            probe.http.close()
            profiles.append(summarize_profile(
                [out], f"profile: the four requests back to back, idle, inside request handling (py-spy "
                f"{PY_SPY_RATE} Hz; {out})", within="handle_request"))
        results["profiles"] = profiles

        # (4) Drains at N retained (evicting), alternately without and with the paced probe.
        load.begin()
        plain: list[Drain] = []
        probed: list[Drain] = []
        probe = Probe(dash.port, args.probe_rate)
        for _ in range(args.probe_cycles):
            plain.append(drain_cycle(dash, pubs, redis_client, args.batch))
            probed.append(drain_cycle(dash, pubs, redis_client, args.batch, probe))
            print(f"  drain at {args.max_tasks:,}: {plain[-1].rate:,.0f} ev/s alone, "
                  f"{probed[-1].rate:,.0f} ev/s with the probe", flush=True)
        probe.http.close()
        load.end("drains with probe")
        marks.append((time.time(), "drains at N retained"))
        results["drain_plain"] = summarize_drains(plain)
        results["drain_probed"] = summarize_drains(probed)
        results["latency_drain"] = probe.summaries()

        # (5) Live: publishers stream at a fixed rate; absorbed rate without, then with the probe.
        probe = Probe(dash.port, args.probe_rate)
        window = args.live_seconds
        pubs.stream_start(args.live_rate, 2 * window + 3.0)
        load.begin()
        time.sleep(1.5)
        alone = live_window(dash, redis_client, window, None)
        with_probe = live_window(dash, redis_client, window, probe)
        load.end("live")
        marks.append((time.time(), "live ingest"))
        tasks_streamed, events_streamed, stream_seconds, pub_cpu = pubs.stream_wait(window * 4 + 60)
        probe.http.close()
        results["live"] = {"target_rate": args.live_rate, "published_rate": events_streamed / stream_seconds,
                           "alone": alone, "probed": with_probe, "publisher_cpu_utilisation": pub_cpu / stream_seconds}
        results["latency_live"] = probe.summaries()
        time.sleep(1.0)

        results["foreign_cpu"] = load.phases
        if dash.gc_log is not None:
            results["gc"] = gc_pauses(dash.gc_log, dash.server_pid, marks)
        final = dash.scrape()
        results["final"] = {"events": final.events, "retained": final.retained, "evicted": final.evicted,
                            "gaps": final.gaps, "connects": final.connects, "up": final.up,
                            "rss": rss_bytes(dash.server_pid), "by_type": final.by_type}
    return results


# -- report ----------------------------------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(r: dict[str, Any]) -> str:
    """The figures as a plain-text table."""
    v = r["versions"]
    fill, mem, final = r["fill"], r["memory"], r["final"]
    lines = [
        "",
        "=" * 100,
        f"machine: {r['cores']} cores, {r['cpu']}; Python {v['python']}, celery {v.get('celery')}, "
        f"kombu {v.get('kombu')}, redis-py {v.get('redis')}, Redis {v.get('redis-server')}, "
        f"gunicorn {v.get('gunicorn')}",
        f"code: {r['git']}; dashboard: {r['args']['server']} (1 process x 64 threads), "
        f"max_tasks {r['args']['max_tasks']:,}; {r['args']['publishers']} publisher processes"
        + (f"; EXPERIMENT: switch interval {r['args']['switch_interval']} s" if r["args"]["switch_interval"] else ""),
        f"workload: {r['args']['tasks']:,} tasks x 4 events (sent, received, started, succeeded; 1% failed) + "
        f"worker heartbeats, drain cycles of {r['args']['batch']:,} tasks",
        "",
        f"{'figure':<46}{'measured':>20}  {'target':<14}{'verdict':<9}Flower 2.2.0 (NOTES.md)",
        "-" * 100,
    ]

    def row(label: str, measured: str, target: str = "", verdict: str = "", flower: str = "") -> None:
        lines.append(f"{label:<46}{measured:>20}  {target:<14}{verdict:<9}{flower}")

    row("ingest, draining a backlog (fill to N)", f"{fill['rate']:,.0f} ev/s", ">= 15,000",
        _verdict(fill["rate"] >= TARGETS["ingest"]), FLOWER["ingest"])
    plain, probed = r["drain_plain"], r["drain_probed"]
    row("  same, at N retained (evicting)", f"{plain['rate']:,.0f} ev/s", ">= 15,000",
        _verdict(plain["rate"] >= TARGETS["ingest"]))
    change = probed["rate"] / plain["rate"] - 1 if plain["rate"] else 0.0
    row(f"  same, with readers ({r['args']['probe_rate']:g} req/s probe)", f"{probed['rate']:,.0f} ev/s",
        "", "", f"({change:+.1%} vs alone)")
    if r.get("history", "off") != "off":
        row(f"  history ({r['history']}): every task written", f"{fill['persisted_rate']:,.0f} ev/s")
    row("dashboard CPU per event (fill)", f"{fill['cpu_us_per_event']:.1f} us", "", "", FLOWER["cpu"])
    row("dashboard CPU while draining", f"{fill['cpu_utilisation']:.0%} of a core")
    row("RSS per retained task", f"{mem['per_task']:,.0f} B", "<= 1,536 B",
        _verdict(mem["per_task"] <= TARGETS["rss_per_task"]), FLOWER["rss_per_task"])
    row(f"  RSS idle -> {mem['retained']:,} retained",
        f"{mem['baseline_rss'] / 2**20:.0f} -> {mem['rss'] / 2**20:.0f} MiB")
    row("  RSS at the end (after eviction churn)", f"{final['rss'] / 2**20:.0f} MiB")
    live = r["live"]
    for key, label in (("alone", "alone"), ("probed", "with probe")):
        w = live[key]
        row(f"live ingest at {live['target_rate']:,.0f} ev/s, {label}", f"{w['rate']:,.0f} ev/s", "", "",
            f"published {w['published_rate']:,.0f} ev/s in the window; Redis backlog <= "
            f"{w['max_backlog_bytes'] / 2**10:,.0f} KiB; dashboard CPU {w['cpu_utilisation']:.0%}")
    row("Redis backlog at most (drain cycles)", f"{fill['max_backlog_bytes'] / 2**20:.1f} MiB",
        "< 32 MiB", _verdict(fill["max_backlog_bytes"] < PUBSUB_HARD_LIMIT))
    row("event stream gaps / connects", f"{final['gaps']} / {final['connects']}", "0 gaps",
        _verdict(final["gaps"] == 0 and fill["incomplete"] + plain["incomplete"] + probed["incomplete"] == 0))
    lines.append("")
    lines.append(f"latency with {mem['retained']:,} tasks retained (ms; target <= 15 ms)  "
                 f"{'idle':>22}   {'draining at full speed':>22}   {'live ingest':>22}")
    lines.append(f"{'':<62}{'p50 / p95 / max':>22}   {'p50 / p95 / max':>22}   {'p50 / p95 / max':>22}")
    worst_ok = True
    for label, _ in ENDPOINTS:
        cells = []
        for phase in ("latency_idle", "latency_drain", "latency_live"):
            s = r[phase][label]
            if not s.get("n"):
                cells.append(f"{'-':>22}")
                continue
            cells.append(f"{s['p50_ms']:6.1f} /{s['p95_ms']:6.1f} /{s['max_ms']:6.1f}")
        idle = r["latency_idle"][label]
        worst_ok = worst_ok and idle.get("p95_ms", 0) <= TARGETS["latency_ms"]
        lines.append(f"  {label:<60}" + "   ".join(f"{c:>22}" for c in cells))
    samples = {phase: min(s.get("n", 0) for s in r[phase].values())
               for phase in ("latency_idle", "latency_drain", "latency_live")}
    lines.append(f"  (samples per endpoint: idle {samples['latency_idle']}, draining {samples['latency_drain']}, "
                 f"live {samples['latency_live']}; idle p95 within target: {_verdict(worst_ok)})")
    if r.get("gc"):
        lines.append("cyclic GC in the dashboard worker over the whole run: " + "; ".join(
            f"{gen} {g['count']}x, {g['total_ms']:.0f} ms in all, longest {g['max_ms']:.1f} ms"
            for gen, g in r["gc"].items() if gen.startswith("gen")))
        lines.append("  full collections: " + ", ".join(r["gc"]["full_collections"]))
    foreign = r.get("foreign_cpu", {})
    lines.append("CPU taken by other processes on the machine, in cores: "
                 + ", ".join(f"{phase} {cores:.2f}" for phase, cores in foreign.items()))
    if any(cores > FOREIGN_CPU_WARNING for cores in foreign.values()):
        lines.append(f"WARNING: other processes used more than {FOREIGN_CPU_WARNING} of a core during a phase: "
                     "its figures are disturbed; run again on a quiet machine")
    for text in r.get("profiles", []):
        lines += ["", text]
    lines.append("=" * 100)
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks to retain (4 events each)")
    parser.add_argument("--max-tasks", type=int, default=None, help="[monitor] max_tasks (default: --tasks)")
    parser.add_argument("--quick", action="store_true", help="a small run: 10,000 tasks, short phases")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--batch", type=int, default=5_000, help="tasks per drain cycle (~12 MiB of backlog)")
    parser.add_argument("--server", choices=("gunicorn", "werkzeug"), default="gunicorn")
    parser.add_argument("--rounds", type=int, default=200, help="idle latency: requests per endpoint")
    parser.add_argument("--probe-rate", type=float, default=20.0, help="requests/s of the probe under load")
    parser.add_argument("--probe-cycles", type=int, default=12, help="drain cycles with (and as many without) probe")
    parser.add_argument("--live-rate", type=float, default=5_000.0, help="events/s published in the live phase")
    parser.add_argument("--live-seconds", type=float, default=15.0, help="each live window (alone, probed)")
    parser.add_argument("--profile", metavar="DIR",
                        help="record with py-spy into DIR: one drain cycle of the fill, and the idle requests")
    parser.add_argument("--switch-interval", type=float, metavar="SECONDS",
                        help="experiment: force the dashboard's GIL switch interval (it sets 0.001 itself; "
                        "CPython's default is 0.005)")
    parser.add_argument("--py-spy", help="path to py-spy (else PATH or next to this python)")
    parser.add_argument("--gc-log", action="store_true",
                        help="diagnosis: log the dashboard's garbage-collector pauses and report them")
    parser.add_argument("--history", default="off",
                        help="off (default), sqlite (a file in the bench's temp dir), postgres (a server of its "
                             "own) or a [history] url")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--keep-logs", action="store_true", help="keep the dashboard's and Redis's logs")
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks = min(args.tasks, 10_000)
        args.rounds, args.probe_cycles, args.live_seconds = 50, 2, 5.0
    if args.max_tasks is None:
        args.max_tasks = args.tasks if args.quick else max(args.tasks, 100_000)
    if min(args.tasks, args.max_tasks, args.publishers, args.batch, args.rounds) < 1:
        parser.error("--tasks, --max-tasks, --publishers, --batch and --rounds must be positive")
    return args


def _raise_interrupt(signum: int, frame: FrameType | None) -> Any:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # cleanup runs on SIGTERM as on Ctrl-C
    try:
        results = run(args)
    except KeyboardInterrupt:
        print("\ninterrupted: children stopped", file=sys.stderr)
        return 130
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
