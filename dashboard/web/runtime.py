"""Per-app state, kept in `app.extensions` (never in module globals), and the one dispatch seam."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from flask import Flask, current_app

from ..config import Config
from ..model.dispatch import DispatchRequest
from ..services.client import Resolution, SendOnlyClient, SentTask

EXTENSION_KEY = "dispatch_dashboard"


@dataclass
class Runtime:
    """What one dashboard app owns: its config and its send-only client."""

    config: Config
    client: SendOnlyClient

    def now(self) -> datetime:
        """The current time, timezone-aware."""
        return datetime.now(UTC)

    def resolve(self, request: DispatchRequest) -> Resolution:
        """Where the request would go, by Celery's router."""
        return self.client.resolve(request.name, request.options, request.args, request.kwargs)

    def dispatch(self, request: DispatchRequest) -> SentTask:
        """Publish a checked request (raises BrokerUnavailable or RoutingError)."""
        return self.client.send(request)


def runtime(app: Flask | None = None) -> Runtime:
    """The Runtime of `app`, or of the current app."""
    target = app if app is not None else current_app
    found: Runtime = target.extensions[EXTENSION_KEY]
    return found
