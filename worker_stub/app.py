"""The stub worker's Celery app: broker, routes and settings, built from the environment."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from celery import Celery

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"

TASK_MODULES: tuple[str, ...] = (
    "worker_stub.tasks.stt",
    "worker_stub.tasks.llm",
    "worker_stub.tasks.link",
    "worker_stub.tasks.demo",
)

# Mirrored by examples/dispatch.toml [routes]; an integration test should prove the two agree.
DEFAULT_TASK_ROUTES: dict[str, dict[str, str]] = {
    "worker.tasks.stt.*": {"queue": "stt"},
    "worker.tasks.llm.*": {"queue": "llm"},
    "worker.tasks.link.*": {"queue": "default"},
    "worker.tasks.demo.*": {"queue": "default"},
}

ROUTES_ENV_VAR = "WORKER_STUB_ROUTES"


def routes_from_env(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Return task_routes; a non-empty WORKER_STUB_ROUTES (JSON name/glob -> queue) replaces the defaults."""
    raw = environ.get(ROUTES_ENV_VAR, "").strip()
    if not raw:
        return {pattern: dict(route) for pattern, route in DEFAULT_TASK_ROUTES.items()}
    try:
        parsed: Any = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{ROUTES_ENV_VAR} is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise ValueError(f"{ROUTES_ENV_VAR} must be a JSON object of name/glob -> queue")
    routes: dict[str, dict[str, str]] = {}
    for pattern, queue in parsed.items():
        if not isinstance(queue, str) or not queue:
            raise ValueError(f"{ROUTES_ENV_VAR}: queue for {pattern!r} must be a non-empty string")
        routes[pattern] = {"queue": queue}
    return routes


def create_app(environ: Mapping[str, str]) -> Celery:
    """Build the stub worker's Celery app from an environment mapping."""
    app = Celery(
        "worker_stub",
        broker=environ.get("CELERY_BROKER_URL", DEFAULT_BROKER_URL),
        backend=environ.get("CELERY_RESULT_BACKEND") or None,
        include=list(TASK_MODULES),
    )
    app.conf.update(
        task_default_queue="default",
        task_routes=routes_from_env(environ),
        worker_send_task_events=True,
        task_send_sent_event=True,
        result_extended=True,
        task_track_started=True,
        broker_connection_retry_on_startup=True,
        result_expires=3600,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        event_serializer="json",
    )
    return app


app = create_app(os.environ)
