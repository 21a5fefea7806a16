"""The HTTP layer: one blueprint per feature, registered by `register`."""

from __future__ import annotations

from flask import Flask


def register(app: Flask) -> None:
    """Attach every blueprint and the error handlers to `app`."""
    from . import api, audit, auth, errors, live, metrics, openapi, pages, security
    from .runtime import runtime

    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(live.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(audit.bp)
    app.register_blueprint(openapi.bp)
    errors.register(app)
    security.register(app)
    config = runtime(app).config
    auth.install(app, config.auth, config.secret_key)
    app.before_request(live.hand_off)  # after the auth guard: a websocket is handed off only once allowed

    @app.before_request
    def _start_monitor() -> None:
        # The first request in each process starts the event listener there (never at import, never in a
        # pre-fork master), so every server model gets exactly one listener per serving process.
        runtime().ensure_started()
