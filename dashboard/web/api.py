"""The JSON API: dispatch, catalog, health."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for

from ..model.dispatch import DispatchInvalid, parse_api_body
from .runtime import runtime

bp = Blueprint("api", __name__)


def _bad_request(message: str, **extra: Any) -> tuple[Response, int]:
    return jsonify(error=message, **extra), 400


@bp.post("/api/dispatch")
def dispatch() -> tuple[Response, int]:
    """Publish one task by name: 202 with its id and queue, 400 for bad input, 503 when the broker can't take it."""
    raw = request.get_data(cache=False)
    if not raw:
        return _bad_request('the body is empty; send a JSON object like {"name": "worker.tasks.x", "args": []}')
    try:
        body = json.loads(raw)
    except UnicodeDecodeError:
        return _bad_request("the body is not UTF-8 text")
    except ValueError as exc:
        return _bad_request(f"the body is not valid JSON: {exc}")
    except RecursionError:
        return _bad_request("the body is nested too deeply")
    rt = runtime()
    try:
        checked = parse_api_body(body, rt.config.catalog, rt.now())
    except DispatchInvalid as exc:
        return _bad_request(exc.message, fields=exc.errors)
    sent = rt.dispatch(checked)
    payload = {
        "task_id": sent.task_id,
        "queue": sent.resolution.queue,
        "name": sent.name,
        "routing_key": sent.resolution.routing_key,
        "exchange": sent.resolution.exchange,
        "route": sent.resolution.to_dict(),
        "options": sent.options.to_dict(),
        "url": url_for("pages.task", task_id=sent.task_id),
    }
    return jsonify(payload), 202


@bp.get("/api/catalog")
def catalog() -> Response:
    """The catalog's tasks with their params and the queue each resolves to."""
    rt = runtime()
    tasks = []
    for spec in rt.config.catalog:
        resolution = rt.client.resolve(spec.name)
        tasks.append(
            {
                "name": spec.name,
                "description": spec.description,
                "params": [
                    {
                        "name": p.name,
                        "type": p.type,
                        "required": p.required,
                        "description": p.description,
                        **({"default": p.default} if p.has_default else {}),
                    }
                    for p in spec.params
                ],
                "queue": resolution.queue,
                "route": resolution.to_dict(),
            }
        )
    return jsonify(tasks=tasks)


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: 200 while the app serves requests (the broker's state is reported elsewhere)."""
    return jsonify(status="ok")
