"""Time the routing comparison and alert evaluation on a large synthetic cluster.

Usage: python bench/bench_routing.py [RUNS]   (default 15; prints medians, asserts nothing)

Cluster: 500 workers in 50 pools of 10 (5% offline), 1000 queues (20 per pool), 2000 task names
(40 per pool), 1000 broker queues with depths, 300 sent names, with routing problems of every kind
sprinkled in. Scenarios differ in how much the input shares:

- pools:     each worker has its own (equal) registered frozenset, as built from inspect replies;
             workers share one routes mapping per distinct task_routes config (the I/O layer resolves
             each config once).
- monolith:  every worker registers all 2000 names and carries its own copy of the routes dict.
- distinct:  no two workers are alike: own registered subset and own routes dict (the worst case).
"""

from __future__ import annotations

import gc
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dashboard.model.alerts import AlertBook, conditions_from  # noqa: E402
from dashboard.model.routing import ApiRoute, BrokerQueue, WorkerSnapshot, compare  # noqa: E402

POOLS = 50
PER_POOL = 10
QUEUES_PER_POOL = 20
TASKS_PER_POOL = 40
T0 = 1_700_000_000.0


def cluster(scenario: str, seed: int = 7) -> dict[str, Any]:
    """Build compare()'s inputs for one scenario."""
    rng = random.Random(seed)
    pool_queues = [[f"p{p}.q{i}" for i in range(QUEUES_PER_POOL)] for p in range(POOLS)]
    pool_tasks = [[f"pool{p}.tasks.t{i}" for i in range(TASKS_PER_POOL)] for p in range(POOLS)]
    all_tasks = [name for names in pool_tasks for name in names]
    api_routes: dict[str, ApiRoute] = {}
    for p, names in enumerate(pool_tasks):
        for i, name in enumerate(names):
            queue = pool_queues[p][i % QUEUES_PER_POOL]
            if i == 0:
                queue = f"p{p}.unconsumed"  # orphaned: nobody consumes it
            elif i == 1:
                queue = pool_queues[(p + 1) % POOLS][0]  # wrong_queue: the neighbour pool consumes it
            api_routes[name] = ApiRoute(queue, f"pool{p}.tasks.*", "route")
    # The workers' own config: agrees with the API except one drifting name per pool.
    shared_routes = {name: route.queue for name, route in api_routes.items()}
    for p in range(POOLS):
        shared_routes[pool_tasks[p][2]] = pool_queues[p][-1]

    workers: list[WorkerSnapshot] = []
    for p in range(POOLS):
        for k in range(PER_POOL):
            host = f"celery@pool{p}-w{k:02d}"
            online = rng.random() >= 0.05
            if scenario == "monolith":
                registered = frozenset(all_tasks)
                routes: dict[str, str] = dict(shared_routes)
            elif scenario == "distinct":
                registered = frozenset(rng.sample(pool_tasks[p], TASKS_PER_POOL - 5) + [f"{host}.private"])
                routes = dict(shared_routes)
                routes[all_tasks[rng.randrange(len(all_tasks))]] = "elsewhere"
            else:
                registered = frozenset(pool_tasks[p])
                routes = shared_routes
            workers.append(WorkerSnapshot(host, online, frozenset(pool_queues[p]), registered, routes))
    # Catalog typos sent now and then: unregistered.
    sent = rng.sample(all_tasks, 280) + [f"typo.task{i}" for i in range(20)]
    broker = [BrokerQueue(queue, rng.randrange(0, 50)) for queues in pool_queues for queue in queues]
    broker += [BrokerQueue(f"p{p}.unconsumed", rng.randrange(1, 100)) for p in range(POOLS)]
    return {
        "api_routes": api_routes,
        "workers": workers,
        "broker_queues": broker,
        "default_queue": "celery",
        "sent_names": sent,
    }


def median_ms(run: Callable[[], object], runs: int, setup: Callable[[], object] | None = None) -> float:
    """Median wall time of `runs` calls, in milliseconds; `setup` runs before each, untimed."""
    times = []
    for _ in range(runs):
        if setup is not None:
            setup()
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def bench(scenario: str, runs: int) -> None:
    """Print the timings of one scenario."""
    inputs = cluster(scenario)
    report = compare(**inputs)
    previously = report.consumed_queues() | {f"p{p}.q0" for p in range(POOLS)}
    conditions = conditions_from(report, not_registered_names=["typo.task0"], previously_consumed=previously)
    book = AlertBook(grace=30)
    book.evaluate(conditions, T0)
    book.evaluate(conditions, T0 + 60)  # everything active: the steady state that is polled

    # Fresh snapshot objects before each run, as every poll builds them: frozensets cache their hash,
    # so reusing one set of inputs would flatter compare().
    fresh: list[dict[str, Any]] = [inputs]

    def rebuild() -> None:
        fresh[0] = cluster(scenario)
        # Collect now, or a collection triggered by building ~1M objects lands inside the timed call
        # (+5-20 ms): that is the poller's allocation, not compare()'s work.
        gc.collect()

    t_compare = median_ms(lambda: compare(**fresh[0]), runs, rebuild)
    t_conditions = median_ms(lambda: conditions_from(report, previously_consumed=previously), runs)
    t_evaluate = median_ms(lambda: book.evaluate(conditions, T0 + 90), runs)
    t_first = median_ms(lambda: AlertBook(grace=0).evaluate(conditions, T0), runs)
    t_dict = median_ms(report.to_dict, runs)
    statuses: dict[str, int] = {}
    for row in report.tasks:
        statuses[row.status] = statuses.get(row.status, 0) + 1
    total = t_compare + t_conditions + t_evaluate
    size = f"{len(inputs['workers'])} workers, {len(report.queues)} queues, {len(report.tasks)} tasks"
    print(f"\n[{scenario}] {size}")
    print(f"  task statuses: {dict(sorted(statuses.items()))}; conditions: {len(conditions)}")
    print(f"  compare()              {t_compare:7.2f} ms")
    print(f"  conditions_from()      {t_conditions:7.2f} ms")
    print(f"  AlertBook.evaluate()   {t_evaluate:7.2f} ms   (steady; all raised at once: {t_first:.2f} ms)")
    print(f"  total per poll         {total:7.2f} ms   (median of {runs}; report.to_dict(): {t_dict:.2f} ms)")


def main() -> None:
    """Run every scenario."""
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    print(f"Python {sys.version.split()[0]}")
    for scenario in ("pools", "monolith", "distinct"):
        bench(scenario, runs)


if __name__ == "__main__":
    main()
