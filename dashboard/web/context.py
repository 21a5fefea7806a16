"""The app's services as the web layer reaches them: built by the composition root, kept in `app.extensions`."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Flask, current_app

from ..services.container import Services

SERVICES_KEY = "dispatch_dashboard"


def services(app: Flask | None = None) -> Services:
    """The Services of `app`, or of the current app."""
    target = app if app is not None else current_app
    found: Services = target.extensions[SERVICES_KEY]
    return found


def now() -> datetime:
    """The current time, timezone-aware (dispatch checks compare ETAs with it)."""
    return datetime.now(UTC)
