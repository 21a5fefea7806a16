"""Measure memory per retained task, ingest rate and query latency of dashboard.model.state.

Usage: python bench/bench_state_memory.py [N]   (N tasks, default 100000)
Prints figures only; it asserts nothing (timed assertions do not belong in tests).
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dashboard.model.state import State  # noqa: E402

NAMES = ("llm.summarize", "llm.embed", "mail.send", "reports.build", "billing.charge")
QUEUES = ("llm", "llm", "default", "reports", "billing")
WORKERS = ("celery@worker-1", "celery@worker-2", "celery@worker-3", "celery@worker-4")
CLIENT = "gen4242@web-1"


def task_events(index: int, now: float) -> Iterator[dict[str, Any]]:
    """Yield the four events of one successful task, JSON-decoded as a receiver would."""
    task_id = str(uuid.uuid4())
    kind = index % len(NAMES)
    worker = WORKERS[index % len(WORKERS)]
    # 1% fail, to give the filtered query a rare state to look for.
    fails = index % 100 == 0
    common = {"uuid": task_id, "clock": index * 4, "utcoffset": 0, "pid": 1234}
    bodies: list[dict[str, Any]] = [
        {
            "type": "task-sent", "name": NAMES[kind], "args": f"({index}, 'doc-{index % 977}')",
            "kwargs": "{}", "queue": QUEUES[kind], "routing_key": QUEUES[kind], "exchange": "",
            "retries": 0, "eta": None, "expires": None, "root_id": task_id, "parent_id": None,
            "hostname": CLIENT, "timestamp": now,
        },
        {
            "type": "task-received", "name": NAMES[kind], "args": f"({index}, 'doc-{index % 977}')",
            "kwargs": "{}", "retries": 0, "eta": None, "expires": None, "root_id": task_id,
            "parent_id": None, "hostname": worker, "timestamp": now + 0.002,
        },
        {"type": "task-started", "hostname": worker, "timestamp": now + 0.003},
        (
            {
                "type": "task-failed", "exception": "ValueError('bad input')",
                "traceback": "Traceback (most recent call last):\n  ...\nValueError: bad input\n",
                "hostname": worker, "timestamp": now + 0.050,
            }
            if fails
            else {
                "type": "task-succeeded", "result": repr(index * 2), "runtime": 0.047,
                "hostname": worker, "timestamp": now + 0.050,
            }
        ),
    ]  # fmt: skip
    for body in bodies:
        body.update(common)
        body["local_received"] = body["timestamp"] + 0.001
        # A round trip through JSON gives fresh str/float objects per event,
        # as kombu's decoder does; sharing literals would flatter the figures.
        yield json.loads(json.dumps(body))


def rss_bytes() -> int:
    """Return this process's resident set size from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def fill(state: State, count: int) -> None:
    """Apply count tasks' events to state."""
    now = time.time() - count
    for index in range(count):
        for event in task_events(index, now + index * 0.01):
            state.apply(event)


def median_ms(call: Callable[[], object], repeat: int = 15) -> float:
    """Return the median wall time of call in milliseconds."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e3


def main(count: int) -> None:
    """Run the three measurements and print them."""
    events_per_task = "sent, received, started, succeeded (1% failed)"
    print(f"python {sys.version.split()[0]}, N = {count:,} tasks x 4 events ({events_per_task})")

    # 1. RSS: generate events lazily so that only the state itself stays resident.
    state = State(max_tasks=count)
    gc.collect()
    before = rss_bytes()
    fill(state, count)
    gc.collect()
    after = rss_bytes()
    retained = state.counts().tasks
    grown = after - before
    print(f"RSS delta: {grown / 2**20:.1f} MiB -> {grown / retained:,.0f} B per retained task")

    # 2. Query latency at full size.
    queries: list[tuple[str, Callable[[], object]]] = [
        ("tasks(limit=50)", lambda: state.tasks(limit=50)),
        ("tasks(limit=50, offset=50_000)", lambda: state.tasks(limit=50, offset=50_000)),
        ("tasks(state='FAILURE')  [1% match]", lambda: state.tasks(state="FAILURE")),
        ("tasks(name='mail.send') [20% match]", lambda: state.tasks(name="mail.send")),
        ("tasks(state='SUCCESS', queue='llm')", lambda: state.tasks(state="SUCCESS", queue="llm")),
        (
            "tasks(worker=..., name=..., queue=...)",
            lambda: state.tasks(worker=WORKERS[1], name=NAMES[1], queue="llm"),
        ),
        ("task(id)", lambda: state.task(state.tasks(limit=1)[0][0].id)),
        ("counts()", state.counts),
    ]
    for label, query in queries:
        print(f"  {label:<42} {median_ms(query):7.3f} ms (median of 15)")
    del state, queries
    gc.collect()

    # 3. tracemalloc: Python-level bytes held by a fresh state of the same size.
    tracemalloc.start()
    state = State(max_tasks=count)
    base, _ = tracemalloc.get_traced_memory()
    fill(state, count)
    gc.collect()
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    traced = current - base
    print(f"tracemalloc: {traced / 2**20:.1f} MiB -> {traced / count:,.0f} B per retained task")
    del state
    gc.collect()

    # 4. Ingest rate with events decoded up front, so only apply() is timed.
    sample = min(count, 25_000)
    now = time.time()
    events = [event for index in range(sample) for event in task_events(index, now + index * 0.01)]
    for label, ordered in (("in order", events), ("reversed per task", _reverse_per_task(events))):
        state = State(max_tasks=count)
        started = time.perf_counter()
        for event in ordered:
            state.apply(event)
        elapsed = time.perf_counter() - started
        rate, cost_us = len(ordered) / elapsed, elapsed / len(ordered) * 1e6
        print(f"apply() {label:<18} {rate:>10,.0f} events/s ({cost_us:.2f} us/event)")

    # 5. Eviction at the cap: a state of N/10 tasks fed all events.
    small = State(max_tasks=max(1, sample // 10))
    started = time.perf_counter()
    for event in events:
        small.apply(event)
    elapsed = time.perf_counter() - started
    counts = small.counts()
    kept = f"kept {counts.tasks:,}, evicted {counts.tasks_evicted:,}"
    print(f"apply() with eviction    {len(events) / elapsed:>10,.0f} events/s ({kept})")


def _reverse_per_task(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return events with each task's four events in reverse arrival order."""
    return [event for start in range(0, len(events), 4) for event in reversed(events[start : start + 4])]


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
