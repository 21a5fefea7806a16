"""Websockets: `/ws/ui` pushes htmx fragments to the pages, `/ws/events` streams JSON to tools.

Each connection gets its own Hub subscriber and runs in its own server thread: it sends a full snapshot first,
then, at a bounded frame rate, the current state of whatever changed since its last frame. A client that cannot
keep up only delays itself; if its pending changes overflow, it gets a fresh snapshot instead.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flask import Blueprint, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed

from ..model.state import TaskView
from ..services.hub import Batch, Subscriber
from . import views
from .runtime import Runtime, runtime

log = logging.getLogger(__name__)

bp = Blueprint("live", __name__)
_sock = Sock()

UI_FRAME_SECONDS = 0.2  # at most 5 page updates per second per client, however fast events arrive
JSON_FRAME_SECONDS = 0.05
IDLE_WAKE_SECONDS = 10.0  # how often an idle connection checks that its client is still there
SNAPSHOT_TASKS_DEFAULT = 100
SNAPSHOT_TASKS_MAX = 1000


class _Closed(Exception):
    pass


def _pump(ws: Any, rt: Runtime, snapshot: Callable[[], list[str]], update: Callable[[Batch], list[str]],
          frame_seconds: float) -> None:
    """Send a snapshot, then coalesced updates, until the client goes away."""
    rt.ensure_started()
    subscriber: Subscriber = rt.monitor.hub.subscribe()
    try:
        _send_all(ws, snapshot())
        while True:
            batch = subscriber.take(IDLE_WAKE_SECONDS)
            if batch is None or not ws.connected:
                return
            if not batch:
                continue
            started = time.monotonic()
            _send_all(ws, snapshot() if batch.resync else update(batch))
            # Changes keep accumulating in the subscriber while we wait: that is the coalescing.
            rest = frame_seconds - (time.monotonic() - started)
            if rest > 0:
                time.sleep(rest)
    except (ConnectionClosed, _Closed, OSError):
        return
    finally:
        rt.monitor.hub.unsubscribe(subscriber)


def _send_all(ws: Any, messages: list[str]) -> None:
    for message in messages:
        if message:
            ws.send(message)


# -- /ws/ui: htmx fragments ----------------------------------------------------------------------------------


def ui(ws: Any) -> None:
    """Fragments for the page named by ?view= (tasks, task, workers, status), swapped in by element id."""
    rt = runtime()
    view = request.args.get("view", "status")

    def status_html() -> str:
        # What every page shows: the connection indicator and the alert banner.
        return views.status_fragment(rt) + views.alert_banner_fragment(rt)

    def chrome(batch: Batch) -> str:
        changed = batch.get("status") or batch.get("gap") or batch.get("alert")
        return status_html() if changed else ""

    if view == "tasks":
        try:
            filters = views.TaskFilters.from_args(request.args)
        except views.FilterError:
            filters = views.TaskFilters()
        shown: set[str] = set()

        def snapshot() -> list[str]:
            return [status_html() + views.workers_fragment(rt) + _table(rt, filters, shown)]

        _pump(ws, rt, snapshot, lambda batch: tasks_update(rt, filters, shown, batch, chrome(batch)),
              UI_FRAME_SECONDS)
    elif view == "task":
        task_id = request.args.get("id", "")[:255]

        def task_snapshot() -> list[str]:
            return [status_html() + views.task_detail_fragment(rt, task_id)]

        def task_update(batch: Batch) -> list[str]:
            parts = [chrome(batch)]
            if task_id in batch.get("task"):
                parts.append(views.task_detail_fragment(rt, task_id))
            return ["".join(parts)]

        _pump(ws, rt, task_snapshot, task_update, UI_FRAME_SECONDS)
    elif view == "workers":
        _pump(ws, rt, lambda: [status_html() + views.workers_fragment(rt)],
              lambda b: [chrome(b) + (views.workers_fragment(rt) if b.get("worker") else "")],
              UI_FRAME_SECONDS)
    elif view == "routing":

        def routing_snapshot() -> list[str]:
            return [status_html() + views.alerts_panel_fragment(rt) + views.routing_fragment(rt)]

        online_sent: list[list[str]] = [rt.routing.online_workers() if rt.routing is not None else []]

        def routing_update(batch: Batch) -> list[str]:
            parts = [chrome(batch)]
            # Re-send the panel (and its fix forms) only when what it shows changed: a heartbeat must not wipe
            # a form the user is filling in.
            online = rt.routing.online_workers() if rt.routing is not None else []
            if batch.get("alert") or (batch.get("worker") and online != online_sent[0]):
                online_sent[0] = online
                parts.append(views.alerts_panel_fragment(rt))
            if batch.get("routing"):
                parts.append(views.routing_fragment(rt))
            return ["".join(parts)]

        _pump(ws, rt, routing_snapshot, routing_update, UI_FRAME_SECONDS)
    else:
        _pump(ws, rt, lambda: [status_html()], lambda b: [chrome(b)], UI_FRAME_SECONDS)


def tasks_update(rt: Runtime, filters: views.TaskFilters, shown: set[str], batch: Batch, chrome: str) -> list[str]:
    """The tasks page's messages for one frame: chrome, workers and table in one, changed rows in another.

    Rows travel alone because the browser parses each message as one fragment, and the HTML parser drops a
    <tr> that follows any other element: the row would never update, and its cells' links and badges would
    spill out as id-less elements (htmx:oobErrorNoTarget "#null").
    """
    parts: list[str] = [chrome]
    rows: list[str] = []
    if batch.get("worker"):
        parts.append(views.workers_fragment(rt))
    changed = batch.get("task")
    if changed:
        unseen = any(key not in shown for key in changed)
        if filters.active or (unseen and filters.offset == 0):
            parts.append(_table(rt, filters, shown))
        else:
            rows += cached_tasks(rt, (key for key in changed if key in shown), views.row_kind(oob=True),
                                 views.task_row_fragment)
    return ["".join(parts), "".join(rows)]


def _table(rt: Runtime, filters: views.TaskFilters, shown: set[str]) -> str:
    table, tasks = views.task_table_fragment(rt, filters)
    shown.clear()
    shown.update(task.id for task in tasks)
    return table


# -- /ws/events: JSON for tools ------------------------------------------------------------------------------


def task_message(task: Any) -> dict[str, Any]:
    """A `"type": "task"` message: the task as /api/tasks/<id> has it, plus the latest event's timestamp."""
    body = task.to_dict()
    stamps = [entry.timestamp for entry in task.timeline]
    return {"type": "task", **body, "timestamp": max(stamps) if stamps else None}


def worker_message(worker: Any) -> dict[str, Any]:
    """A `"type": "worker"` message."""
    return {"type": "worker", **worker.to_dict()}


def status_message(rt: Runtime) -> dict[str, Any]:
    """A `"type": "status"` message: the event stream's connection and any gaps."""
    monitor = rt.monitor
    return {"type": "status", **monitor.status.to_dict(), "gaps_total": monitor.gaps_total,
            "gaps": [gap.to_dict() for gap in monitor.gaps[-5:]]}


def snapshot_message(rt: Runtime, task_limit: int) -> dict[str, Any]:
    """The first message on every connect (and after an overflow): everything the stream reports on."""
    tasks, total = rt.monitor.state.tasks(limit=task_limit)
    return {
        "type": "snapshot",
        "tasks": [task_message(task) for task in tasks],
        "tasks_total": total,
        "workers": [worker_message(worker) for worker in rt.monitor.state.workers()],
        "status": status_message(rt),
        "alerts": [alert.to_dict() for alert in views.alerts_of(rt)],
    }


def _dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, default=str, separators=(",", ":"))


def events(ws: Any) -> None:
    """JSON objects with a "type": a "snapshot" first, then "task", "worker", "status", "alert", "routing"."""
    rt = runtime()
    try:
        limit = int(request.args.get("tasks", SNAPSHOT_TASKS_DEFAULT))
    except ValueError:
        limit = SNAPSHOT_TASKS_DEFAULT
    limit = max(0, min(limit, SNAPSHOT_TASKS_MAX))

    alerts_seen = [0]  # alert changes already reflected in what this client has

    def snapshot() -> list[str]:
        if rt.routing is not None:
            alerts_seen[0] = rt.routing.changes_total
        return [_dumps(snapshot_message(rt, limit))]

    def update(batch: Batch) -> list[str]:
        return list(_messages(rt, batch, alerts_seen))

    _pump(ws, rt, snapshot, update, JSON_FRAME_SECONDS)


# flask-sock's decorator is untyped: register the handlers by calling it, keeping their own signatures.
_sock.route("/ws/ui", bp=bp)(ui)
_sock.route("/ws/events", bp=bp)(events)


def _messages(rt: Runtime, batch: Batch, alerts_seen: list[int]) -> Iterator[str]:
    """One frame's JSON messages, encoded."""
    state = rt.monitor.state
    if batch.get("status") or batch.get("gap"):
        yield _dumps(status_message(rt))
    for hostname in batch.get("worker"):
        worker = state.worker(hostname)
        if worker is not None:
            yield _dumps(worker_message(worker))
    yield from cached_tasks(rt, batch.get("task"), "json", lambda task: _dumps(task_message(task)))
    routing = rt.routing
    if routing is not None:
        if batch.get("alert"):
            # Every change in order, from the history: the batch only says which keys changed, and a key
            # raised and cleared within one frame must still reach tools as both.
            changes, alerts_seen[0] = routing.changes_since(alerts_seen[0])
            for change in changes:
                yield _dumps({"type": "alert", "status": change.status, **change.alert.to_dict()})
        if batch.get("routing") and routing.report is not None:
            yield _dumps({"type": "routing", **routing.report.to_dict()})


def cached_tasks(rt: Runtime, task_ids: Iterable[str], kind: str, render: Callable[[TaskView], str]) -> list[str]:
    """`render(task)` for each retained task of `task_ids` (in that order), from the app's cache when another
    client already rendered that very snapshot: the versions under one lock, then only the missing snapshots."""
    wanted = list(task_ids)
    if not wanted:
        return []
    state, cache = rt.monitor.state, rt.rendered
    out: dict[str, str] = {}
    missing: list[str] = []
    for task_id, version in state.task_versions(wanted).items():
        found = cache.get((kind, task_id, version))
        if found is None:
            missing.append(task_id)
        else:
            out[task_id] = found
    for task in state.tasks_by_id(missing):
        out[task.id] = cache.render(kind, task, render)
    return [out[task_id] for task_id in wanted if task_id in out]
