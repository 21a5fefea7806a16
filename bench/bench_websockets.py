"""How many live websocket clients one dashboard process holds, and how fast it pushes to them.

Starts its own redis-server and `dispatch-dashboard serve` (gunicorn gthread, `--threads`), then, for each
client count in `--clients` (ascending; clients stay connected between steps), opens `/ws/events?tasks=0`
connections until that many are open and reports:

- how many got their first message (the snapshot) within `--connect-timeout` seconds: a gthread worker holds
  one thread per open websocket, so clients beyond `--threads` wait for a free thread;
- the server process's RSS per connected client;
- while task-sent events are published at `--rate` per second for `--seconds` (Celery's own event dispatcher,
  as a client's send_task would): the server's CPU, the share of tasks each client saw and the push latency,
  from publishing to the task's first arrival at the client (p50 / p95 / max over every client's tasks).

`--path /ws/ui?view=tasks` measures the tasks page's socket instead (HTML fragments; a task counts as arrived
when a row naming it does).

Figures only, nothing asserted. Usage: .venv/bin/python bench/bench_websockets.py [--clients 10,30,60,70]
"""

from __future__ import annotations

import argparse
import contextlib
import json
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

import simple_websocket
from celery import Celery

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ingest import ROOT, Dashboard, cpu_seconds, rss_bytes  # noqa: E402

sys.path.insert(0, str(ROOT))
from dashboard.services.processes import RedisServer  # noqa: E402

TASK_ID_ATTR = re.compile(r'data-task-id="([^"]+)"')


class Client(simple_websocket.Client):  # type: ignore[misc]  # untyped base
    """simple-websocket's client, minus its handshake race (a first frame read with the 101 answer waits for the
    next read otherwise; tests/support/http.py has the same fix)."""

    def handshake(self) -> None:
        super().handshake()
        if self.connected:  # type: ignore[has-type]  # an attribute of the untyped base
            self.connected = self._handle_events()


@dataclass
class Listener:
    """One websocket client on a thread of its own, recording when each task message arrived."""

    url: str
    snapshot_at: float | None = None
    error: str | None = None
    arrivals: dict[str, float] = field(default_factory=dict)  # task id -> when the client first saw it
    ws: Any = None
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.ws = Client.connect(self.url)
            html = "/ws/ui" in self.url
            while True:
                text = self.ws.receive(timeout=None)
                now = time.time()
                if self.snapshot_at is None:
                    self.snapshot_at = now  # the first message is the snapshot, on both sockets
                    continue
                if html:  # the tasks page: rows (and whole tables) name their tasks in data-task-id
                    for task_id in TASK_ID_ATTR.findall(text):
                        self.arrivals.setdefault(task_id, now)
                    continue
                message = json.loads(text)
                if message.get("type") == "task" and message.get("name") == "bench.ws":
                    self.arrivals.setdefault(message["id"], now)
        except simple_websocket.ConnectionClosed:
            return
        except Exception as exc:  # noqa: BLE001 - reported, not raised: one client's failure is a figure
            self.error = f"{type(exc).__name__}: {exc}"

    def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):  # already closed by the server, or never opened
                self.ws.close()


def publish(broker_url: str, rate: float, seconds: float) -> dict[str, float]:
    """task-sent events at `rate` per second for `seconds`; when each id was sent."""
    app = Celery("bench-ws", broker=broker_url, set_as_current=False)
    sent: dict[str, float] = {}
    with app.connection_for_write() as connection:
        dispatcher = app.events.Dispatcher(connection, hostname="bench@publisher")
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            task_id = str(uuid.uuid4())
            dispatcher.send("task-sent", uuid=task_id, name="bench.ws", args="()", kwargs="{}", queue="default",
                            routing_key="default", exchange="", retries=0)
            sent[task_id] = time.time()
            next_at = started + len(sent) / rate
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        dispatcher.close()
    return sent


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="10,30,60,70", help="client counts, ascending (default 10,30,60,70)")
    parser.add_argument("--threads", type=int, default=64, help="server threads (default 64, serve's default)")
    parser.add_argument("--rate", type=float, default=200.0, help="task-sent events per second (default 200)")
    parser.add_argument("--seconds", type=float, default=5.0, help="publishing time per step (default 5)")
    parser.add_argument("--connect-timeout", type=float, default=5.0, help="seconds to wait for snapshots")
    parser.add_argument("--path", default="/ws/events?tasks=0",
                        help="the websocket: /ws/events?tasks=0 (default) or /ws/ui?view=tasks (the tasks page)")
    args = parser.parse_args()
    steps = sorted({int(n) for n in args.clients.split(",") if n.strip()})

    workdir = Path(tempfile.mkdtemp(prefix="bench-ws-"))
    redis = RedisServer(directory=workdir / "redis", log_path=workdir / "redis.log")
    redis.start()
    dash = Dashboard(redis.url(0), 10_000, workdir, "gunicorn", extra_args=("--threads", str(args.threads)))
    listeners: list[Listener] = []
    rows: list[dict[str, Any]] = []
    try:
        dash.wait_live()
        url = f"ws://127.0.0.1:{dash.port}{args.path}"
        base_rss = rss_bytes(dash.server_pid)
        print(f"dashboard on :{dash.port}, {args.threads} threads; idle RSS {base_rss / 2**20:.1f} MiB")
        for target in steps:
            opening = time.monotonic()
            while len(listeners) < target:
                listener = Listener(url)
                listener.start()
                listeners.append(listener)
            deadline = opening + args.connect_timeout
            while time.monotonic() < deadline and sum(lst.snapshot_at is not None for lst in listeners) < target:
                time.sleep(0.05)
            connected = [lst for lst in listeners if lst.snapshot_at is not None]
            time.sleep(0.5)
            rss = rss_bytes(dash.server_pid)
            for listener in connected:
                listener.arrivals.clear()
            cpu_before = cpu_seconds(dash.server_pid)
            sent = publish(redis.url(0), args.rate, args.seconds)
            cpu = (cpu_seconds(dash.server_pid) - cpu_before) / args.seconds
            time.sleep(1.0)  # the last frames
            seen_shares = [len(sent.keys() & lst.arrivals.keys()) / len(sent) for lst in connected]
            latencies = [at - sent[k] for lst in connected for k, at in lst.arrivals.items() if k in sent]
            row = {
                "clients": target, "connected": len(connected),
                "errors": sum(lst.error is not None for lst in listeners),
                "rss_mib": rss / 2**20,
                "rss_per_client_kib": (rss - base_rss) / max(1, len(connected)) / 1024,
                "events": len(sent), "cpu": cpu, "seen_min": min(seen_shares, default=0.0),
                "seen_mean": statistics.fmean(seen_shares) if seen_shares else 0.0,
                "p50_ms": percentile(latencies, 0.5) * 1000, "p95_ms": percentile(latencies, 0.95) * 1000,
                "max_ms": max(latencies, default=float("nan")) * 1000,
            }
            rows.append(row)
            print(f"  {target:4d} clients: {row['connected']:4d} got a snapshot within {args.connect_timeout:g} s; "
                  f"RSS {row['rss_mib']:.1f} MiB; CPU {cpu:.0%}; {len(sent)} events -> p50 {row['p50_ms']:.1f} ms, "
                  f"p95 {row['p95_ms']:.1f} ms, max {row['max_ms']:.1f} ms; min share seen {row['seen_min']:.0%}",
                  flush=True)
    finally:
        for listener in listeners:
            listener.close()
        dash.close()
        redis.stop()

    print()
    print(f"{'clients':>8} {'connected':>10} {'RSS MiB':>8} {'KiB/client':>11} {'CPU':>5} {'seen (min/mean)':>16} "
          f"{'p50 ms':>7} {'p95 ms':>7} {'max ms':>7}")
    for row in rows:
        print(f"{row['clients']:>8} {row['connected']:>10} {row['rss_mib']:>8.1f} {row['rss_per_client_kib']:>11.0f} "
              f"{row['cpu']:>5.0%} "
              f"{row['seen_min']:>7.0%} / {row['seen_mean']:<6.0%} {row['p50_ms']:>7.1f} {row['p95_ms']:>7.1f} "
              f"{row['max_ms']:>7.1f}")
    print(f"(path {args.path}; rate {args.rate:g} task-sent events/s for {args.seconds:g} s per step; latency: "
          "publish to first arrival at the client, over every client's tasks; CPU: the server process)")


if __name__ == "__main__":
    main()
