"""HTTP dispatch benchmark: sequential and concurrent `POST /api/dispatch` through a real `dispatch-dashboard serve`.

What runs: its own redis-server on a free port, then for each code tree asked for (this checkout, and e.g. an
exported older commit with --tree) `dispatch-dashboard serve` on a free port, audit log on (a SQLite file on
this disk, synchronous=FULL), routes `bench.*` -> queue `bench`. No worker: the messages wait in the queue,
which is emptied between phases. Trees are measured alternately, `--rounds` times, so that a change in the
machine's load hits both alike.

The body is the one Flower's `send-task` is compared with: {"name": "bench.noop", "args": [1, 2],
"options": {"queue": "bench"}, "force": true}. Each client keeps one HTTP/1.1 connection open (like a
`requests.Session`).

    .venv/bin/python bench/bench_dispatch.py                       # this tree only
    git archive e12d8c3 | tar -x -C /tmp/dd-main                  # an older tree to compare with
    .venv/bin/python bench/bench_dispatch.py --tree /tmp/dd-main --tree . --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dashboard.services.processes import RedisServer, free_port, log_tail  # noqa: E402

BODY = json.dumps({"name": "bench.noop", "args": [1, 2], "options": {"queue": "bench"}, "force": True}).encode()
HEADERS = {"Content-Type": "application/json", "Host": "127.0.0.1"}
READY_TIMEOUT = 30.0


class Dashboard:
    """`dispatch-dashboard serve` from one code tree, as a child process in its own session."""

    def __init__(self, tree: Path, broker_url: str, workdir: Path, server: str) -> None:
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "bench.toml"
        config.write_text(f'broker_url = "{broker_url}"\n\n[routes]\n"bench.*" = "bench"\n\n'
                          f'[audit]\npath = "{workdir / "audit.sqlite3"}"\n')
        self.log_path = workdir / "dashboard.log"
        env = {k: v for k, v in os.environ.items()
               if k not in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "DASHBOARD_CONFIG", "DASHBOARD_CLIENT_APP",
                            "DASHBOARD_AUDIT_PATH", "DASHBOARD_HISTORY_URL")}
        env["PYTHONPATH"] = str(tree)  # that tree's `dashboard` package, not the installed one
        env["DASHBOARD_HISTORY_URL"] = ""
        argv = [sys.executable, "-m", "dashboard.cli", "serve", "--config", str(config), "--port", str(self.port),
                "--server", server, "--log-level", "warning"]
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True, cwd=tree)

    def wait_live(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dashboard exited with {self.proc.returncode}\n{log_tail(self.log_path)}")
            with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/api/status", headers=HEADERS)
                if json.loads(conn.getresponse().read()).get("broker") == "live":
                    conn.close()
                    return
                conn.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"dashboard not live within {READY_TIMEOUT:.0f} s\n{log_tail(self.log_path)}")
            time.sleep(0.1)

    def cpu_seconds(self) -> float:
        """CPU time of the server and its worker processes so far (a figure the machine's other load barely moves)."""
        total = 0.0
        pids = [self.proc.pid]
        while pids:
            pid = pids.pop()
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
                pids += [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        return total

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def client_loop(port: int, count: int, samples: list[float], errors: list[str]) -> None:
    """`count` dispatches one after another on one kept-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(count):
        started = time.perf_counter()
        conn.request("POST", "/api/dispatch", body=BODY, headers=HEADERS)
        response = conn.getresponse()
        body = response.read()
        samples.append(time.perf_counter() - started)
        if response.status != 202:
            errors.append(f"{response.status} {body[:200]!r}")
    conn.close()


def run_phase(dash: Dashboard, clients: int, per_client: int) -> dict[str, Any]:
    port = dash.port
    cpu = dash.cpu_seconds()
    samples: list[float] = []
    errors: list[str] = []
    threads = [threading.Thread(target=client_loop, args=(port, per_client, samples, errors)) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    cpu = dash.cpu_seconds() - cpu
    ordered = sorted(samples)
    return {"clients": clients, "n": len(samples), "errors": len(errors), "first_error": errors[0] if errors else None,
            "per_s": len(samples) / elapsed, "p50_ms": 1000 * statistics.median(ordered),
            "p95_ms": 1000 * ordered[int(0.95 * (len(ordered) - 1))], "max_ms": 1000 * ordered[-1],
            "cpu_ms": 1000 * cpu / max(len(samples), 1)}


def flush(redis: Any) -> None:
    """Empty the bench queue (no worker consumes it)."""
    import redis as redis_py

    client = redis_py.Redis.from_url(redis.url())
    client.delete("bench")
    client.close()


def measure(tree: Path, redis: Any, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    dash = Dashboard(tree, redis.url(), workdir, args.server)
    try:
        dash.wait_live()
        run_phase(dash, 1, args.warmup)  # warm-up: connections, imports, the audit file
        flush(redis)
        sequential = run_phase(dash, 1, args.requests)
        flush(redis)
        concurrent = run_phase(dash, args.clients, args.requests // args.clients)
        flush(redis)
        return {"sequential": sequential, "concurrent": concurrent}
    finally:
        dash.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", type=Path, help="a code tree to measure (repeat; default: this one)")
    parser.add_argument("--requests", type=int, default=2000, help="dispatches per phase")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8, help="clients of the concurrent phase")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--server", default="gunicorn", choices=["gunicorn", "werkzeug"])
    parser.add_argument("--workdir", type=Path, help="where the audit logs go (default: a new directory in /var/tmp)")
    args = parser.parse_args()
    trees = [tree.resolve() for tree in (args.tree or [ROOT])]
    base = args.workdir or Path(tempfile.mkdtemp(prefix="bench-dispatch-", dir="/var/tmp"))
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f}; audit logs under {base}")
    print("# server CPU: the dashboard's processes' CPU time per request (other load on the machine barely moves it)")
    redis = RedisServer(directory=base / "redis")
    redis.start()
    try:
        for round_ in range(1, args.rounds + 1):
            for index, tree in enumerate(trees):
                result = measure(tree, redis, base / f"r{round_}-t{index}", args)
                for phase, figures in result.items():
                    print(f"round {round_} load {os.getloadavg()[0]:4.2f} {str(tree):<24} {phase:<10} "
                          f"clients {figures['clients']:>2}  "
                          f"n {figures['n']:>5}  {figures['per_s']:7.1f}/s  p50 {figures['p50_ms']:5.2f} ms  "
                          f"p95 {figures['p95_ms']:5.2f} ms  max {figures['max_ms']:6.1f} ms  "
                          f"server CPU {figures['cpu_ms']:4.2f} ms/req  "
                          f"errors {figures['errors']}" + (f" ({figures['first_error']})" if figures["errors"] else ""),
                          flush=True)
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
