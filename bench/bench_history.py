"""History store benchmark: a store of N tasks (default 1 000 000), then what a user waits for.

Usage: python bench/bench_history.py [--tasks N] [--url sqlite|postgres|postgresql://...] [--reps R] [--json FILE]
Prints figures only; it asserts nothing (timed assertions do not belong in tests).

- fill: N synthetic tasks (four events each: sent, received, started, succeeded or failed; 50 task names in 10
  families, 8 queues, 20 workers, 5 % failures with an exception and a traceback, args and results with numbers
  and words), written through the store's own group-commit path in batches of 5 000;
- disk per stored task;
- search latency p50/p95 over R runs each: by name (exact and glob), state, queue, worker, id prefix, free text
  (a common and a rare word), a field term, a combined query; a page of the tasks list (the first and a deep one);
- restart: a new process state warmed from the store: time to the first page (the newest 1 000 restored) and to
  a full memory (the newest 100 000);
- memory: the RSS of a process that opens the store and runs every search, with N stored and with 10 000 stored.

The ingest figure (events/s with history on against memory only) comes from bench_ingest.py --history sqlite
(or postgres).

`--url postgres` starts a PostgreSQL server of the bench's own (Debian's binaries, initdb in a temporary directory,
a free loopback port, durable settings: fsync on, synchronous_commit on) and measures the PostgreSQL store on it;
a postgresql:// URL measures an existing database (its tables are created, and filled).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dashboard.model.search import parse_query  # noqa: E402
from dashboard.model.state import State, TaskView, TimelineEntry  # noqa: E402
from dashboard.services.history import HistoryStore, HistoryWriter, WriteBatch, open_store  # noqa: E402

FAMILIES = ("billing", "mail", "search", "media", "auth", "reports", "sync", "ml", "export", "notify")
NAMES = tuple(f"acme.{family}.task_{i}" for family in FAMILIES for i in range(5))
QUEUES = ("default", "billing", "mail", "media", "ml", "reports", "sync", "low")
WORKERS = tuple(f"celery@worker-{i:02d}" for i in range(20))
WORDS = ("invoice", "customer", "refund", "upload", "thumbnail", "digest", "report", "token", "export", "sync")
BATCH = 5_000
T0 = 1_900_000_000.0

SEARCHES: dict[str, str] = {
    "name (exact)": "name:acme.billing.task_1",
    "name (glob)": "name:acme.mail.*",
    "state": "state:FAILURE",
    "queue": "queue:media",
    "worker": "worker:celery@worker-07",
    "id prefix": "id:00ab",
    "free text (common word)": "invoice",
    "free text (rare word)": "quux",
    "field term": "exception:timeout",
    "combined": "name:acme.billing.* state:FAILURE since:30d",
}


def synthetic(index: int, rng: random.Random) -> TaskView:
    """One task's snapshot, as the state would hold it after its four events."""
    # Random like Celery's uuid4 ids: a prefix matches tasks of every age.
    task_id = f"{rng.getrandbits(32):08x}-{rng.getrandbits(16):04x}-4{rng.getrandbits(12):03x}-" \
              f"8{rng.getrandbits(12):03x}-{rng.getrandbits(48):012x}"
    name = NAMES[index % len(NAMES)]
    queue = QUEUES[index % len(QUEUES)]
    worker = WORKERS[rng.randrange(len(WORKERS))]
    sent = T0 + index * 0.05
    failed = rng.random() < 0.05
    word = WORDS[rng.randrange(len(WORDS))]
    runtime = rng.lognormvariate(-2.5, 1.0)
    final = "task-failed" if failed else "task-succeeded"
    timeline = (TimelineEntry("task-sent", sent, None, f"to queue {queue}"),
                TimelineEntry("task-received", sent + 0.01, worker, None),
                TimelineEntry("task-started", sent + 0.02, worker, None),
                TimelineEntry(final, sent + 0.02 + runtime, worker, None))
    return TaskView(
        id=task_id, name=name, state="FAILURE" if failed else "SUCCESS", queue=queue, exchange=None,
        routing_key=queue, worker=worker, args=f"[{rng.randrange(100_000)}, '{word}']",
        kwargs=f"{{'customer': {rng.randrange(10_000)}}}", result=None if failed else f"'{word} done'",
        exception="TimeoutError('upstream timeout after 30 s')" if failed else None,
        traceback=("Traceback (most recent call last):\n  File \"tasks.py\", line 12, in run\n"
                   "TimeoutError: upstream timeout after 30 s") if failed else None,
        runtime=runtime, retries=0, eta=None, expires=None, root_id=task_id, parent_id=None, not_registered=False,
        timestamps=MappingProxyType({}), timeline=timeline, version=1,
    )


def fill(store: HistoryStore, tasks: int) -> float:
    """Write `tasks` synthetic tasks; tasks written per second."""
    rng = random.Random(7)
    store.open()
    started = time.perf_counter()
    for first in range(0, tasks, BATCH):
        store.write(WriteBatch.of_views([synthetic(i, rng) for i in range(first, min(first + BATCH, tasks))]))
        if (first // BATCH) % 40 == 0:
            print(f"  filled {first + BATCH:,} ({time.perf_counter() - started:.0f} s)", flush=True)
    return tasks / (time.perf_counter() - started)


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": statistics.median(ordered) * 1e3,
            "p95_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))] * 1e3,
            "max_ms": ordered[-1] * 1e3}


def timed(run: Callable[[], Any], reps: int) -> dict[str, float]:
    run()  # warm the page cache and the statement cache once
    samples = []
    for _ in range(reps):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return percentiles(samples)


def searches(store: HistoryStore, reps: int) -> dict[str, dict[str, float]]:
    now = T0 + 10_000_000
    found: dict[str, dict[str, float]] = {}
    for label, text in SEARCHES.items():
        query = parse_query(text, now)
        page = store.search(query, limit=50)
        found[label] = {**timed(partial(store.search, query, limit=50), reps), "total": page.total,
                        "capped": page.capped}
    everything = parse_query("", now)
    found["tasks list, first page"] = timed(lambda: store.search(everything, limit=50), reps)
    found["tasks list, page 100"] = timed(lambda: store.search(everything, limit=50, offset=5_000), reps)
    found["sorted by runtime"] = timed(lambda: store.search(parse_query("name:acme.ml.task_3", now),
                                                           sort="-runtime", limit=50), max(reps // 5, 3))
    return found


def restart(store: HistoryStore, max_tasks: int) -> dict[str, float]:
    """A new process's memory warmed from the store: first page, then full."""
    state = State(max_tasks)
    first: list[float] = []
    started = time.perf_counter()
    writer = HistoryWriter(store, state, restore=True,
                           on_restored=lambda: first.append(time.perf_counter() - started))
    writer.restore()
    return {"first_page_s": first[0] if first else float("nan"), "full_s": time.perf_counter() - started,
            "restored": writer.status().restored}


def rss_after_searches(url: str) -> int:
    """The peak RSS (bytes) of a fresh process that opens the store and runs every search."""
    code = (f"import sys, resource; sys.path.insert(0, {str(ROOT)!r})\n"
            "from bench.bench_history import searches\n"
            "from dashboard.services.history import open_store\n"
            f"store = open_store({url!r}); store.open(); searches(store, 3)\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800, cwd=ROOT,
                         check=True)
    return int(out.stdout.strip().splitlines()[-1]) * 1024


def vacuum(url: str) -> None:
    """VACUUM (ANALYZE) the tasks table, as autovacuum does a minute after a large fill."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) tasks")


@contextlib.contextmanager
def own_postgres() -> Iterator[tuple[str, str]]:
    """A PostgreSQL server of the bench's own (durable, as in production) with two databases: the large store's
    and the small one's."""
    from tests.support.postgres_server import durable_server

    with durable_server(extra_databases=("small",)) as server:
        yield server.url(), server.url("small")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--url", default="sqlite",
                        help="sqlite (a temp file), postgres (a server of its own) or a postgresql:// URL")
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--small", type=int, default=10_000, help="the small store of the memory comparison")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.platform(),
                               "cpus": os.cpu_count(), "tasks": args.tasks, "loadavg": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-history-") as workdir, contextlib.ExitStack() as stack:
        url = str(Path(workdir) / "history.sqlite3") if args.url == "sqlite" else args.url
        small_url = str(Path(workdir) / "small.sqlite3") if args.url == "sqlite" else None
        if args.url == "postgres":
            url, small_url = stack.enter_context(own_postgres())
            results["postgres"] = "its own server, durable settings"
        store = open_store(url)
        print(f"filling {args.tasks:,} tasks into {store.shown}", flush=True)
        results["fill_tasks_per_s"] = fill(store, args.tasks)
        store.prune(None, None)  # PRAGMA optimize / ANALYZE, as the writer's hourly pass does
        if store.kind == "postgresql":  # the steady state autovacuum keeps (a visibility map, a merged GIN list)
            vacuum(url)
        info = store.info()
        results["bytes_per_task"] = info.bytes / info.tasks if info.bytes and info.tasks else None
        results["searches"] = searches(store, args.reps)
        results["restart"] = restart(store, 100_000)
        store.close()
        results["rss_large"] = rss_after_searches(url)
        if small_url is not None:
            small = open_store(small_url)
            fill(small, args.small)
            small.close()
            results["rss_small"] = rss_after_searches(small_url)
    results["own_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def report(r: dict[str, Any]) -> str:
    lines = [f"history benchmark, {r['date']}, {r['machine']}, {r['cpus']} CPUs, load {r['loadavg'][0]:.2f}",
             f"{r['tasks']:,} tasks stored (four events each)", "",
             f"{'figure':<34}{'p50':>10}{'p95':>10}  target", "-" * 70]
    targets = {"free text (common word)": 200.0, "free text (rare word)": 200.0, "field term": 200.0,
               "tasks list, first page": 20.0, "tasks list, page 100": 20.0, "sorted by runtime": None,
               "combined": None, "id prefix": None}
    for label, figures in r["searches"].items():
        target = targets.get(label, 50.0)
        verdict = "" if target is None else ("ok" if figures["p95_ms"] <= target else "MISSED")
        lines.append(f"{label:<34}{figures['p50_ms']:>8.1f}ms{figures['p95_ms']:>8.1f}ms  "
                     f"{'' if target is None else f'p95 <= {target:.0f} ms'} {verdict}")
    lines += ["",
              f"fill rate: {r['fill_tasks_per_s']:,.0f} tasks/s through the store's write path",
              f"disk per task: {r['bytes_per_task']:,.0f} B (target <= 1,536 B)" if r["bytes_per_task"] else "",
              f"restart: first page in {r['restart']['first_page_s']:.2f} s, {r['restart']['restored']:,} tasks in "
              f"{r['restart']['full_s']:.2f} s (target: first page within 5 s)",
              f"RSS of a process searching {r['tasks']:,} stored: {r['rss_large'] / 2**20:.0f} MiB"
              + (f"; with {10_000:,} stored: {r['rss_small'] / 2**20:.0f} MiB" if "rss_small" in r else "")]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
