"""Routing comparison: where the API sends each task name versus what the online workers consume and register.

Inputs are plain data resolved by the I/O layer (which runs Celery's own router, so glob matching is never
re-implemented here):

- ``api_routes``: task name -> ApiRoute, the API's resolution of every name it knows: the catalog, the exact
  (non-glob) keys of its task_routes, and ideally the workers' registered names and the sent names too. A name
  compared here without an entry goes to ``default_queue`` with source "default", as Celery would send it when
  no route matches.
- ``workers``: one WorkerSnapshot per worker. Only online workers count as consumers, registrars or route
  declarers; offline ones are listed per queue (``offline_consumers``) and in ``offline_workers``.
- ``broker_queues``: the queues found on the broker (binding sets) with their depth, None when unknown.
- ``sent_names``: the names seen in task-sent events.

The compared names are the keys of ``api_routes``, the names online workers register and ``sent_names``.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, Sequence
from itertools import chain

from .report import (
    ApiRoute,
    BrokerQueue,
    Problem,
    QueueRouting,
    QueueStatus,
    RoutingReport,
    TaskRouting,
    WorkerSnapshot,
    hosts_phrase,
)


def _merged(groups: Iterable[tuple[str, ...]]) -> tuple[str, ...]:
    """Hostname tuples of several worker groups as one sorted tuple."""
    parts = list(groups)
    if len(parts) == 1:
        return parts[0]  # each group's hosts are already sorted: share the tuple
    return tuple(sorted(chain.from_iterable(parts)))


class _Groups:
    """Online workers grouped by equal registered sets and equal route tables, indexed for lookups."""

    def __init__(self, online: Sequence[WorkerSnapshot]) -> None:
        # Workers of one deployment register the same names: grouping turns workers x names into
        # groups x names, which keeps 500 identical workers as cheap as one.
        group_of: dict[frozenset[str], int] = {}
        group_hosts: list[list[str]] = []
        consumers: dict[str, list[str]] = {}
        self.queue_groups: dict[str, set[int]] = {}  # queue -> registration groups consuming it
        table_of: dict[int, int] = {}  # id(routes) -> route group
        tables: list[tuple[Mapping[str, str], list[str]]] = []
        for worker in online:  # sorted by hostname, so every appended host list is sorted
            group = group_of.setdefault(worker.registered, len(group_of))
            if group == len(group_hosts):
                group_hosts.append([])
            group_hosts[group].append(worker.hostname)
            for queue in worker.queues:
                consumers.setdefault(queue, []).append(worker.hostname)
                self.queue_groups.setdefault(queue, set()).add(group)
            routes = worker.routes
            if routes is None:
                continue
            index = table_of.get(id(routes))
            # Only the last distinct table is compared: equal copies usually come in a run, and a
            # scan of every table would be quadratic when they all differ. A missed match costs time only.
            if index is None and tables and tables[-1][0] == routes:
                index = len(tables) - 1
            if index is None:
                index = len(tables)
                tables.append((routes, []))
            table_of[id(routes)] = index
            tables[index][1].append(worker.hostname)
        # Tuples once per queue and group, shared by every task row that refers to them.
        self.consumers: dict[str, tuple[str, ...]] = {
            queue: tuple(hosts) for queue, hosts in consumers.items()
        }
        self.group_hosts: list[tuple[str, ...]] = [tuple(hosts) for hosts in group_hosts]
        self.registrars: dict[str, list[int]] = {}  # name -> registration groups
        for names, group in group_of.items():
            for name in names:
                self.registrars.setdefault(name, []).append(group)

        self.tables: list[Mapping[str, str]] = [table for table, _ in tables]
        self.table_hosts: list[tuple[str, ...]] = [tuple(hosts) for _, hosts in tables]
        self.declarers = sum(len(hosts) for hosts in self.table_hosts)
        self.baseline: Mapping[str, str] = {}
        self.exceptions: dict[str, list[tuple[int, str | None]]] = {}  # name -> (route group, queue or None)

    def index_routes(self, baseline: Mapping[str, str], compared: Container[str]) -> None:
        """Record each route table as its exceptions to `baseline`, for the compared names."""
        # The baseline is the API's pattern-routed names, which the API's task_routes mirror from the
        # workers': per-task work then scales with the disagreements, not with tasks x tables.
        self.baseline = baseline
        for index, table in enumerate(self.tables):
            if table == baseline:  # C speed, and the usual case when the configs match
                continue
            expected = baseline.get
            for name, queue in table.items():
                if expected(name) != queue and name in compared:
                    self.exceptions.setdefault(name, []).append((index, queue))
            if not baseline.keys() <= table.keys():
                for name in baseline.keys() - table.keys():  # names this table gives no route
                    self.exceptions.setdefault(name, []).append((index, None))


def compare(
    api_routes: Mapping[str, ApiRoute],
    workers: Iterable[WorkerSnapshot],
    broker_queues: Iterable[BrokerQueue],
    default_queue: str,
    sent_names: Iterable[str] = (),
) -> RoutingReport:
    """Compare the API's routes with what online workers consume, register and route themselves."""
    latest: dict[str, WorkerSnapshot] = {}
    for worker in workers:
        latest[worker.hostname] = worker  # a hostname given twice: the later snapshot wins
    ordered = sorted(latest.values(), key=lambda worker: worker.hostname)
    online = [worker for worker in ordered if worker.online]
    offline = [worker for worker in ordered if not worker.online]
    sent = frozenset(sent_names)

    groups = _Groups(online)
    compared = set(api_routes).union(sent, groups.registrars)
    fallback = ApiRoute(default_queue, None, "default")
    resolved = {name: api_routes.get(name, fallback) for name in sorted(compared)}
    groups.index_routes(
        {name: route.queue for name, route in resolved.items() if route.source == "route"}, compared
    )
    routed: dict[str, list[str]] = {}
    tasks: list[TaskRouting] = []
    for name, route in resolved.items():
        routed.setdefault(route.queue, []).append(name)  # names are sorted, so each list is too
        tasks.append(_task_routing(name, route, groups, name in sent))

    depths: dict[str, int | None] = {}
    for found in broker_queues:
        # A repeated name keeps a known depth over an unknown one.
        if found.depth is not None or found.name not in depths:
            depths[found.name] = found.depth
    offline_by_queue: dict[str, list[str]] = {}
    for worker in offline:
        for queue in worker.queues:
            offline_by_queue.setdefault(queue, []).append(worker.hostname)
    queue_names = sorted({default_queue}.union(routed, groups.consumers, depths))
    queues = tuple(
        _queue_routing(
            queue,
            depths.get(queue),
            groups.consumers.get(queue, ()),
            tuple(routed.get(queue, ())),
            queue == default_queue,
            tuple(offline_by_queue.get(queue, ())),
        )
        for queue in queue_names
    )
    return RoutingReport(tuple(tasks), queues, default_queue, tuple(worker.hostname for worker in offline))


def _worker_routes(name: str, api_queue: str, groups: _Groups) -> tuple[dict[str, int], dict[str, list[str]]]:
    """Per queue, how many online workers route `name` there; and the hosts that disagree with the API."""
    counts: dict[str, int] = {}
    base = groups.baseline.get(name)
    if base is not None and groups.declarers:
        counts[base] = groups.declarers
    drifting: dict[str, list[str]] = {}
    for index, queue in groups.exceptions.get(name, ()):
        hosts = groups.table_hosts[index]
        if base is not None:
            counts[base] -= len(hosts)  # these workers do not give it the baseline queue
        if queue is not None:
            counts[queue] = counts.get(queue, 0) + len(hosts)
            if queue != api_queue:
                drifting.setdefault(queue, []).extend(hosts)
    return {queue: count for queue, count in counts.items() if count > 0}, drifting


def _task_routing(name: str, route: ApiRoute, groups: _Groups, sent: bool) -> TaskRouting:
    """Compute one task's row: consumers, registrars, the workers' own routes and the problems."""
    queue = route.queue
    consumers = groups.consumers.get(queue, ())
    registrar_groups = groups.registrars.get(name, [])
    registered_on = (
        _merged(groups.group_hosts[group] for group in registrar_groups) if registrar_groups else ()
    )
    counts, drifting_hosts = _worker_routes(name, queue, groups)
    # The majority view; a tie goes to the first queue by name so the row is stable between polls.
    worker_route = min(counts, key=lambda q: (-counts[q], q)) if counts else None
    drifting = tuple((q, tuple(sorted(hosts))) for q, hosts in sorted(drifting_hosts.items()))

    problems: list[Problem] = []
    if not registered_on:
        problems.append(
            Problem(
                "unregistered",
                f"No online worker registers {name!r}: a worker that receives it discards it "
                "as unregistered (a typo in the name, or the worker code is not deployed).",
            )
        )
    if not consumers:
        problems.append(
            Problem(
                "orphaned",
                f"No online worker consumes queue {queue!r}, so tasks routed there wait forever.",
            )
        )
    elif registered_on and groups.queue_groups[queue].isdisjoint(registrar_groups):
        problems.append(
            Problem(
                "wrong_queue",
                f"Queue {queue!r} is consumed by {hosts_phrase(consumers)}, which do not register {name!r} "
                f"and would discard it; it is registered on {hosts_phrase(registered_on)}.",
            )
        )
    if drifting:
        elsewhere = "; ".join(f"{q!r} on {hosts_phrase(hosts)}" for q, hosts in drifting)
        problems.append(
            Problem(
                "drift",
                f"The API routes {name!r} to {queue!r}, but the workers' own task_routes "
                f"send it to {elsewhere}.",
            )
        )
    return TaskRouting(
        task=name,
        api_queue=queue,
        api_pattern=route.pattern,
        api_source=route.source,
        worker_route=worker_route,
        worker_routes=tuple(sorted(counts.items())),
        drifting=drifting,
        consumers=consumers,
        registered_on=registered_on,
        problems=tuple(problems),
        sent=sent,
    )


def _queue_routing(
    name: str,
    depth: int | None,
    consumers: tuple[str, ...],
    routed_tasks: tuple[str, ...],
    is_default: bool,
    offline_consumers: tuple[str, ...],
) -> QueueRouting:
    """Compute one queue's row: status and the note the UI shows."""
    status: QueueStatus = "ok"
    note: str | None = None
    routed = bool(routed_tasks) or is_default
    gone = f" (offline: {hosts_phrase(offline_consumers)})" if offline_consumers else ""
    if not consumers and depth is not None and depth > 0:
        status = "orphaned"
        note = f"{depth} message(s) waiting and no online worker consumes {name!r}{gone}."
    elif consumers and not routed:
        status = "unrouted"
        note = f"Consumed by {hosts_phrase(consumers)}, but the API routes nothing here."
    elif not consumers and routed:
        note = f"Routed here but no consumer yet{gone}."
    elif not consumers:
        note = f"Nothing routes here and no online worker consumes it{gone}."
    return QueueRouting(
        name=name,
        depth=depth,
        consumers=consumers,
        routed_tasks=routed_tasks,
        status=status,
        is_default=is_default,
        offline_consumers=offline_consumers,
        note=note,
    )
