"""Per-app state, kept in `app.extensions` (never in module globals), and the one dispatch seam."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flask import Flask, current_app

from ..config import Config
from ..exceptions import BrokerUnavailable, DispatchRefused, RoutingError
from ..model.dispatch import DispatchRequest
from ..model.state import TaskView
from ..services.audit import AuditLog, DispatchAttempt
from ..services.client import Resolution, SendOnlyClient, SentTask
from ..services.monitor import Monitor
from ..services.resync import Resync
from ..services.routing import Guard, RoutingService
from ..services.stats import TaskStats

EXTENSION_KEY = "dispatch_dashboard"


class RenderCache:
    """Rendered forms of task snapshots keyed by (kind, task id, version), shared by an app's websocket clients.

    Dozens of clients pushing the same change render (encode, template) it once. A key names one snapshot
    exactly, so nothing here is ever stale; the least recently used entries go beyond `size`.
    """

    def __init__(self, size: int = 4096) -> None:
        self._items: OrderedDict[tuple[str, str, int], str] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, str, int]) -> str | None:
        """The cached form, or None (counted as a miss)."""
        with self._lock:
            found = self._items.get(key)
            if found is None:
                self.misses += 1
            else:
                self.hits += 1
                self._items.move_to_end(key)
            return found

    def put(self, key: tuple[str, str, int], value: str) -> None:
        """Remember a rendered form."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def render(self, kind: str, task: TaskView, render: Callable[[TaskView], str]) -> str:
        """`render(task)`, or what it gave for this very snapshot (same kind, task id and version) before."""
        key = (kind, task.id, task.version)
        found = self.get(key)
        if found is None:
            found = render(task)
            self.put(key, found)
        return found


@dataclass
class Runtime:
    """What one dashboard app owns: its config, its send-only client and its live monitor."""

    config: Config
    client: SendOnlyClient
    monitor: Monitor
    live: bool = True  # start the monitor's threads on the first request (tests of pure pages turn it off)
    metric_sources: list[Callable[[], Iterator[Any]]] = field(default_factory=list)  # more /metrics families
    routing: RoutingService | None = None
    resync: Resync | None = None  # recovers what it can after each gap in the event stream
    stats: TaskStats = field(default_factory=TaskStats)
    audit: AuditLog | None = None  # every dispatch attempt is recorded here (None: auditing is off)
    rendered: RenderCache = field(default_factory=RenderCache)  # task messages and rows, for the websockets

    def now(self) -> datetime:
        """The current time, timezone-aware."""
        return datetime.now(UTC)

    def ensure_started(self) -> None:
        """Start the monitor once in this process (cheap after the first call)."""
        if self.live and not self.monitor.started:
            self.monitor.start()

    def resolve(self, request: DispatchRequest) -> Resolution:
        """Where the request would go, by Celery's router."""
        return self.client.resolve(request.name, request.options, request.args, request.kwargs)

    def guard(self, name: str, queue: str) -> Guard | None:
        """Warnings for a dispatch of `name` to `queue` from the latest inspection (None when not monitoring)."""
        return self.routing.guard(name, queue) if self.routing is not None else None

    def dispatch(self, request: DispatchRequest) -> SentTask:
        """Publish a checked request (raises BrokerUnavailable, RoutingError, or DispatchRefused unless forced).

        Every attempt, sent or not, is written to the audit log; a failing write never fails the dispatch.
        """
        from .audit import request_origin

        try:
            with DispatchAttempt(self.audit, request, request_origin()) as attempt:
                resolution = self.resolve(request)
                attempt.queue = resolution.queue  # recorded even when the send fails
                if not request.force:
                    guard = self.guard(request.name, resolution.queue)
                    if guard is not None and guard.blocks:
                        raise DispatchRefused("; and ".join(guard.warnings), guard.warnings, resolution.queue)
                sent = self.client.send(request)
                attempt.sent(sent.task_id, sent.resolution.queue)
        except DispatchRefused:
            self.stats.note_dispatch("refused")
            raise
        except BrokerUnavailable:
            self.stats.note_dispatch("unavailable")
            raise
        except RoutingError:
            self.stats.note_dispatch("routing_error")
            raise
        self.stats.note_dispatch("sent")
        return sent


def runtime(app: Flask | None = None) -> Runtime:
    """The Runtime of `app`, or of the current app."""
    target = app if app is not None else current_app
    found: Runtime = target.extensions[EXTENSION_KEY]
    return found
