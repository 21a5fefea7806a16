"""HTTP dispatch, one client then 8 at once: Flower's `send-task` beside dashboards, in one run, on one Redis.

`/work/shared/bench/anchor_flower.py` times sequential dispatches only; this adds the 8-client case of the
performance issue. Run it with the scratch venv that has Flower (`celery[redis] flower requests`), as the shared
harness is run; each target is a shell command with `{broker}`, `{port}` and `{perf}` (a config routing `bench.*`
to queue `bench`):

    $VENV/bin/python bench/flower_dispatch_clients.py 1000 \\
      "flower=$VENV/bin/celery --broker={broker} flower --port={port} --address=127.0.0.1" \\
      "new=.venv/bin/dispatch-dashboard serve --config {perf} --host 127.0.0.1 --port {port}"

A target whose name contains "flower" gets Flower's URL and body. A real worker (threads pool, 4) consumes queue
`bench` meanwhile, as in the shared harness. Everything it starts it stops.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests  # the scratch venv's (the harness's HTTP client, so the figures compare)

CELERY = os.environ.get("CELERY", str(Path(sys.executable).with_name("celery")))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def measure(url: str, body: dict[str, Any], count: int, clients: int) -> dict[str, Any]:
    """`count` POSTs from `clients` threads, each on its own keep-alive session."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def run() -> None:
        session = requests.Session()
        mine = []
        for _ in range(count // clients):
            started = time.perf_counter()
            reply = session.post(url, json=body, timeout=10)
            mine.append(time.perf_counter() - started)
            if not 200 <= reply.status_code < 300:
                with lock:
                    errors[0] += 1
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = time.perf_counter() - started
    latencies.sort()
    return {"clients": clients, "n": len(latencies), "per_s": round(len(latencies) / total, 1),
            "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
            "p95_ms": round(latencies[int(len(latencies) * 0.95)] * 1000, 2), "errors": errors[0]}


def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within 20 s")


def main(argv: list[str]) -> int:
    count, targets = int(argv[0]), [arg.split("=", 1) for arg in argv[1:]]
    work = Path(tempfile.mkdtemp(prefix="flower-dispatch-"))
    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no",
                              "--dir", str(work)], stdout=subprocess.DEVNULL)
    broker = f"redis://127.0.0.1:{redis_port}/0"
    (work / "bench_tasks.py").write_text(f"from celery import Celery\napp = Celery('bench', broker={broker!r})\n"
                                         "@app.task(name='bench.noop')\ndef noop(*a, **k):\n    return None\n")
    (work / "perf.toml").write_text(f'broker_url = "{broker}"\n[routes]\n"bench.*" = {{ queue = "bench" }}\n')
    time.sleep(0.5)
    worker = subprocess.Popen([CELERY, "-A", "bench_tasks", "worker", "-E", "--pool=threads", "-c", "4", "-Q",
                               "bench", "--loglevel=WARNING"], cwd=work, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        for name, command in targets:
            port = free_port()
            env = dict(os.environ, XDG_STATE_HOME=tempfile.mkdtemp(), FLOWER_UNAUTHENTICATED_API="true")
            with (work / f"{name}.log").open("w") as log:
                process = subprocess.Popen(command.format(broker=broker, port=port, perf=work / "perf.toml"),
                                           shell=True, env=env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True)
            try:
                flower = "flower" in name
                base = f"http://127.0.0.1:{port}"
                wait_ready(base + ("/healthcheck" if flower else "/healthz"))
                url = base + ("/api/task/send-task/bench.noop" if flower else "/api/dispatch")
                body: dict[str, Any] = ({"args": [1, 2], "queue": "bench"} if flower else
                                        {"name": "bench.noop", "args": [1, 2], "options": {"queue": "bench"},
                                         "force": True})
                measure(url, body, 100, 1)  # warm-up
                print(name, json.dumps([measure(url, body, count, 1), measure(url, body, count, 8)]), flush=True)
            finally:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(10)
    finally:
        worker.terminate()
        worker.wait(10)
        redis.terminate()
        redis.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
