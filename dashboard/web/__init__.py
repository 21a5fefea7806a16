"""The HTTP layer: one blueprint per feature, registered by `register`."""

from __future__ import annotations

from flask import Flask

from ..services.container import Services
from . import (
    action_pages,
    actions,
    alert_actions,
    api,
    audit,
    auth,
    errors,
    history,
    live,
    metrics,
    openapi,
    pages,
    queues,
    security,
)
from .context import SERVICES_KEY

__all__ = ["SERVICES_KEY", "register"]


def register(app: Flask, services: Services) -> None:
    """Attach every blueprint, the error handlers and the request guards to `app` (whose extensions hold
    `services` under SERVICES_KEY)."""
    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(queues.bp)
    app.register_blueprint(alert_actions.bp)
    app.register_blueprint(live.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(audit.bp)
    app.register_blueprint(history.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(actions.bp)
    app.register_blueprint(action_pages.bp)
    errors.register(app)
    security.register(app)
    auth.install(app, services.config.auth, services.config.secret_key)
    app.before_request(live.hand_off)  # after the auth guard: a websocket is handed off only once allowed

    @app.before_request
    def _start_monitor() -> None:
        # The first request in each process starts the event listener there (never at import, never in a
        # pre-fork master), so every server model gets exactly one listener per serving process.
        services.ensure_started()
