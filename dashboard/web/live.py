"""Websockets: `/ws/ui` pushes htmx fragments to the pages, `/ws/events` streams JSON to tools.

Each connection is a LiveSession: a full snapshot first, then, at a bounded frame rate, the current state of
whatever changed since its last frame. Under `serve` one fan-out thread drives every socket of the process
(dashboard/serving) and sessions in the same `group` (same stream, same normalised arguments, same path prefix,
same role) share one Broadcast: one hub subscriber, one rendering per frame for all of them, the CSRF token of
operators' forms rendered as a placeholder that the fan-out replaces per client. A client that cannot keep up
skips frames and gets a fresh snapshot once it caught up. Under Flask's dev server each socket holds a thread and
its own subscriber.
"""

from __future__ import annotations

import io
import json
import logging
import secrets
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from flask import session as cookie_session
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
# What a group's frames carry where an operator's form holds its session's CSRF token (token_urlsafe: HTML
# escaping leaves it as it is); the fan-out puts each client's own token in its place.
CSRF_PLACEHOLDER = "csrf-placeholder-" + secrets.token_urlsafe(18)


def _nothing() -> None:
    pass


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
    # Sessions with equal groups are sent the same frames (the view's part: what it follows; open_session adds the
    # path prefix and the role). `joined` tells a group's session that clients were just sent a snapshot.
    group: Hashable = None
    joined: Callable[[], None] = _nothing
    secret: str = ""  # this client's CSRF token, which CSRF_PLACEHOLDER stands for in a group's frames
    make_broadcast: Callable[[], Broadcast] | None = None
    _subscriber: Subscriber | None = None

    def broadcast(self) -> Broadcast:
        """A Broadcast for this session's group (built for its first member)."""
        if self.make_broadcast is None:
            raise RuntimeError("this session was not opened for a serving loop")
        return self.make_broadcast()

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


class Broadcast:
    """One group's frames, rendered once for all its clients (dashboard/serving/fanout.py drives it).

    Two sessions of the group's view, both rendering in the group's context (the path prefix and role of its
    clients, CSRF_PLACEHOLDER as the CSRF token): `updates` follows the hub and renders the frames; `joiners`
    renders the snapshot a client joining (or catching up) is sent, without disturbing what `updates` remembers
    of what the group's clients show.
    """

    def __init__(self, updates: LiveSession, joiners: LiveSession) -> None:
        self.updates = updates
        self.joiners = joiners
        self.frame_seconds = updates.frame_seconds
        self.placeholder = CSRF_PLACEHOLDER

    def open(self) -> None:
        """Start receiving changes."""
        self.updates.open()

    @property
    def has_changes(self) -> bool:
        """True when something changed since the last frame."""
        return self.updates.has_changes

    def snapshot(self) -> list[str]:
        """What a client joining now is sent first."""
        with self.joiners.context():
            return self.joiners.snapshot()

    def joined(self) -> None:
        """Clients were just sent a snapshot: the next frame must suit them too."""
        self.updates.joined()

    def frame(self) -> list[str] | None:
        """The group's next frame (a snapshot after an overflow); None once closed."""
        return self.updates.frame(first=False)

    def close(self) -> None:
        """Stop receiving changes."""
        self.updates.close()


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
    # Clients that just joined show the table as it is now, the others as it was at the last frame: the next
    # change redraws it for all (else a page other than the first would get rows some clients do not have).
    redraw = [False]

    def snapshot() -> list[str]:
        redraw[0] = False
        return [_status_html(svc) + views.workers_fragment(svc) + _table(svc, filters, shown)]

    def update(batch: Batch) -> list[str]:
        messages = tasks_update(svc, filters, shown, batch, _chrome(svc, batch), redraw=redraw[0])
        if batch.get("task"):
            redraw[0] = False
        return messages

    def joined() -> None:
        redraw[0] = True

    search = filters.search
    group = ("tasks", filters.state, filters.name, filters.queue, filters.worker, filters.limit, filters.offset,
             filters.sort, filters.q, search.since if search else None, search.until if search else None)
    return LiveSession(snapshot, update, UI_FRAME_SECONDS, group=group, joined=joined)


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

    def joined() -> None:
        # A group's frames start without a snapshot of their own: the tree its clients were just sent.
        found = svc.state.family(task_id)
        shown[0] = frozenset(member.task.id for member in found.members) if found is not None else frozenset()

    return LiveSession(snapshot, update, UI_FRAME_SECONDS, group=("task", task_id), joined=joined)


def _workers_view(svc: Services, args: Mapping[str, str]) -> LiveSession:
    return LiveSession(lambda: [_status_html(svc) + views.workers_fragment(svc)],
                       lambda b: [_chrome(svc, b) + (views.workers_fragment(svc) if b.get("worker") else "")],
                       UI_FRAME_SECONDS, group=("workers",))


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
                       update, UI_FRAME_SECONDS, group=("routing",))


def _alerts_view(svc: Services, args: Mapping[str, str]) -> LiveSession:
    def update(batch: Batch) -> list[str]:
        changed = views.alerts_panel_fragment(svc) + views.alert_history_fragment(svc) if batch.get("alert") else ""
        hooks = views.webhook_status_fragment(svc) if batch.get("webhook") or batch.get("alert") else ""
        return [_chrome(svc, batch) + changed + hooks]

    return LiveSession(lambda: [_status_html(svc) + views.alerts_panel_fragment(svc)
                                + views.alert_history_fragment(svc) + views.webhook_status_fragment(svc)],
                       update, UI_FRAME_SECONDS, group=("alerts",))


def _status_view(svc: Services, args: Mapping[str, str]) -> LiveSession:
    return LiveSession(lambda: [_status_html(svc)], lambda b: [_chrome(svc, b)], UI_FRAME_SECONDS,
                       group=("status",))


UI_VIEWS: dict[str, Callable[[Services, Mapping[str, str]], LiveSession]] = {
    "tasks": _tasks_view, "task": _task_view, "workers": _workers_view, "routing": _routing_view,
    "alerts": _alerts_view,
}


def ui_session(svc: Services, args: Mapping[str, str]) -> LiveSession:
    """Fragments for the page named by ?view= (tasks, task, workers, routing, else status), swapped in by id."""
    return UI_VIEWS.get(args.get("view", "status"), _status_view)(svc, args)


def tasks_update(svc: Services, filters: views.TaskFilters, shown: set[str], batch: Batch, chrome: str, *,
                 redraw: bool = False) -> list[str]:
    """The tasks page's messages for one frame: chrome, workers and table in one, changed rows in another
    (`redraw`: the whole table when a task changed, whatever it was).

    Rows travel alone because the browser parses each message as one fragment, and the HTML parser drops a
    <tr> that follows any other element: the row would never update, and its cells' links and badges would
    spill out as id-less elements (htmx:oobErrorNoTarget "#null").
    """
    parts: list[str] = [chrome]
    rows: list[str] = []
    if batch.get("worker"):
        parts.append(views.workers_fragment(svc))
    changed = batch.get("task")
    if changed and not redraw and filters.search is not None and not _touches_search(svc, filters, shown, changed):
        changed = []  # nothing shown changed and nothing new matches: the search is not run again
    if changed:
        unseen = any(key not in shown for key in changed)
        if redraw or filters.active or filters.sorted or (unseen and filters.offset == 0):
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

    # Alert changes already reflected in what the client has (a group's frames start from the group's start:
    # its clients' snapshots came after).
    alerts_seen = [svc.routing.changes_total]

    def snapshot() -> list[str]:
        alerts_seen[0] = svc.routing.changes_total
        return [_dumps(snapshot_message(svc, limit))]

    def update(batch: Batch) -> list[str]:
        return list(_messages(svc, batch, alerts_seen))

    return LiveSession(snapshot, update, JSON_FRAME_SECONDS, group=("events", limit))


SESSIONS: dict[str, Callable[[Services, Mapping[str, str]], LiveSession]] = {
    "live.ui": ui_session,
    "live.events": events_session,
}


def open_session() -> LiveSession:
    """The session the current websocket request asks for (its endpoint and query arguments), able to render
    its frames later, from another thread, in a copy of this request's context; and the Broadcast its group
    shares under `serve`."""
    endpoint = request.endpoint or ""
    identity = g.get("identity")
    svc = services()
    svc.ensure_started()
    make = SESSIONS[endpoint]
    args = dict(request.args.items())
    session = make(svc, args)
    session.client = identity.name if identity is not None and identity.via != "open" else (request.remote_addr or "")
    session.hub = svc.monitor.hub
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    environ = {key: value for key, value in request.environ.items()
               if not key.startswith(("wsgi.input", "dashboard.", "werkzeug."))}
    environ["wsgi.input"] = io.BytesIO()

    @contextmanager
    def context() -> Iterator[None]:
        with app.request_context(environ):
            g.identity = identity
            yield

    session.context = context
    # What a page's fragments depend on besides the view: url_for's prefix, and the role (an operator's buttons).
    # The JSON stream has neither.
    role = identity.role if identity is not None else None
    rendered_for = (request.script_root, role) if endpoint == "live.ui" else ()
    session.group = (endpoint, session.group if session.group is not None else object(), *rendered_for)
    token = cookie_session.get("csrf")  # without one, a page's forms get a token no request will carry, as before
    session.secret = token if isinstance(token, str) else secrets.token_urlsafe(32)
    # The group's renderers know nobody's cookie or credentials: only the role, the prefix and the placeholder.
    shared_environ = {key: value for key, value in environ.items() if key not in ("HTTP_COOKIE", "HTTP_AUTHORIZATION")}

    @contextmanager
    def shared_context() -> Iterator[None]:
        with app.request_context(shared_environ):
            g.identity = identity
            cookie_session["csrf"] = CSRF_PLACEHOLDER
            yield

    def make_broadcast() -> Broadcast:
        with shared_context():
            updates, joiners = make(svc, args), make(svc, args)
        updates.hub, updates.context, joiners.context = svc.monitor.hub, shared_context, shared_context
        return Broadcast(updates, joiners)

    session.make_broadcast = make_broadcast
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
