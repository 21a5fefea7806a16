"""History over HTTP: the /stats page and GET /api/stats (series per task name and per queue), the /status page,
and the history part of /api/status and /metrics."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, jsonify, render_template, request
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..model.series import WINDOWS, polyline
from ..services.container import Services
from ..services.history import HistoryUnavailable
from .context import services
from .query import MAX_FILTER_CHARS

bp = Blueprint("history", __name__)

PREFIX = "dispatch_dashboard"
CHART_WIDTH = 600
CHART_HEIGHT = 80
SPARK_WIDTH = 120
SPARK_HEIGHT = 24


def history_status(svc: Services) -> dict[str, Any]:
    """The history part of /api/status: where, who writes, how far behind, how big."""
    if svc.history is None:
        return {"enabled": False}
    status = svc.history.status()
    info = status.info
    return {
        "enabled": True, "store": svc.history.store.kind, "where": svc.history.shown, "role": status.role,
        "degraded": status.degraded, "pending": status.pending, "dropped": status.dropped,
        "written": status.written, "write_errors": status.write_errors, "write_lag_seconds": round(status.lag, 3),
        "last_write": status.last_write, "restored": status.restored, "restoring": status.restoring,
        "tasks": info.tasks if info is not None else None, "bytes": info.bytes if info is not None else None,
    }


def history_metrics(svc: Services) -> Iterator[Metric]:
    """The history store's figures for /metrics (nothing when history is off)."""
    if svc.history is None:
        return
    status = svc.history.status()
    yield GaugeMetricFamily(f"{PREFIX}_history_writer", "1 while this process writes history (one per store).",
                            value=1 if status.role == "writer" else 0)
    yield GaugeMetricFamily(f"{PREFIX}_history_degraded", "1 while history cannot be written (see the log).",
                            value=1 if status.degraded else 0)
    yield GaugeMetricFamily(f"{PREFIX}_history_pending", "Changed tasks waiting for the next group commit.",
                            value=status.pending)
    yield GaugeMetricFamily(f"{PREFIX}_history_write_lag_seconds",
                            "How long the oldest unwritten change has waited.", value=status.lag)
    yield CounterMetricFamily(f"{PREFIX}_history_dropped", "Task changes history lost (buffer full, or evicted "
                              "from memory before their write).", value=status.dropped)
    yield CounterMetricFamily(f"{PREFIX}_history_written", "Task snapshots written to history.", value=status.written)
    yield CounterMetricFamily(f"{PREFIX}_history_write_errors", "Group commits that failed.",
                              value=status.write_errors)
    if status.info is not None:
        yield GaugeMetricFamily(f"{PREFIX}_history_tasks", "Tasks stored in history.", value=status.info.tasks)
        if status.info.bytes is not None:
            yield GaugeMetricFamily(f"{PREFIX}_history_bytes", "The history store's size on disk.",
                                    value=status.info.bytes)


@bp.get("/status")
def status_page() -> str:
    """The event stream, history and audit log at a glance."""
    svc = services()
    return render_template("pages/status.html", stream=svc.monitor.status, gaps=svc.monitor.gaps,
                           gaps_total=svc.monitor.gaps_total, history=history_status(svc),
                           audit_errors=svc.audit.write_errors if svc.audit is not None else None,
                           counts=svc.state.counts())


def _stats_args() -> tuple[str, list[str], list[str]]:
    window = (request.args.get("window") or "hour").strip().lower()
    if window not in WINDOWS:
        raise ValueError(f"window: must be one of {', '.join(WINDOWS)}")
    names = [value.strip() for value in request.args.getlist("name") if value.strip()]
    queues = [value.strip() for value in request.args.getlist("queue") if value.strip()]
    if any(len(value) > MAX_FILTER_CHARS for value in names + queues) or len(names) + len(queues) > 50:
        raise ValueError(f"name, queue: at most 50 values of at most {MAX_FILTER_CHARS} characters")
    return window, names, queues


@bp.get("/api/stats")
def stats_api() -> tuple[Response, int]:
    """Series per task name and per queue: ?window=hour|day|week&name=&queue= (repeatable)."""
    svc = services()
    if svc.history is None:
        return jsonify(error="history is off: set [history] url (or leave it out for the default file) to keep "
                             "series"), 404
    try:
        window, names, queues = _stats_args()
    except ValueError as exc:
        return jsonify(error=str(exc)), 400
    try:
        return jsonify(svc.history.stats(window, names, queues)), 200
    except HistoryUnavailable as exc:
        return jsonify(error=str(exc)), 503


@bp.get("/stats")
def stats_page() -> tuple[str, int]:
    """Charts per task name and per queue over the last hour, day or week (SVG drawn here, no script)."""
    svc = services()
    problem = None
    stats: dict[str, Any] | None = None
    window = "hour"
    status = 200
    try:
        window, names, queues = _stats_args()
        if svc.history is not None:
            stats = svc.history.stats(window, names, queues)
    except ValueError as exc:
        problem, status = str(exc), 400
    except HistoryUnavailable as exc:
        problem, status = str(exc), 503
    return render_template("pages/stats.html", stats=stats, window=window, windows=list(WINDOWS), problem=problem,
                           enabled=svc.history is not None, chart=chart, width=CHART_WIDTH,
                           height=CHART_HEIGHT), status


def chart(values: list[float | None], width: int = CHART_WIDTH, height: int = CHART_HEIGHT) -> str:
    """Polyline points for a chart (templates call it)."""
    return polyline(values, width, height)
