"""Pages and their htmx fragments: the dispatch forms, the route preview, the live tasks, task and workers pages."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, render_template, request, url_for
from markupsafe import Markup
from werkzeug.exceptions import NotFound

from ..exceptions import BrokerUnavailable, DispatchRefused, RoutingError
from ..model.catalog import TaskSpec, task_name_problem
from ..model.dispatch import (
    FORM_OPTION_PREFIX,
    FORM_PARAM_PREFIX,
    OPTION_NAMES,
    DispatchInvalid,
    DispatchOptions,
    parse_form,
)
from ..model.guard import Guard
from ..model.secrets import mask_text
from ..model.state import EVENT_STATES
from ..services.client import Resolution, SentTask
from ..services.container import Services
from . import views
from .audit import record_invalid, request_origin
from .context import now, services

bp = Blueprint("pages", __name__)


@bp.app_context_processor
def _connection() -> dict[str, Any]:
    """Every page shows the event stream's connection indicator."""
    svc = services()
    monitor = svc.monitor
    return {"stream": monitor.status, "gaps": monitor.gaps, "gaps_total": monitor.gaps_total,
            **views.banner_context(svc),
            # the indicator's "history degraded" note, in the page as served (the socket pushes it after)
            "history": svc.history.status() if svc.history is not None else None}


@bp.app_template_filter("clock")
def clock(timestamp: float | None) -> str:
    """A UTC wall-clock time with milliseconds, for timelines and heartbeats."""
    if timestamp is None:
        return "–"
    try:
        return datetime.fromtimestamp(float(timestamp), UTC).strftime("%H:%M:%S.%f")[:-3]
    except (OverflowError, OSError, ValueError):
        return "?"

@bp.app_template_filter("when")
def when(timestamp: float | None, precise: bool = False, age: bool = False) -> Markup:
    """A date and time, in UTC as served; the page's script shows it in local time when the viewer chose so and
    keeps its age ("3 s ago") current. `precise` adds milliseconds (timelines)."""
    if timestamp is None:
        return Markup("–")
    try:
        moment = datetime.fromtimestamp(float(timestamp), UTC)
    except (OverflowError, OSError, ValueError):
        return Markup("?")
    shown = moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if precise else moment.strftime("%Y-%m-%d %H:%M:%S")
    iso = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    # Every part is made here from a number (no text from the task), so an f-string is safe; Markup.format
    # took a third of a tasks-table row's rendering.
    flags = (' data-precise="1"' if precise else "") + (' data-age="1"' if age else "")
    return Markup(f'<time datetime="{iso}" data-epoch="{float(timestamp):.3f}"{flags}>{shown} UTC</time>')


RAW_FORM_ID = "dispatch-raw"
_FORM_ID_RE = re.compile(r"^dispatch-(raw|\d{1,4})$")
_TASK_ID_RE = re.compile(r"^[\w.:@-]{1,255}$")


@dataclass
class FormView:
    """Everything one dispatch form shows: its task, the entered values, errors, preview and outcome."""

    form_id: str
    spec: TaskSpec | None
    values: Mapping[str, str] = field(default_factory=dict)
    errors: Mapping[str, str] = field(default_factory=dict)
    resolution: Resolution | None = None
    route_error: str | None = None
    sent: SentTask | None = None
    failure: str | None = None
    guard: Guard | None = None
    refused: list[str] = field(default_factory=list)
    post_url: str | None = None  # "edit and send" posts elsewhere: a dispatch again of `original`
    original: str | None = None
    call: Any = None  # the original's KnownCall: exact, or only its events' repr

    @property
    def raw(self) -> bool:
        """True for the send-by-name form."""
        return self.spec is None

    def value(self, key: str, default: str = "") -> str:
        """The submitted text for a field, else `default`."""
        return self.values.get(key, default)

    @property
    def options_open(self) -> bool:
        """Show the options section unfolded when one of them was filled in or is wrong."""
        return any(key.startswith(FORM_OPTION_PREFIX) and (self.values.get(key) or key in self.errors)
                   for key in [*self.values, *self.errors])

    def general_errors(self) -> list[str]:
        """Errors that belong to no single field on this form."""
        shown = {"name", "args", "kwargs"} | {FORM_OPTION_PREFIX + k for k in OPTION_NAMES}
        shown |= {f"options.{k}" for k in OPTION_NAMES}
        if self.spec is not None:
            shown |= {FORM_PARAM_PREFIX + p.name for p in self.spec.params}
        return [f"{k}: {v}" if k else v for k, v in self.errors.items() if k not in shown]


def _preview(svc: Services, name: str, queue: str | None) -> tuple[Resolution | None, str | None]:
    """The route preview for a name (and optional queue override), or why there is none."""
    if task_name_problem(name):
        return None, None
    try:
        return svc.client.resolve(name, DispatchOptions(queue=queue or None)), None
    except RoutingError as exc:
        return None, mask_text(str(exc))


def _set_preview(svc: Services, view: FormView, name: str, queue: str | None) -> None:
    """Fill the form's route preview and the warnings the latest worker inspection gives for it."""
    view.resolution, view.route_error = _preview(svc, name, queue)
    view.guard = svc.routing.guard(name, view.resolution.queue) if view.resolution is not None else None


def _catalog_forms(svc: Services) -> list[FormView]:
    forms = []
    for index, spec in enumerate(svc.config.catalog):
        view = FormView(f"dispatch-{index}", spec)
        _set_preview(svc, view, spec.name, None)
        forms.append(view)
    return forms


def _form_for(svc: Services, form_id: str) -> FormView:
    """An empty form view for `form_id` as the client named it (validated, never trusted)."""
    match = _FORM_ID_RE.fullmatch(form_id)
    if match is None:
        return FormView(RAW_FORM_ID, None)
    if match.group(1) == "raw":
        return FormView(RAW_FORM_ID, None)
    index = int(match.group(1))
    tasks = svc.config.catalog.tasks
    if index >= len(tasks):
        return FormView(RAW_FORM_ID, None)
    return FormView(form_id, tasks[index])


def _is_htmx() -> bool:
    return request.headers.get("HX-Request") == "true"


@bp.get("/")
def index() -> str:
    """The dispatch page: one form per catalog task, plus send-by-name."""
    svc = services()
    return render_template(
        "pages/index.html",
        forms=_catalog_forms(svc),
        raw_form=FormView(RAW_FORM_ID, None),
        broker=svc.client.broker_display,
        config_source=svc.client.settings.origin,
    )


@bp.post("/dispatch")
def submit() -> tuple[str, int]:
    """Handle a dispatch form: the form again with inline errors (422), the outcome (200), or 503."""
    svc = services()
    form_data = {key: value for key, value in request.form.items()}
    view = _form_for(svc, form_data.get("form_id", ""))
    if view.spec is not None:
        form_data["name"] = view.spec.name
        form_data.pop("mode", None)
    else:
        form_data["mode"] = "raw"
    view.values = form_data
    queue_override = form_data.get(FORM_OPTION_PREFIX + "queue", "").strip()
    _set_preview(svc, view, form_data.get("name", "").strip(), queue_override)
    status = 200
    try:
        checked = parse_form(form_data, svc.config.catalog, now())
        view.sent = svc.dispatcher.dispatch(checked, request_origin())
        view.values = {"form_id": view.form_id, "name": form_data["name"]} if view.raw else {}
    except DispatchInvalid as exc:
        svc.stats.note_dispatch("invalid")
        record_invalid(form_data, exc)
        view.errors = _form_errors(exc.errors)
        status = 422
    except DispatchRefused as exc:
        view.refused = exc.warnings
        status = 409
    except RoutingError as exc:
        view.failure = mask_text(str(exc))
        status = 400
    except BrokerUnavailable as exc:
        view.failure = mask_text(str(exc))
        status = 503
    if _is_htmx():
        return render_template("partials/dispatch_form.html", form=view), status
    forms = _catalog_forms(svc)
    raw_form = FormView(RAW_FORM_ID, None)
    if view.raw:
        raw_form = view
    else:
        forms = [view if f.form_id == view.form_id else f for f in forms]
    page = render_template(
        "pages/index.html", forms=forms, raw_form=raw_form, broker=svc.client.broker_display,
        config_source=svc.client.settings.origin,
    )
    return page, status


def _form_errors(errors: Mapping[str, str]) -> dict[str, str]:
    """Map model error keys to the form's field names (kwargs.x -> arg.x, options.y -> opt.y)."""
    mapped: dict[str, str] = {}
    for key, message in errors.items():
        if key.startswith("kwargs."):
            mapped[FORM_PARAM_PREFIX + key.removeprefix("kwargs.")] = message
        elif key.startswith("options."):
            mapped[FORM_OPTION_PREFIX + key.removeprefix("options.")] = message
        else:
            mapped[key] = message
    return mapped


@bp.get("/dispatch/preview")
def preview() -> str:
    """The route preview fragment for the name and queue override a form holds right now."""
    svc = services()
    view = _form_for(svc, request.args.get("form_id", ""))
    name = view.spec.name if view.spec is not None else request.args.get("name", "").strip()
    queue = request.args.get(FORM_OPTION_PREFIX + "queue", "").strip()
    view.values = {"name": name}
    _set_preview(svc, view, name, queue)
    return render_template("partials/route_preview.html", form=view)


@bp.get("/tasks")
def tasks() -> tuple[str, int]:
    """The live tasks page: newest first, filtered by state, name, queue and worker, paginated."""
    svc = services()
    filter_error = None
    status = 200
    try:
        filters = views.TaskFilters.from_args(request.args, max_limit=500)
    except views.FilterError as exc:
        filters, filter_error, status = views.TaskFilters(), str(exc), 400
    table_html, _ = views.task_table_fragment(svc, filters)
    live_url = url_for("live.ui", view="tasks") + ("&" + filters.query() if filters.query() else "")
    return render_template(
        "pages/tasks.html", filters=filters, filter_error=filter_error, states=EVENT_STATES,
        table_html=Markup(table_html), workers_html=Markup(views.workers_fragment(svc)), live_url=live_url,
        history_on=svc.history is not None, typed_q=(request.args.get("q") or "")[:2000],
    ), status


@bp.get("/workers")
def workers() -> str:
    """The live workers panel."""
    svc = services()
    return render_template("pages/workers.html", workers_html=Markup(views.workers_fragment(svc)),
                           live_url=url_for("live.ui", view="workers"))


@bp.get("/tasks/<task_id>")
def task(task_id: str) -> tuple[str, int]:
    """One task, live from events, plus what the result backend knows (read again when the task finishes)."""
    if not _TASK_ID_RE.fullmatch(task_id):
        raise NotFound()
    svc = services()
    family_html, _ = views.task_family_fragment(svc, task_id)
    return render_template(
        "pages/task.html", task_id=task_id, backend_html=Markup(_backend_fragment(svc, task_id)),
        detail_html=Markup(views.task_detail_fragment(svc, task_id)), family_html=Markup(family_html),
        live_url=url_for("live.ui", view="task", id=task_id),
    ), 200


@bp.get("/tasks/<task_id>/backend")
def task_backend(task_id: str) -> str:
    """The result backend's panel alone (#task-backend): the live detail asks for it when the task finishes."""
    if not _TASK_ID_RE.fullmatch(task_id):
        raise NotFound()
    return _backend_fragment(services(), task_id)


def _backend_fragment(svc: Services, task_id: str) -> str:
    backend: dict[str, Any] | None = None
    backend_error = None
    try:
        backend = svc.client.result_state(task_id)
    except BrokerUnavailable as exc:
        backend_error = mask_text(str(exc))
    live = svc.state.task(task_id)
    return render_template("partials/task_backend.html", task_id=task_id, backend=backend, now=svc.monitor.clock(),
                           backend_error=backend_error, live_traceback=bool(live is not None and live.traceback))


@bp.get("/routing")
def routing() -> str:
    """API routing and worker routing side by side, with the alerts and their fixes."""
    svc = services()
    return render_template(
        "pages/routing.html", routing_html=Markup(views.routing_fragment(svc)),
        alerts_html=Markup(views.alerts_panel_fragment(svc)), config_source=svc.client.settings.origin,
        live_url=url_for("live.ui", view="routing"),
    )


@bp.get("/alerts")
def alerts() -> str:
    """Active alerts with their fixes, and the latest raises, updates and clears, live."""
    svc = services()
    return render_template("pages/alerts.html", alerts_html=Markup(views.alerts_panel_fragment(svc)),
                           history_html=Markup(views.alert_history_fragment(svc)),
                           webhooks_html=Markup(views.webhook_status_fragment(svc)),
                           live_url=url_for("live.ui", view="alerts"))


@bp.post("/routing/add-consumer")
def add_consumer() -> tuple[str, int]:
    """The one-click fix of an orphaned queue: a chosen online worker starts consuming it (confirmed)."""
    svc = services()
    queue = request.form.get("queue", "").strip()
    worker = request.form.get("worker", "").strip()
    at = svc.monitor.clock()
    if request.form.get("confirm") not in ("1", "on", "true"):
        return render_template("partials/fix_result.html", ok=False, message="Tick \"I confirm\" first.", queue=queue,
                               at=at), 422
    ok, message, status = views.consumer_fix(svc, queue, worker)
    return render_template("partials/fix_result.html", ok=ok, message=message, queue=queue, at=at), status
