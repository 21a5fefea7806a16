"""dispatch-dashboard: dispatch Celery tasks by name and watch where they go. Nothing starts at import."""

from __future__ import annotations

import logging

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the package root stays light: `dashboard.model` must import without Flask or Celery
    from flask import Flask

    from .config import Config
    from .services.client import SendOnlyClient

__all__ = ["create_app"]

MAX_BODY_BYTES = 1024 * 1024  # a dispatch body is small; anything larger is refused with 413

log = logging.getLogger(__name__)


def create_app(config: Config | None = None, *, client: SendOnlyClient | None = None) -> Flask:
    """Build the Flask app from `config` (else from $DASHBOARD_CONFIG); connects to nothing until used."""
    from flask import Flask

    from .config import load_config
    from .resources import resource_dir
    from .services.client import ClientSettings, SendOnlyClient
    from .web import register
    from .web.runtime import Runtime

    config = config if config is not None else load_config()
    app = Flask(
        __name__,
        template_folder=str(resource_dir("templates")),
        static_folder=str(resource_dir("static")),
        static_url_path="/static",
    )
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]
    client = client if client is not None else SendOnlyClient(ClientSettings.from_config(config))
    app.extensions["dispatch_dashboard"] = Runtime(config=config, client=client)
    register(app)
    return app
