"""Live viewers per process: how many websocket clients one `dispatch-dashboard serve` process holds, and how
fast each change reaches them under a stream of task events.

Starts its own redis-server and dashboard (`[server] max_websockets` set above the largest step), then for each
client count in `--clients` (ascending; clients stay connected between steps) opens `/ws/events?tasks=0`
connections from one asyncio process until that many have their snapshot, and reports:

- the server's RSS per connected client (RSS after the step minus RSS with no client, divided by the clients);
- while `--rate` task-sent events per second are published for `--seconds` (Celery's own event dispatcher): the
  push latency from publishing to arrival, p50 / p99 / max, measured on `--probes` clients that parse every
  message (the others only drain their sockets: one client process cannot parse a million messages a second),
  the share of tasks the probes saw, the server's CPU, and `/healthz` answered meanwhile (p50 / max);
- one socket past the cap: refused at once, or not.

Figures only, nothing asserted. Usage: .venv/bin/python bench/bench_fanout.py [--clients 100,500,1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from celery import Celery
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, RejectConnection, Request, TextMessage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ingest import ROOT, Dashboard, Http, cpu_seconds, rss_bytes  # noqa: E402

sys.path.insert(0, str(ROOT))
from dashboard.services.processes import RedisServer  # noqa: E402

PATH = "/ws/events?tasks=0"


@dataclass
class Probe:
    """A client that parses every message and notes when each task first arrived."""

    arrivals: dict[str, float] = field(default_factory=dict)


class Clients:
    """Websocket clients on one asyncio loop (a thread of this process)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="clients", daemon=True)
        self.thread.start()
        self.connected = 0
        self.refused = 0
        self.probes: list[Probe] = []
        self.tasks: list[asyncio.Future[None]] = []

    def open(self, count: int, probes: int, timeout: float = 60.0) -> float:
        """Open `count` more clients (the first `probes` of all parse messages); seconds until all had a snapshot."""
        started = time.monotonic()
        target = self.connected + count
        for _ in range(count):
            probe = Probe() if len(self.probes) < probes else None
            if probe is not None:
                self.probes.append(probe)
            self.tasks.append(asyncio.run_coroutine_threadsafe(self._client(probe), self.loop))  # type: ignore[arg-type]
            time.sleep(0.002)  # a steady trickle, as page loads are
        while self.connected + self.refused < target and time.monotonic() - started < timeout:
            time.sleep(0.05)
        return time.monotonic() - started

    async def _client(self, probe: Probe | None) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20)
        ws = WSConnection(ConnectionType.CLIENT)
        writer.write(ws.send(Request(host=f"127.0.0.1:{self.port}", target=PATH,
                                     extra_headers=[(b"origin", f"http://127.0.0.1:{self.port}".encode())])))
        accepted = False
        pending = ""
        try:
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    return
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
    if '"type":"task"' not in text[:20]:
        return
    message = json.loads(text)
    task_id = message.get("id")
    if isinstance(task_id, str) and task_id not in probe.arrivals:
        probe.arrivals[task_id] = time.time()


def publish(broker_url: str, rate: float, seconds: float) -> dict[str, float]:
    """task-sent events at `rate` per second for `seconds`: task id -> when it was published."""
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


def health_while(port: int, stop: threading.Event, out: list[float]) -> None:
    http = Http(port, timeout=10.0)
    while not stop.is_set():
        status, _, seconds = http.get("/healthz")
        if status == 200:
            out.append(seconds)
        time.sleep(0.1)
    http.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="100,500,1000", help="client counts, ascending")
    parser.add_argument("--rate", type=float, default=1000.0, help="task events per second (default 1000)")
    parser.add_argument("--seconds", type=float, default=5.0, help="publishing time per step (default 5)")
    parser.add_argument("--probes", type=int, default=20, help="clients that parse every message (default 20)")
    args = parser.parse_args()
    steps = [int(part) for part in args.clients.split(",")]
    cap = max(steps)
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp, RedisServer(directory=Path(tmp)) as redis:
        dashboard = Dashboard(redis.url(0), 100_000, Path(tmp), "gunicorn", extra_config=(
            f"\n[server]\nmax_websockets = {cap}\nmax_websockets_per_client = {cap}\n"))
        clients: Clients | None = None
        try:
            dashboard.wait_live()
            pid = dashboard.server_pid
            base_rss = rss_bytes(pid)
            clients = Clients(dashboard.port)
            print(f"bench_fanout: {args.rate:g} task events/s for {args.seconds:g} s per step, {args.probes} probes; "
                  f"server pid {pid}, RSS {base_rss / 2**20:.1f} MiB with no client")
            for step in steps:
                opened = clients.open(step - clients.connected - clients.refused, args.probes)
                rss = rss_bytes(pid)
                per_client = (rss - base_rss) / max(1, clients.connected)
                for probe in clients.probes:
                    probe.arrivals.clear()
                health: list[float] = []
                stop = threading.Event()
                watcher = threading.Thread(target=health_while, args=(dashboard.port, stop, health), daemon=True)
                cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
                watcher.start()
                sent = publish(redis.url(0), args.rate, args.seconds)
                time.sleep(2.0)  # the last frames
                stop.set()
                watcher.join(15)
                cpu = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - wall_before)
                latencies = [arrived - sent[task_id] for probe in clients.probes
                             for task_id, arrived in probe.arrivals.items() if task_id in sent]
                seen = statistics.mean(len([t for t in probe.arrivals if t in sent]) / len(sent)
                                       for probe in clients.probes) if clients.probes and sent else 0.0
                print(f"  {clients.connected} clients ({clients.refused} refused; opened in {opened:.1f} s): "
                      f"RSS {rss / 2**20:.1f} MiB, {per_client / 1024:.1f} KiB/client; push p50 "
                      f"{pct(latencies, 0.5) * 1000:.0f} ms p99 {pct(latencies, 0.99) * 1000:.0f} ms max "
                      f"{max(latencies, default=float('nan')) * 1000:.0f} ms; probes saw {seen:.0%} of "
                      f"{len(sent)} tasks; server CPU {cpu:.0%}; /healthz p50 {pct(health, 0.5) * 1000:.1f} ms "
                      f"max {max(health, default=float('nan')) * 1000:.1f} ms")
            refused_before = clients.refused
            started = time.monotonic()
            clients.open(1, 0, timeout=10.0)
            print(f"  one past the cap ({cap}): refused={clients.refused > refused_before} in "
                  f"{time.monotonic() - started:.2f} s")
        finally:
            if clients is not None:
                clients.close()
            dashboard.close()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
