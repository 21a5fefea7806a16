"""The HTTP layer: one blueprint per feature, registered by `register`."""

from __future__ import annotations

from flask import Flask


def register(app: Flask) -> None:
    """Attach every blueprint and the error handlers to `app`."""
    from . import api, errors, pages

    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    errors.register(app)
