"""The actions in the pages: the task page's action panel, the tasks list's row buttons and bulk panel, the worker
page with its commands. htmx forms; each answer is a fragment saying what happened (or why not)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, make_response, render_template, request, url_for
from markupsafe import Markup
from werkzeug.exceptions import NotFound

from ..model.actions import (
    BULK_KINDS,
    BULK_SAMPLE,
    SIGNALS,
    ActionError,
    form_text,
    parse_autoscale,
    parse_count,
    parse_queue,
    parse_rate_limit,
    parse_revoke,
    parse_time_limit,
)
from ..model.dispatch import FORM_OPTION_PREFIX, DispatchInvalid, parse_form
from .actions import _UNAVAILABLE, Failure, _unavailable_text, body_object, bulk_request, perform, queue_url
from .audit import record_action, request_origin
from .context import now, services
from .pages import _TASK_ID_RE, RAW_FORM_ID, FormView, _catalog_forms, _form_errors, _set_preview

bp = Blueprint("act", __name__)

TASK_ACTED = "task-acted"  # the htmx event after which the task's action panel reloads
WORKER_ACTED = "worker-acted"


def _task_id(task_id: str) -> str:
    if not _TASK_ID_RE.fullmatch(task_id):
        raise NotFound()
    return task_id


def _result(ok: bool, message: str, status: int, *, event: str | None = None, **links: Any) -> Response:
    response = make_response(render_template("partials/action_result.html", ok=ok, message=message,
                                             at=services().monitor.clock(), **links), status)
    if event is not None and ok:
        response.headers["HX-Trigger"] = event
    return response


def _failed(failure: Failure, **links: Any) -> Response:
    return _result(False, failure.message, failure.status, **links)


# -- the task page -----------------------------------------------------------------------------------------------


@bp.app_template_global()
def task_actions_panel(task_id: str) -> Markup:
    """The task page's action panel, rendered into the page itself (ready as soon as the page is)."""
    return Markup(task_panel(task_id))  # our own template's output: everything from the task was escaped there


@bp.get("/tasks/<task_id>/actions")
def task_panel(task_id: str) -> str:
    """The task page's action panel (#task-actions): revoke, terminate, dispatch again, edit and send, links."""
    svc = services()
    tasks = svc.actions.tasks
    task = svc.state.task(_task_id(task_id))
    unheard, terminate_why = tasks.revoke_problem(task)
    return render_template("partials/task_actions.html", task=task, task_id=task_id, signals=SIGNALS,
                           unheard=unheard, terminate_why=terminate_why, links=tasks.links(task_id),
                           call=tasks.known_call(task_id), queue_url=queue_url(task.queue) if task and task.queue
                           else None)


@bp.post("/tasks/<task_id>/revoke")
def task_revoke(task_id: str) -> Response:
    """Revoke (and perhaps terminate) from a form; answers a sentence."""
    try:
        parsed = parse_revoke(body_object(form=True))
    except ActionError as exc:
        return _result(False, exc.message, exc.status)
    tasks = services().actions.tasks
    detail = {"terminate": parsed.terminate, "signal": parsed.signal, "force": parsed.force}
    outcome, failure = perform("task.revoke", _task_id(task_id), detail, lambda: tasks.revoke(task_id, parsed),
                               lambda done: {"replies": done.replies})
    if failure is not None:
        queue = failure.extra.get("queue")
        return _failed(failure, queue=queue, queue_link=queue_url(queue) if queue else None)
    assert outcome is not None
    return _result(True, outcome.message, 200, event=f"{TASK_ACTED}, {WORKER_ACTED}")  # the task's and worker's pages


@bp.post("/tasks/<task_id>/redispatch")
def task_redispatch(task_id: str) -> Response:
    """Dispatch again with the exact arguments; when they are not known, point to "edit and send"."""
    tasks = services().actions.tasks
    result, failure = perform("task.redispatch", _task_id(task_id), {"given": []},
                              lambda: tasks.redispatch(task_id, {}, request_origin()),
                              lambda done: {"task_id": done[0].task_id, "source": done[1].source})
    if failure is not None:
        edit = url_for("act.edit_page", task_id=task_id) + f"#{RAW_FORM_ID}" if failure.status in (409, 422) \
            else None
        if failure.extra.get("warnings"):  # the dispatch guard: the edit form offers "send anyway"
            failure.message = f"not sent: {'; and '.join(failure.extra['warnings'])}. Edit and send to send anyway"
        return _failed(failure, edit_link=edit)
    assert result is not None
    sent, _call = result
    return _result(True, f"dispatched again as {sent.task_id} to queue {sent.resolution.queue}", 202,
                   event=TASK_ACTED, new_task=sent.task_id)


def edit_form(task_id: str) -> FormView:
    """The send-by-name form prefilled with the task's name, args, kwargs and options, posting as a dispatch again
    of it (linked and audited). When the exact arguments are not known it says so and asks for a check."""
    svc = services()
    call = svc.actions.tasks.known_call(task_id)
    values = {"form_id": RAW_FORM_ID, "name": call.name or "",
              "args": form_text(call.args) if call.args is not None else "",
              "kwargs": form_text(call.kwargs) if call.kwargs is not None else ""}
    for key, value in call.options.items():
        values[FORM_OPTION_PREFIX + key] = str(value)
    view = FormView(RAW_FORM_ID, None, values=values)
    view.original = task_id
    view.call = call
    view.post_url = url_for("act.edit_send", task_id=task_id)
    _set_preview(svc, view, call.name or "", values.get(FORM_OPTION_PREFIX + "queue"))
    return view


@bp.get("/tasks/<task_id>/edit")
def edit_page(task_id: str) -> str:
    """"Edit and send": the dispatch page, its send-by-name form prefilled from the task."""
    svc = services()
    return render_template("pages/index.html", forms=_catalog_forms(svc), raw_form=edit_form(_task_id(task_id)),
                           broker=svc.client.broker_display, config_source=svc.client.settings.origin)


@bp.post("/tasks/<task_id>/edit-send")
def edit_send(task_id: str) -> tuple[str, int]:
    """The edited dispatch form: sent as a dispatch again of the task (linked both ways, audited)."""
    svc = services()
    form_data = {key: value for key, value in request.form.items() if key != "csrf_token"}
    form_data["mode"] = "raw"
    view = edit_form(_task_id(task_id))
    view.values = form_data
    _set_preview(svc, view, form_data.get("name", "").strip(), form_data.get(FORM_OPTION_PREFIX + "queue"))
    status = 200
    try:
        if view.call is not None and not view.call.exact and form_data.get("checked") not in ("1", "on"):
            raise DispatchInvalid({"checked": "the exact arguments are not known: check args and kwargs against "
                                              "the repr above, edit them, and tick the box"})
        checked = parse_form(form_data, svc.config.catalog, now())
        body = {"name": checked.name, "args": list(checked.args), "kwargs": checked.kwargs,
                "options": checked.options.to_dict(), "force": checked.force}
    except DispatchInvalid as exc:
        view.errors = _form_errors(exc.errors)
        return render_template("partials/dispatch_form.html", form=view), 422
    result, failure = perform("task.redispatch", task_id, {"given": sorted(body), "edited": True},
                              lambda: svc.actions.tasks.redispatch(task_id, body, request_origin()),
                              lambda done: {"task_id": done[0].task_id, "source": done[1].source})
    if failure is not None:
        status = failure.status
        if failure.status == 409 and "warnings" in failure.extra:
            view.refused = list(failure.extra["warnings"])
        elif "fields" in failure.extra:
            view.errors = _form_errors(failure.extra["fields"])
        else:
            view.failure = failure.message
    else:
        assert result is not None
        view.sent = result[0]
    return render_template("partials/dispatch_form.html", form=view), status


# -- the tasks list: bulk -------------------------------------------------------------------------------------------


def _bulk_form() -> dict[str, Any]:
    """The bulk form's fields; its filters are named filter.<key> (the page's own filter form has the plain names)."""
    return {key.removeprefix("filter."): value for key, value in body_object(form=True).items()}


@bp.post("/tasks/bulk/preview")
def bulk_preview() -> tuple[str, int]:
    """The bulk panel's preview: how many, which; and the button that runs it on that many."""
    try:
        kind, selection, revoke, _force, _expected = bulk_request(_bulk_form())
    except ActionError as exc:
        return render_template("partials/action_result.html", ok=False, message=exc.message,
                               at=services().monitor.clock()), exc.status
    preview = services().actions.bulk.preview(kind, selection)
    return render_template("partials/bulk_preview.html", preview=preview, revoke=revoke,
                           sample_size=BULK_SAMPLE), 200


@bp.post("/tasks/bulk")
def bulk_start() -> tuple[str, int]:
    """Start the previewed bulk action; answers its progress, which polls itself until done."""
    svc = services()
    try:
        kind, selection, revoke, force, expected = bulk_request(_bulk_form())
        job = svc.actions.bulk.start(kind, selection, request_origin(), expected=expected, revoke=revoke,
                                     force=force)
    except ActionError as exc:
        action = request.form.get("action")
        record_action(f"tasks.bulk_{action}" if action in BULK_KINDS else "tasks.bulk", "tasks",
                      {"form": _bulk_form()}, "refused", exc.message)
        return render_template("partials/action_result.html", ok=False, message=exc.message,
                               at=svc.monitor.clock()), exc.status
    return render_template("partials/bulk_progress.html", job=job), 202


@bp.get("/tasks/bulk/<job_id>")
def bulk_progress(job_id: str) -> tuple[str, int]:
    """A bulk job's progress (polled every half second while it runs)."""
    job = services().actions.bulk.job(job_id)
    if job is None:
        raise NotFound()
    return render_template("partials/bulk_progress.html", job=job), 200


# -- the worker page ---------------------------------------------------------------------------------------------


def _worker_known(hostname: str) -> None:
    if services().state.worker(hostname) is None:
        raise NotFound(f"no worker {hostname[:255]!r} has been seen")


@bp.get("/workers/<hostname>")
def worker_page(hostname: str) -> str:
    """One worker: what it runs and how, asked now, and the commands that change it."""
    _worker_known(hostname)
    return render_template("pages/worker.html", hostname=hostname, detail_html=Markup(_worker_detail(hostname)))


@bp.get("/workers/<hostname>/detail")
def worker_detail(hostname: str) -> str:
    """The worker page's panel (#worker-detail), asked again (after each command)."""
    _worker_known(hostname)
    return _worker_detail(hostname)


def _worker_detail(hostname: str) -> str:
    svc = services()
    error = None
    detail = None
    try:
        detail = svc.actions.workers.detail(hostname)
    except _UNAVAILABLE as exc:
        error = _unavailable_text(exc)
    return render_template("partials/worker_detail.html", hostname=hostname, detail=detail, error=error,
                           view=svc.state.worker(hostname), signals=SIGNALS)


def _command(hostname: str, action: str, parse: Any, do: Any, describe: Any) -> Response:
    _worker_known(hostname)
    try:
        parsed = parse(body_object(form=True))
    except ActionError as exc:
        return _result(False, exc.message, exc.status)
    answer, failure = perform(action, hostname, describe(parsed), lambda: do(parsed))
    services().monitor.kick()
    if failure is not None:
        return _failed(failure)
    return _result(True, f"{hostname}: {answer}", 200, event=WORKER_ACTED)


@bp.post("/workers/<hostname>/pool")
def worker_pool(hostname: str) -> Response:
    """Grow or shrink the pool (the form's button names the direction)."""
    control = services().actions.workers

    def parse(form: dict[str, Any]) -> tuple[str, int]:
        direction = form.pop("direction", "")
        return parse_count({direction: form.get("n", "")} if direction else {}, ("grow", "shrink"))

    return _command(hostname, "worker.pool", parse, lambda p: control.pool(hostname, p[0], p[1]),
                    lambda p: {p[0]: p[1]})


@bp.post("/workers/<hostname>/autoscale")
def worker_autoscale(hostname: str) -> Response:
    """Set the autoscale range."""
    control = services().actions.workers
    return _command(hostname, "worker.autoscale", parse_autoscale, lambda p: control.autoscale(hostname, *p),
                    lambda p: {"max": p[0], "min": p[1]})


@bp.post("/workers/<hostname>/consumers")
def worker_add_consumer(hostname: str) -> Response:
    """Start consuming a queue."""
    control = services().actions.workers
    return _command(hostname, "worker.add_consumer", parse_queue, lambda q: control.add_consumer(hostname, q),
                    lambda q: {"queue": q})


@bp.post("/workers/<hostname>/consumers/cancel")
def worker_cancel_consumer(hostname: str) -> Response:
    """Stop consuming a queue."""
    control = services().actions.workers
    return _command(hostname, "worker.cancel_consumer", parse_queue, lambda q: control.cancel_consumer(hostname, q),
                    lambda q: {"queue": q})


@bp.post("/workers/<hostname>/rate-limit")
def worker_rate_limit(hostname: str) -> Response:
    """Set a task's rate limit."""
    control = services().actions.workers
    return _command(hostname, "worker.rate_limit", parse_rate_limit,
                    lambda p: control.rate_limit(hostname, p[0], p[1]), lambda p: {"task": p[0], "rate": p[1]})


@bp.post("/workers/<hostname>/time-limit")
def worker_time_limit(hostname: str) -> Response:
    """Set a task's time limits."""
    control = services().actions.workers
    return _command(hostname, "worker.time_limit", parse_time_limit,
                    lambda p: control.time_limit(hostname, p[0], p[1], p[2]),
                    lambda p: {"task": p[0], "soft": p[1], "hard": p[2]})
