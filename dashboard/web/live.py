"""Websockets: `/ws/ui` pushes htmx fragments to the pages, `/ws/events` streams JSON to tools.

Each connection is a LiveSession with its own Hub subscriber: a full snapshot first, then, at a bounded frame
rate, the current state of whatever changed since its last frame. A client that cannot keep up only delays
itself; if its pending changes overflow, it gets a fresh snapshot instead. Under `serve` one fan-out thread
drives every session of the process (dashboard/serving); under Flask's dev server each socket holds a thread.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed

from ..model.state import TaskView
from ..services.container import Services
from ..services.events.hub import Batch, Hub, Subscriber
from . import views
from .context import services

log = logging.getLogger(__name__)

bp = Blueprint("live", __name__)
_sock = Sock()

HANDOFF_KEY = "dashboard.websocket"  # a serving model that drives sockets itself puts its Handoff here
UI_FRAME_SECONDS = 0.2  # at most 5 page updates per second per client, however fast events arrive
JSON_FRAME_SECONDS = 0.05
IDLE_WAKE_SECONDS = 10.0  # how often an idle connection checks that its client is still there
SNAPSHOT_TASKS_DEFAULT = 100
SNAPSHOT_TASKS_MAX = 1000


@dataclass
class LiveSession:
    """What one websocket client is sent: a snapshot first (and after an overflow), then, at most once per
    `frame_seconds`, the messages for what changed. Built in the websocket's request (its query arguments
    captured); driven by whichever serving model holds the socket (the fan-out thread, or a dev-server thread)."""

    snapshot: Callable[[], list[str]]
    update: Callable[[Batch], list[str]]
    frame_seconds: float
    client: str = ""  # who holds it (user name, or address when anonymous): the per-client socket cap counts it
    # Set by open_session for a socket driven outside its request (the fan-out thread): the hub to follow and
    # the request context (the same app, request and identity) that rendering needs.
    hub: Hub | None = None
    context: Callable[[], AbstractContextManager[None]] = nullcontext
    _subscriber: Subscriber | None = None

    def open(self) -> None:
        """Start receiving changes (from now on: the snapshot that follows includes everything before)."""
        if self.hub is not None and self._subscriber is None:
            self._subscriber = self.hub.subscribe()

    @property
    def has_changes(self) -> bool:
        """True when something changed since the last frame (read without the subscriber's lock: a hint)."""
        subscriber = self._subscriber
        return subscriber is None or subscriber.closed or subscriber.has_changes

    def frame(self, first: bool) -> list[str] | None:
        """The next frame's messages: the snapshot first, then updates; None once the session was closed."""
        subscriber = self._subscriber
        with self.context():
            if first:
                return self.snapshot()
            if subscriber is None:
                return None
            batch = subscriber.take(0)
            if batch is None:
                return None
            if not batch:
                return []
            return self.snapshot() if batch.resync else self.update(batch)

    def close(self) -> None:
        """Stop receiving changes."""
        if self.hub is not None and self._subscriber is not None:
            self.hub.unsubscribe(self._subscriber)


def _pump(ws: Any, svc: Services, session: LiveSession) -> None:
    """Drive a session over a blocking websocket in this thread (Flask's dev server, through flask-sock)."""
    svc.ensure_started()
    subscriber: Subscriber = svc.monitor.hub.subscribe()
    try:
        _send_all(ws, session.snapshot())
        while True:
            batch = subscriber.take(IDLE_WAKE_SECONDS)
            if batch is None or not ws.connected:
                return
            if not batch:
                continue
            started = time.monotonic()
            _send_all(ws, session.snapshot() if batch.resync else session.update(batch))
            # Changes keep accumulating in the subscriber while we wait: that is the coalescing.
            rest = session.frame_seconds - (time.monotonic() - started)
            if rest > 0:
                time.sleep(rest)
    except (ConnectionClosed, OSError):
        return
    finally:
        svc.monitor.hub.unsubscribe(subscriber)


def _send_all(ws: Any, messages: list[str]) -> None:
    for message in messages:
        if message:
            ws.send(message)


# -- /ws/ui: htmx fragments ----------------------------------------------------------------------------------


def _status_html(svc: Services) -> str:
    """What every page shows: the connection indicator and the alert banner."""
    return views.status_fragment(svc) + views.alert_banner_fragment(svc)


def _chrome(svc: Services, batch: Batch) -> str:
    changed = batch.get("status") or batch.get("gap") or batch.get("alert")
    return _status_html(svc) if changed else ""


def _tasks_view(svc: Services, args: Mapping[str, str]) -> LiveSession:
    try:
        filters = views.TaskFilters.from_args(args)
    except views.FilterError:
        filters = views.TaskFilters()
    shown: set[str] = set()

    def snapshot() -> list[str]:
        return [_status_html(svc) + views.workers_fragment(svc) + _table(svc, filters, shown)]

    return LiveSession(snapshot, lambda batch: tasks_update(svc, filters, shown, batch, _chrome(svc, batch)),
                       UI_FRAME_SECONDS)


def _task_view(svc: Services, args: Mapping[str, str]) -> LiveSession:
    task_id = args.get("id", "")[:255]
    shown: list[frozenset[str]] = [frozenset()]  # the workflow tree's members, as last sent

    def family() -> str:
        html, shown[0] = views.task_family_fragment(svc, task_id)
        return html

    def snapshot() -> list[str]:
        return [_status_html(svc) + views.task_detail_fragment(svc, task_id) + family()]

    def update(batch: Batch) -> list[str]:
        changed = batch.get("task")
        detail = views.task_detail_fragment(svc, task_id, live=True) if task_id in changed else ""
        # The tree is redrawn when one of its members changed, or a changed task hangs under one (a new child).
        members = shown[0] or frozenset({task_id})
        related = any(key in members for key in changed) or any(
            task.parent_id in members for task in svc.state.tasks_by_id(key for key in changed if key not in members))
        return [_chrome(svc, batch) + detail + (family() if related else "")]

    return LiveSession(snapshot, update, UI_FRAME_SECONDS)


def _workers_view(svc: Services, args: Mapping[str, str]) -> LiveSession:
    return LiveSession(lambda: [_status_html(svc) + views.workers_fragment(svc)],
                       lambda b: [_chrome(svc, b) + (views.workers_fragment(svc) if b.get("worker") else "")],
                       UI_FRAME_SECONDS)


def _routing_view(svc: Services, args: Mapping[str, str]) -> LiveSession:
    online_sent = [svc.routing.online_workers()]

    def update(batch: Batch) -> list[str]:
        parts = [_chrome(svc, batch)]
        # Re-send the panel (and its fix forms) only when what it shows changed: a heartbeat must not wipe a form
        # the user is filling in.
        online = svc.routing.online_workers()
        if batch.get("alert") or (batch.get("worker") and online != online_sent[0]):
            online_sent[0] = online
            parts.append(views.alerts_panel_fragment(svc))
        if batch.get("routing"):
            parts.append(views.routing_fragment(svc))
        return ["".join(parts)]

    return LiveSession(lambda: [_status_html(svc) + views.alerts_panel_fragment(svc) + views.routing_fragment(svc)],
                       update, UI_FRAME_SECONDS)


def _alerts_view(svc: Services, args: Mapping[str, str]) -> LiveSession:
    def update(batch: Batch) -> list[str]:
        changed = views.alerts_panel_fragment(svc) + views.alert_history_fragment(svc) if batch.get("alert") else ""
        hooks = views.webhook_status_fragment(svc) if batch.get("webhook") or batch.get("alert") else ""
        return [_chrome(svc, batch) + changed + hooks]

    return LiveSession(lambda: [_status_html(svc) + views.alerts_panel_fragment(svc)
                                + views.alert_history_fragment(svc) + views.webhook_status_fragment(svc)],
                       update, UI_FRAME_SECONDS)


def _status_view(svc: Services, args: Mapping[str, str]) -> LiveSession:
    return LiveSession(lambda: [_status_html(svc)], lambda b: [_chrome(svc, b)], UI_FRAME_SECONDS)


UI_VIEWS: dict[str, Callable[[Services, Mapping[str, str]], LiveSession]] = {
    "tasks": _tasks_view, "task": _task_view, "workers": _workers_view, "routing": _routing_view,
    "alerts": _alerts_view,
}


def ui_session(svc: Services, args: Mapping[str, str]) -> LiveSession:
    """Fragments for the page named by ?view= (tasks, task, workers, routing, else status), swapped in by id."""
    return UI_VIEWS.get(args.get("view", "status"), _status_view)(svc, args)


def tasks_update(svc: Services, filters: views.TaskFilters, shown: set[str], batch: Batch, chrome: str) -> list[str]:
    """The tasks page's messages for one frame: chrome, workers and table in one, changed rows in another.

    Rows travel alone because the browser parses each message as one fragment, and the HTML parser drops a
    <tr> that follows any other element: the row would never update, and its cells' links and badges would
    spill out as id-less elements (htmx:oobErrorNoTarget "#null").
    """
    parts: list[str] = [chrome]
    rows: list[str] = []
    if batch.get("worker"):
        parts.append(views.workers_fragment(svc))
    changed = batch.get("task")
    if changed and filters.search is not None and not _touches_search(svc, filters, shown, changed):
        changed = []  # nothing shown changed and nothing new matches: the search is not run again
    if changed:
        unseen = any(key not in shown for key in changed)
        if filters.active or filters.sorted or (unseen and filters.offset == 0):
            parts.append(_table(svc, filters, shown))
        else:
            # The rows change in place; the counts beside them change with them (a task that finished moves
            # from one state's count to another's).
            parts.append(views.task_counts_fragment(svc))
            rows += cached_tasks(svc, (key for key in changed if key in shown), views.row_kind(oob=True),
                                 views.task_row_fragment)
    return ["".join(parts), "".join(rows)]


def _touches_search(svc: Services, filters: views.TaskFilters, shown: set[str], changed: list[str]) -> bool:
    """Whether a changed task is on the page, or matches the search (a new match appears on the open page)."""
    if any(key in shown for key in changed):
        return True
    query = filters.search
    return query is not None and any(query.matches(task) for task in svc.state.tasks_by_id(changed))


def _table(svc: Services, filters: views.TaskFilters, shown: set[str]) -> str:
    table, tasks = views.task_table_fragment(svc, filters)
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


def status_message(svc: Services) -> dict[str, Any]:
    """A `"type": "status"` message: the event stream's connection and any gaps."""
    monitor = svc.monitor
    return {"type": "status", **monitor.status.to_dict(), "gaps_total": monitor.gaps_total,
            "gaps": [gap.to_dict() for gap in monitor.gaps[-5:]]}


def snapshot_message(svc: Services, task_limit: int) -> dict[str, Any]:
    """The first message on every connect (and after an overflow): everything the stream reports on."""
    tasks, total = svc.monitor.state.tasks(limit=task_limit)
    return {
        "type": "snapshot",
        "tasks": [task_message(task) for task in tasks],
        "tasks_total": total,
        "workers": [worker_message(worker) for worker in svc.monitor.state.workers()],
        "status": status_message(svc),
        "alerts": [{**alert.to_dict(), **svc.marks.mark(alert).to_dict()} for alert in views.alerts_of(svc)],
    }


def _dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, default=str, separators=(",", ":"))


def events_session(svc: Services, args: Mapping[str, str]) -> LiveSession:
    """JSON objects with a "type": a "snapshot" first, then "task", "worker", "status", "alert", "routing"."""
    try:
        limit = int(str(args.get("tasks", SNAPSHOT_TASKS_DEFAULT))[:12])
    except ValueError:
        limit = SNAPSHOT_TASKS_DEFAULT
    limit = max(0, min(limit, SNAPSHOT_TASKS_MAX))

    alerts_seen = [0]  # alert changes already reflected in what this client has

    def snapshot() -> list[str]:
        alerts_seen[0] = svc.routing.changes_total
        return [_dumps(snapshot_message(svc, limit))]

    def update(batch: Batch) -> list[str]:
        return list(_messages(svc, batch, alerts_seen))

    return LiveSession(snapshot, update, JSON_FRAME_SECONDS)


SESSIONS: dict[str, Callable[[Services, Mapping[str, str]], LiveSession]] = {
    "live.ui": ui_session,
    "live.events": events_session,
}


def open_session() -> LiveSession:
    """The session the current websocket request asks for (its endpoint and query arguments), able to render
    its frames later, from another thread, in a copy of this request's context."""
    endpoint = request.endpoint or ""
    identity = g.get("identity")
    svc = services()
    svc.ensure_started()
    session = SESSIONS[endpoint](svc, request.args)
    session.client = identity.name if identity is not None and identity.via != "open" else (request.remote_addr or "")
    session.hub = svc.monitor.hub
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    environ = {key: value for key, value in request.environ.items() if not key.startswith(("wsgi.input", "dashboard."))}
    environ["wsgi.input"] = io.BytesIO()

    @contextmanager
    def context() -> Iterator[None]:
        with app.request_context(environ):
            g.identity = identity
            yield

    session.context = context
    return session


def hand_off() -> Any:
    """Before a websocket request's view: when the server drives sockets itself (`serve`), give it this request's
    session (after the auth checks, which ran first) and answer 101, or 503 past its caps. Else go on to the
    flask-sock view (Flask's dev server)."""
    handoff = request.environ.get(HANDOFF_KEY)
    if handoff is None or request.endpoint not in SESSIONS:
        return None
    refusal = handoff.accept(open_session())
    if refusal is not None:
        response = jsonify(error=refusal)
        response.status_code = 503
        response.headers["Retry-After"] = "10"
        return response
    return Response(status=101)


def ui(ws: Any) -> None:
    """/ws/ui on Flask's dev server: this thread holds the socket."""
    _pump(ws, services(), open_session())


def events(ws: Any) -> None:
    """/ws/events on Flask's dev server: this thread holds the socket."""
    _pump(ws, services(), open_session())


# flask-sock's decorator is untyped: register the handlers by calling it, keeping their own signatures.
# Under `serve` (the default server) a websocket never reaches these: the server hands the socket to its
# fan-out thread right after the app's checks (see web/handoff.py and dashboard/serving).
_sock.route("/ws/ui", bp=bp)(ui)
_sock.route("/ws/events", bp=bp)(events)


def _messages(svc: Services, batch: Batch, alerts_seen: list[int]) -> Iterator[str]:
    """One frame's JSON messages, encoded."""
    state = svc.monitor.state
    if batch.get("status") or batch.get("gap"):
        yield _dumps(status_message(svc))
    for hostname in batch.get("worker"):
        worker = state.worker(hostname)
        if worker is not None:
            yield _dumps(worker_message(worker))
    yield from cached_tasks(svc, batch.get("task"), "json", lambda task: _dumps(task_message(task)))
    routing = svc.routing
    if batch.get("alert"):
        # Every change in order, from the history: the batch only says which keys changed, and a key raised and
        # cleared within one frame must still reach tools as both.
        changes, alerts_seen[0] = routing.changes_since(alerts_seen[0])
        for change in changes:
            yield _dumps({"type": "alert", "status": change.status, **change.alert.to_dict()})
    if batch.get("routing") and routing.report is not None:
        yield _dumps({"type": "routing", **routing.report.to_dict()})


def cached_tasks(svc: Services, task_ids: Iterable[str], kind: str, render: Callable[[TaskView], str]) -> list[str]:
    """`render(task)` for each retained task of `task_ids` (in that order), from the app's cache when another
    client already rendered that very snapshot: the versions under one lock, then only the missing snapshots."""
    wanted = list(task_ids)
    if not wanted:
        return []
    state, cache = svc.monitor.state, svc.rendered
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
