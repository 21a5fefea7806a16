"""What the live pages show, shared by the page handlers and the websocket pushes (one renderer per element).

Each live element has a stable id and one partial template; the websocket sends the same partials the page
rendered, and htmx's ws extension swaps them in by id. Task data is untrusted: the templates autoescape it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from flask import current_app, g, render_template, request, url_for
from markupsafe import Markup

from ..exceptions import BrokerUnavailable
from ..model.catalog import task_name_problem
from ..model.notify import SILENCE_CHOICES, AlertMark
from ..model.search import MAX_QUERY_CHARS, SearchError, TaskQuery, fold_filters, parse_query
from ..model.secrets import mask_text
from ..model.series import polyline
from ..model.state import DEFAULT_SORT, EVENT_STATES, SORT_KEYS, TaskView
from ..services.client import BROKER_ERRORS
from ..services.container import Services
from ..services.history import HistoryUnavailable
from ..services.inspection import NoReply, WorkerRefused
from .audit import record_action
from .query import MAX_FILTER_CHARS, MAX_OFFSET, QueryError, int_arg, page_query, text_args

PAGE_SIZE = 50
FILTER_KEYS = ("state", "name", "queue", "worker")
_UNAVAILABLE: tuple[type[BaseException], ...] = (BrokerUnavailable, *BROKER_ERRORS)
_UNSAFE_ID_CHAR = re.compile(r"[^A-Za-z0-9-]")  # "_" too, so the escaping is one-to-one


def dom_id(prefix: str, key: str) -> str:
    """A selector-safe element id for an arbitrary key (task ids and hostnames may hold '.', ':' or '@')."""
    return prefix + _UNSAFE_ID_CHAR.sub(lambda m: f"_{ord(m.group()):x}_", key)


class FilterError(QueryError):
    """A filter or paging parameter that cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class TaskFilters:
    """The tasks page's filters and page, from the query string."""

    state: str | None = None
    name: str | None = None
    queue: str | None = None
    worker: str | None = None
    limit: int = PAGE_SIZE
    offset: int = 0
    sort: str = DEFAULT_SORT  # a SORT_KEYS key, "-" first for descending
    q: str | None = None  # a search (model/search.py), over history when it is kept, else over memory
    search: TaskQuery | None = field(default=None, compare=False)  # `q` with the filters above folded in

    @classmethod
    def from_args(
        cls, args: Mapping[str, str], *, max_limit: int = 1000, default_limit: int = PAGE_SIZE,
        now: float | None = None,
    ) -> TaskFilters:
        """Parse and check query parameters (raises FilterError with a message for the user)."""
        values = text_args(args, FILTER_KEYS, FilterError, MAX_FILTER_CHARS)
        q = text_args(args, ("q",), FilterError, MAX_QUERY_CHARS)["q"]
        state = values["state"]
        if state is not None:
            state = state.upper()
            if state not in EVENT_STATES:
                raise FilterError(f"state: must be one of {', '.join(EVENT_STATES)}")
        limit = int_arg(args, "limit", default_limit, 1, max_limit, FilterError)
        offset = int_arg(args, "offset", 0, 0, MAX_OFFSET, FilterError)
        sort = (args.get("sort") or DEFAULT_SORT).strip()[:16]
        if sort.removeprefix("-") not in SORT_KEYS:
            raise FilterError(f"sort: must be one of {', '.join(SORT_KEYS)}, with - first for descending")
        search = None
        if q is not None:
            try:
                search = parse_query(fold_filters(q, state, values["name"], values["queue"], values["worker"]),
                                     time.time() if now is None else now)
            except SearchError as exc:
                raise FilterError(f"search: {exc}") from None
        return cls(state, values["name"], values["queue"], values["worker"], limit, offset, sort, q, search)

    @property
    def active(self) -> bool:
        """True when any filter (not paging) is set."""
        return any(getattr(self, key) for key in (*FILTER_KEYS, "q"))

    @property
    def sorted(self) -> bool:
        """True when the list is in another order than newest first."""
        return self.sort != DEFAULT_SORT

    def query(self, **changes: object) -> str:
        """The query string for these filters with some values changed (for links and the websocket URL)."""
        filters: dict[str, object] = {key: getattr(self, key) for key in (*FILTER_KEYS, "q")}
        if self.sorted:
            filters["sort"] = self.sort
        return page_query(filters, self.limit, self.offset, PAGE_SIZE, changes)

    def sort_link(self, key: str) -> str:
        """The query string that sorts by `key`: descending first (newest, longest, Z to A), then ascending."""
        toggled = key if self.sort == f"-{key}" else f"-{key}"
        return self.query(sort=None if toggled == DEFAULT_SORT else toggled, offset=0)

    def aria_sort(self, key: str) -> str:
        """The column's aria-sort value."""
        if self.sort.removeprefix("-") != key:
            return "none"
        return "descending" if self.sort.startswith("-") else "ascending"


@dataclass(frozen=True)
class TablePage:
    """What the tasks table shows: a page, the total matching, and whether that total is a lower bound."""

    tasks: list[TaskView]
    total: int
    capped: bool = False
    source: str = "memory"  # "memory" or "history"
    problem: str | None = None  # why history could not answer


def task_page(svc: Services, filters: TaskFilters) -> TablePage:
    """The tasks the table shows: a search goes to history when it is kept (all tasks ever stored), else to
    memory; plain filters read memory."""
    if filters.search is not None:
        if svc.history is not None:  # HistoryUnavailable goes up: the API answers 503, the page says so
            found = svc.history.search(filters.search, filters.sort, filters.limit, filters.offset)
            return TablePage(found.tasks, found.total, found.capped, "history")
        query = filters.search
        tasks, total = svc.state.search(lambda task, seen: query.matches(task, seen), filters.limit, filters.offset,
                                        filters.sort, needs_time=query.needs_time)
        return TablePage(tasks, total)
    tasks, total = svc.monitor.state.tasks(filters.state, filters.name, filters.queue, filters.worker,
                                          filters.limit, filters.offset, filters.sort)
    return TablePage(tasks, total)


def status_fragment(svc: Services) -> str:
    """The connection indicator (#conn-status)."""
    monitor = svc.monitor
    history = svc.history.status() if svc.history is not None else None
    return render_template("partials/conn_status.html", stream=monitor.status, gaps=monitor.gaps,
                           gaps_total=monitor.gaps_total, history=history)


def workers_fragment(svc: Services) -> str:
    """The workers panel (#workers-panel)."""
    return render_template("partials/workers_panel.html", workers=svc.monitor.state.workers(), now=svc.monitor.clock())


def task_table_fragment(svc: Services, filters: TaskFilters) -> tuple[str, list[TaskView]]:
    """The tasks table (#task-table) and the tasks it shows.

    Rows come from the app's render cache when any page or socket already rendered that snapshot of the task:
    a table re-sent to many viewers as tasks stream in renders each row once.
    """
    try:
        page = task_page(svc, filters)
    except HistoryUnavailable as exc:  # the page stays up and says why the search has no answer now
        page = TablePage([], 0, source="history", problem=str(exc))
    # Our own template's output: everything from the task was escaped there.
    rows = [Markup(svc.rendered.render(row_kind(oob=False), task, _inline_row)) for task in page.tasks]
    html = render_template("partials/task_table.html", tasks=page.tasks, rows=rows, total=page.total,
                           capped=page.capped, source=page.source, problem=page.problem, filters=filters,
                           counts=svc.monitor.state.counts())
    return html, page.tasks


def task_counts_fragment(svc: Services) -> str:
    """The unfiltered tasks page's counts (#task-counts), as an out-of-band swap: sent with changed rows."""
    counts = svc.state.counts()
    return render_template("partials/task_counts.html", total=counts.tasks, counts=counts, filters=TaskFilters(),
                           oob=True)


def task_row_fragment(task: TaskView) -> str:
    """One row of the tasks table, swapped by its id."""
    return _row(task, oob=True)


def _inline_row(task: TaskView) -> str:
    return _row(task, oob=False)


def _row(task: TaskView, *, oob: bool) -> str:
    """The row template rendered straight from Jinja: it reads only what it is given (its links through `link`),
    so Flask's per-render context processors and signals, a third of a row's cost, are skipped. A table of 50 rows
    new since the last request is rendered whole while events stream in."""
    template = current_app.jinja_env.get_template("partials/task_row.html")
    return template.render(task=task, dom_id=dom_id, oob=oob, link=_row_links())


_LINK_MARK = "0"  # built into each link once per request, then replaced by the quoted task id
_PATH_SAFE = "!$&'()*+,/:;=@"  # what werkzeug's url_for leaves unquoted in a path part


def _row_links() -> Callable[[str, str], str]:
    """`link(endpoint, task_id)`: url_for's answer for the row's links, each endpoint built once per request
    (url_for was a quarter of a row's cost, four times a row)."""
    built: dict[str, tuple[str, str]] = g.setdefault("_row_links", {})

    def link(endpoint: str, task_id: str) -> str:
        parts = built.get(endpoint)
        if parts is None:
            head, _, tail = url_for(endpoint, task_id=_LINK_MARK).rpartition(f"/{_LINK_MARK}")
            parts = built[endpoint] = (head + "/", tail)
        return parts[0] + quote(task_id, safe=_PATH_SAFE) + parts[1]

    return link


def row_kind(*, oob: bool) -> str:
    """The render cache's kind for a task row: with the path prefix, since the row's link is url_for's and a
    proxy's X-Forwarded-Prefix moves it."""
    return f"row{'-oob' if oob else ''}:{request.script_root}"


FINISHED_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED", "REJECTED"})


def task_family_fragment(svc: Services, task_id: str) -> tuple[str, frozenset[str]]:
    """The task's workflow (#task-family): its root's tree, live; and the ids it shows (to know when to redraw)."""
    family = svc.state.family(task_id)
    ids = frozenset(member.task.id for member in family.members) if family is not None else frozenset()
    return render_template("partials/task_family.html", family=family, task_id=task_id), ids


def find_task(svc: Services, task_id: str) -> TaskView | None:
    """A task from memory, else from history (None when neither has it, or history cannot be read)."""
    task = svc.state.task(task_id)
    if task is None and svc.history is not None:
        try:
            task = svc.history.task(task_id)
        except HistoryUnavailable:
            return None
    return task


def task_detail_fragment(svc: Services, task_id: str, *, live: bool = False) -> str:
    """The task page's live part (#task-detail). Pushed `live` when the task has finished, it carries a loader
    that reads the result backend's panel again, so the panel never contradicts the state above it."""
    task = find_task(svc, task_id)
    reload_backend = live and task is not None and task.state in FINISHED_STATES
    return render_template("partials/task_detail.html", task=task, task_id=task_id, reload_backend=reload_backend)


def alerts_of(svc: Services) -> list[Any]:
    """Active alerts."""
    return svc.routing.alerts()


def alert_marks(svc: Services, alerts: list[Any]) -> dict[str, AlertMark]:
    """Who acknowledged or silenced each of `alerts`, by key."""
    return {alert.key: svc.marks.mark(alert) for alert in alerts}


def banner_context(svc: Services) -> dict[str, Any]:
    """What the banner shows: the active alerts, silenced ones last, with their marks."""
    alerts = alerts_of(svc)
    marks = alert_marks(svc, alerts)
    alerts.sort(key=lambda alert: marks[alert.key].silenced)
    return {"alerts": alerts, "alert_marks": marks, "silence_choices": SILENCE_CHOICES,
            "silenced_count": sum(mark.silenced for mark in marks.values())}


def alert_banner_fragment(svc: Services) -> str:
    """The banner on every page (#alert-banner)."""
    return render_template("partials/alert_banner.html", **banner_context(svc))


def alerts_panel_fragment(svc: Services) -> str:
    """The alerts panel of the routing page (#alerts-panel), with the add-consumer fix."""
    routing = svc.routing
    alerts = alerts_of(svc)
    return render_template(
        "partials/alerts_panel.html", alerts=alerts, dom_id=dom_id,
        grace=routing.book.grace, online_workers=routing.online_workers(),
        alert_marks=alert_marks(svc, alerts), silence_choices=SILENCE_CHOICES,
    )


def webhook_status_fragment(svc: Services) -> str:
    """The webhooks' delivery status on the alerts page (#webhook-status)."""
    return render_template("partials/webhook_status.html", lanes=svc.notifier.lanes,
                           failing=svc.notifier.failing, suppressed=svc.notifier.suppressed,
                           shared=svc.marks.shared)


ALERT_HISTORY_SHOWN = 50


def alert_history_fragment(svc: Services) -> str:
    """The latest alert changes, newest first (#alert-history)."""
    changes, _ = svc.routing.changes_since(0)
    return render_template("partials/alert_history.html", changes=list(reversed(changes))[:ALERT_HISTORY_SHOWN])


def routing_fragment(svc: Services) -> str:
    """The routing tables (#routing)."""
    routing = svc.routing
    return render_template(
        "partials/routing_tables.html",
        report=routing.report,
        sparklines=_sparklines(svc),
        inspected_at=routing.inspected_at,
        broker_error=routing.broker_error,
        inspect_error=routing.inspect_error,
        interval=svc.config.monitor.inspect_interval,
    )


def _sparklines(svc: Services) -> dict[str, str]:
    """Each queue's depth over the last hour as SVG polyline points (empty without history)."""
    if svc.history is None or svc.routing.report is None:
        return {}
    try:
        stats = svc.history.stats("hour")
    except HistoryUnavailable:
        return {}
    return {part["queue"]: polyline([point["depth"] for point in part["depth"]], 120, 24)
            for part in stats["queues"] if any(point["depth"] for point in part["depth"])}


def consumer_fix(svc: Services, queue: str, worker: str) -> tuple[bool, str, int]:
    """Run control.add_consumer for (queue, worker) after checking both; (ok, message, HTTP status)."""
    ok, message, status = _consumer_fix(svc, queue, worker)
    record_action("queue.add_consumer", queue[:255], {"worker": worker[:255]},
                  "done" if ok else "refused" if status == 400 else "failed",
                  None if ok else message)
    return ok, message, status


def _consumer_fix(svc: Services, queue: str, worker: str) -> tuple[bool, str, int]:
    if not queue or task_name_problem(queue) or len(queue) > 255:
        return False, "queue: give the name of a queue", 400
    if worker not in svc.routing.online_workers():
        return False, f"worker {worker[:255]!r} is not online; choose one of the online workers", 400
    try:
        answer = svc.routing.inspector.add_consumer(queue, worker)
    except NoReply as exc:
        return False, str(exc), 504
    except WorkerRefused as exc:
        return False, mask_text(f"{worker} refused: {exc}"), 409
    except _UNAVAILABLE as exc:
        return False, mask_text(f"the broker did not take the command: {exc}"), 503
    svc.monitor.kick()  # re-inspect now: the alert clears once the queue has a consumer and drains
    return True, f"{worker}: {answer}", 200
