"""Live viewers per process: how many websocket clients one `dispatch-dashboard serve` process holds, and how
fast each change reaches them under a stream of task events.

Starts its own redis-server and dashboard (`[server] max_websockets` set above the largest step), then for each
client count in `--clients` (ascending; clients stay connected between steps) opens websocket connections from
one asyncio process until that many have their snapshot, and reports:

- the server's RSS per connected client: RSS after the step's clients connected minus RSS with no client, divided
  by the clients, the step's own increase divided by the clients it added, and RSS after the step's events
  (write buffers, coalesced changes) per client. With `--max-tasks` at or below `--rate` x `--seconds`, a warm-up
  with no client fills the retained tasks first, so that these figures are the clients' alone (else they include
  the tasks retained from earlier steps, as the first figures of December 2026 did);
- while `--rate` task-sent events per second are published for `--seconds` (Celery's own event dispatcher): per
  kind of client, the push latency from publishing to arrival, p50 / p99 / max, measured on `--probes` clients
  of that kind that parse every message, in a process of their own (the others only drain their sockets: one
  client process cannot parse a million messages a second), and the share of tasks the probes saw; the server's
  CPU and the draining clients' CPU (they share the 2 cores); `/healthz` and `/api/tasks?limit=50` answered
  meanwhile, from the probes' process (p50 / p95 / max);
- one socket past the cap: refused at once, or not.

`--mix` says which sockets, in proportions: `events` is `/ws/events?tasks=0` (JSON for tools, every task);
`tasks` is the tasks page (`/ws/ui?view=tasks`: htmx fragments; at 5 frames a second the table shows the newest
50 tasks of each frame, so its probes see a share of the tasks, by design); `workers` is the workers page and
`task` a task page (`/ws/ui?view=task&id=...`): open pages that task events rarely change. Default: `events`.

Figures only, nothing asserted. Usage:
  .venv/bin/python bench/bench_fanout.py [--clients 200,500,1000] [--mix events=2,tasks=1,workers=1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, RejectConnection, Request, TextMessage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ingest import ROOT, Dashboard, Http, cpu_seconds, rss_bytes  # noqa: E402

sys.path.insert(0, str(ROOT))
from dashboard.services.processes import RedisServer  # noqa: E402

PATHS = {
    "events": "/ws/events?tasks=0",
    "tasks": "/ws/ui?view=tasks",
    "workers": "/ws/ui?view=workers",
    "task": "/ws/ui?view=task&id=bench-fanout-task",
}
PROBED = ("events", "tasks")  # the kinds whose messages name the new tasks
_ROW_ID = re.compile(r'data-task-id="([^"]+)"')


@dataclass
class Probe:
    """A client that parses every message and notes when each task first arrived."""

    kind: str
    arrivals: dict[str, float] = field(default_factory=dict)


def parse_mix(text: str) -> list[str]:
    """"events=2,tasks=1" -> the kinds in a repeating order that keeps those proportions."""
    weights: dict[str, int] = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        if name.strip() not in PATHS:
            raise SystemExit(f"--mix: unknown kind {name!r}; one of {', '.join(PATHS)}")
        weights[name.strip()] = int(weight or 1)
    return [name for name, weight in weights.items() for _ in range(weight)]


class Clients:
    """Websocket clients on one asyncio loop (a thread of this process)."""

    def __init__(self, port: int, mix: list[str]) -> None:
        self.port = port
        self.mix = mix
        self.by_kind: dict[str, int] = dict.fromkeys(mix, 0)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="clients", daemon=True)
        self.thread.start()
        self.connected = 0
        self.refused = 0
        self.received = 0  # bytes read by every client
        self.probes: list[Probe] = []
        self.tasks: list[asyncio.Future[None]] = []

    def open(self, count: int, probes: int, timeout: float = 60.0) -> float:
        """Open `count` more clients (the first `probes` of each probed kind parse messages); seconds until all
        had a snapshot."""
        started = time.monotonic()
        target = self.connected + self.refused + count
        for _ in range(count):
            kind = self.mix[len(self.tasks) % len(self.mix)]
            self.by_kind[kind] += 1
            probe = None
            if kind in PROBED and sum(p.kind == kind for p in self.probes) < probes:
                probe = Probe(kind)
                self.probes.append(probe)
            self.tasks.append(asyncio.run_coroutine_threadsafe(  # type: ignore[arg-type]
                self._client(PATHS[kind], probe), self.loop))
            time.sleep(0.002)  # a steady trickle, as page loads are
        while self.connected + self.refused < target and time.monotonic() - started < timeout:
            time.sleep(0.05)
        return time.monotonic() - started

    async def _client(self, path: str, probe: Probe | None) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20)
        ws = WSConnection(ConnectionType.CLIENT)
        writer.write(ws.send(Request(host=f"127.0.0.1:{self.port}", target=path,
                                     extra_headers=[(b"origin", f"http://127.0.0.1:{self.port}".encode())])))
        accepted = False
        pending = ""
        try:
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    return
                self.received += len(data)
                if accepted and probe is None:
                    continue  # a drain-only client: the bytes are read, not parsed
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, AcceptConnection):
                        accepted = True
                        self.connected += 1
                    elif isinstance(event, RejectConnection):
                        self.refused += 1
                        return
                    elif isinstance(event, Ping):
                        writer.write(ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        return
                    elif isinstance(event, TextMessage) and probe is not None:
                        pending += event.data
                        if event.message_finished:
                            _note(probe, pending)
                            pending = ""
        finally:
            writer.close()

    def close(self) -> None:
        """Cancel every client and stop the loop (after the cancellations ran)."""
        for task in self.tasks:
            task.cancel()
        time.sleep(0.5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def _note(probe: Probe, text: str) -> None:
    now = time.time()
    if probe.kind == "tasks":
        for task_id in _ROW_ID.findall(text):
            probe.arrivals.setdefault(task_id, now)
        return
    if '"type":"task"' not in text[:20]:
        return
    message = json.loads(text)
    task_id = message.get("id")
    if isinstance(task_id, str) and task_id not in probe.arrivals:
        probe.arrivals[task_id] = now


PUBLISHERS = 2


def publish(broker_url: str, rate: float, seconds: float) -> dict[str, float]:
    """task-sent events at `rate` per second for `seconds`, from processes of their own, each publishing its share
    (in the clients' process it fell behind the rate, and one process alone does on a loaded machine): task id ->
    when it was published."""
    with multiprocessing.get_context("fork").Pool(PUBLISHERS) as pool:
        parts = [pool.apply_async(_publish, (broker_url, rate / PUBLISHERS, seconds)) for _ in range(PUBLISHERS)]
        sent: dict[str, float] = {}
        for part in parts:
            sent.update(part.get())
        return sent


def _publish(broker_url: str, rate: float, seconds: float) -> dict[str, float]:
    app = Celery("bench-fanout", broker=broker_url, set_as_current=False)
    sent: dict[str, float] = {}
    with app.connection_for_write() as connection:
        dispatcher = app.events.Dispatcher(connection, hostname="bench@fanout", enabled=True)
        started = time.monotonic()
        count = 0
        while time.monotonic() - started < seconds:
            due = started + count / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            task_id = str(uuid.uuid4())
            sent[task_id] = time.time()
            dispatcher.send("task-sent", uuid=task_id, name="bench.fanout", args="()", kwargs="{}", queue="bench",
                            routing_key="bench")
            count += 1
        dispatcher.close()
    app.close()
    return sent


HTTP_PROBES = ("/healthz", "/api/tasks?limit=50")


def http_while(port: int, stop: threading.Event, out: dict[str, list[float]]) -> None:
    """The HTTP probes in turn, 10 requests a second, until `stop`; failures and timeouts count as 10 s."""
    http = Http(port, timeout=10.0)
    turn = 0
    while not stop.is_set():
        path = HTTP_PROBES[turn % len(HTTP_PROBES)]
        turn += 1
        try:
            status, _, seconds = http.get(path)
        except OSError:
            status, seconds = 0, 10.0
        out.setdefault(path, []).append(seconds if status == 200 else 10.0)
        time.sleep(0.1)
    http.close()


class Watcher:
    """The probes and the HTTP probes, in a process of their own: in the process that drains every other socket,
    parsing waited for the interpreter and its arrival times measured the bench client (at 200 clients and
    1 000 events/s, 20 probes per kind there reported p50 ~1 s while the server used 38 % of a core)."""

    def __init__(self, port: int, kinds: list[str], probes: int) -> None:
        context = multiprocessing.get_context("fork")  # before this process starts threads
        self.conn, child = context.Pipe()
        self.proc = context.Process(target=_watch, args=(child, port, kinds, probes), daemon=True)
        self.proc.start()
        self.connected, self.refused, self.by_kind = self.conn.recv()

    def start(self) -> None:
        """Forget earlier arrivals; start the HTTP probes."""
        self.conn.send("start")

    def stop(self) -> tuple[list[Probe], dict[str, list[float]]]:
        """The probes' arrivals and the HTTP answers' times since start()."""
        self.conn.send("stop")
        probes, answered = self.conn.recv()
        return probes, answered

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send("quit")
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()


def _watch(conn: Any, port: int, kinds: list[str], probes: int) -> None:
    clients = Clients(port, kinds)
    clients.open(probes * len(kinds), probes)
    conn.send((clients.connected, clients.refused, clients.by_kind))
    while conn.recv() == "start":
        for probe in clients.probes:
            probe.arrivals.clear()
        answered: dict[str, list[float]] = {}
        stop = threading.Event()
        watcher = threading.Thread(target=http_while, args=(port, stop, answered), daemon=True)
        watcher.start()
        conn.recv()  # "stop"
        stop.set()
        watcher.join(15)
        conn.send((clients.probes, answered))
    clients.close()


def own_cpu() -> float:
    """This process's CPU seconds (the clients, the publisher, the probes)."""
    times = os.times()
    return times.user + times.system


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="100,500,1000", help="client counts, ascending")
    parser.add_argument("--rate", type=float, default=1000.0, help="task events per second (default 1000)")
    parser.add_argument("--seconds", type=float, default=5.0, help="publishing time per step (default 5)")
    parser.add_argument("--probes", type=int, default=5,
                        help="clients of each probed kind that parse every message, in a process of their own, "
                        "part of the client counts (default 5)")
    parser.add_argument("--max-tasks", type=int, default=100_000,
                        help="[monitor] max_tasks of the dashboard (default 100 000); at or below rate x seconds, "
                        "a warm-up fills them before any client connects")
    parser.add_argument("--mix", default="events", help="kinds of sockets and their proportions, e.g. "
                        "events=2,tasks=1,workers=1 (kinds: " + ", ".join(PATHS) + "; default events)")
    args = parser.parse_args()
    mix = parse_mix(args.mix)
    steps = [int(part) for part in args.clients.split(",")]
    cap = max(steps)
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp, RedisServer(directory=Path(tmp)) as redis:
        dashboard = Dashboard(redis.url(0), args.max_tasks, Path(tmp), "gunicorn", extra_config=(
            f"\n[server]\nmax_websockets = {cap}\nmax_websockets_per_client = {cap}\n"))
        clients: Clients | None = None
        watcher: Watcher | None = None
        try:
            dashboard.wait_live()
            pid = dashboard.server_pid
            if args.max_tasks <= args.rate * args.seconds:
                publish(redis.url(0), args.rate, args.seconds)  # the warm-up: the retained tasks at their bound
                time.sleep(2.0)
            base_rss = rss_bytes(pid)
            probed = [kind for kind in PROBED if kind in mix]
            watcher = Watcher(dashboard.port, probed, args.probes) if probed and args.probes else None
            clients = Clients(dashboard.port, mix)
            print(f"bench_fanout: {args.rate:g} task events/s for {args.seconds:g} s per step, mix {args.mix}, "
                  f"{args.probes} probes per probed kind; server pid {pid}, RSS {base_rss / 2**20:.1f} MiB with no "
                  f"client; load average {os.getloadavg()[0]:.2f}")
            watched = watcher.connected if watcher is not None else 0
            for step in steps:
                before_rss, before_clients = rss_bytes(pid), clients.connected + watched
                opened = clients.open(step - before_clients - clients.refused, 0)
                time.sleep(1.0)  # the snapshots written
                rss = rss_bytes(pid)
                connected = clients.connected + watched
                per_client = (rss - base_rss) / max(1, connected)
                step_per_client = (rss - before_rss) / max(1, connected - before_clients)
                load = os.getloadavg()[0]
                cpu_before, own_before, wall_before = cpu_seconds(pid), own_cpu(), time.monotonic()
                received_before = clients.received
                if watcher is not None:
                    watcher.start()
                sent = publish(redis.url(0), args.rate, args.seconds)
                published = len(sent) / args.seconds
                time.sleep(2.0)  # the last frames
                probes, answered = watcher.stop() if watcher is not None else ([], {})
                wall = time.monotonic() - wall_before
                cpu = (cpu_seconds(pid) - cpu_before) / wall
                client_cpu = (own_cpu() - own_before) / wall
                received = (clients.received - received_before) / wall
                loaded_per_client = (rss_bytes(pid) - base_rss) / max(1, connected)
                by_kind = dict(clients.by_kind)
                for kind, count in (watcher.by_kind if watcher is not None else {}).items():
                    by_kind[kind] = by_kind.get(kind, 0) + count
                kinds = ", ".join(f"{count} {kind}" for kind, count in by_kind.items())
                print(f"  {connected} clients ({kinds}; {clients.refused} refused; opened in {opened:.1f} s; "
                      f"load average {load:.2f} before the step): RSS {rss / 2**20:.1f} MiB, "
                      f"{per_client / 1024:.1f} KiB/client (this step's clients: {step_per_client / 1024:.1f} KiB "
                      f"each; after the events: {loaded_per_client / 1024:.1f} KiB/client); {published:.0f} task "
                      f"events/s published; clients received {received / 2**20:.1f} MiB/s; server CPU {cpu:.0%}, "
                      f"bench client CPU {client_cpu:.0%} (draining; the probes apart)")
                for kind in PROBED:
                    of_kind = [probe for probe in probes if probe.kind == kind]
                    if not of_kind:
                        continue
                    latencies = [arrived - sent[task_id] for probe in of_kind
                                 for task_id, arrived in probe.arrivals.items() if task_id in sent]
                    seen = statistics.mean(len([t for t in probe.arrivals if t in sent]) / len(sent)
                                           for probe in of_kind) if sent else 0.0
                    print(f"    {kind:>6} ({len(of_kind)} probes): push p50 {pct(latencies, 0.5) * 1000:.0f} ms "
                          f"p99 {pct(latencies, 0.99) * 1000:.0f} ms max "
                          f"{max(latencies, default=float('nan')) * 1000:.0f} ms; probes saw {seen:.0%} of "
                          f"{len(sent)} tasks")
                for path in HTTP_PROBES:
                    times = answered.get(path, [])
                    print(f"    {path}: {len(times)} answered, p50 {pct(times, 0.5) * 1000:.1f} ms p95 "
                          f"{pct(times, 0.95) * 1000:.1f} ms max {max(times, default=float('nan')) * 1000:.1f} ms")
            refused_before = clients.refused
            started = time.monotonic()
            clients.open(1, 0, timeout=10.0)
            print(f"  one past the cap ({cap}): refused={clients.refused > refused_before} in "
                  f"{time.monotonic() - started:.2f} s")
        finally:
            if watcher is not None:
                watcher.close()
            if clients is not None:
                clients.close()
            dashboard.close()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
