"""Everything one dashboard app owns, built once by the composition root (dashboard/app.py)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config
from ..model.state import State
from .actions import Actions
from .alert_marks import AlertMarks
from .audit import AuditStore
from .client import SendOnlyClient
from .dispatch import Dispatcher
from .events.hub import Hub
from .events.monitor import Monitor
from .events.resync import Resync
from .events.stats import TaskStats
from .events.stream import StreamLog
from .history import History
from .notify import AlertNotifier
from .priority import RequestPriority
from .queues import QueueService
from .render_cache import RenderCache
from .routing import RoutingService
from .sessions import SessionRevocations


@dataclass(frozen=True)
class Services:
    """The app's services, every one set at construction. `audit` is None exactly when auditing is off."""

    config: Config
    client: SendOnlyClient
    state: State
    hub: Hub
    stream: StreamLog
    monitor: Monitor
    routing: RoutingService
    resync: Resync
    stats: TaskStats
    audit: AuditStore | None
    dispatcher: Dispatcher
    revocations: SessionRevocations
    rendered: RenderCache  # task messages and rows, shared by the websockets
    queues: QueueService  # the queue browser: peek, move, purge, delete by name
    marks: AlertMarks  # acknowledgements and silences of alerts
    notifier: AlertNotifier  # alert webhooks (its threads start and stop with the monitor)
    actions: Actions  # revoke, dispatch again, bulk, one worker's page and commands
    priority: RequestPriority  # requests before ingest: the serving loop counts them, the event thread yields
    history: History | None = None  # None exactly when history is off
    live: bool = True  # start the monitor's threads on the first request (tests of pure pages turn it off)

    def ensure_started(self) -> None:
        """Start the monitor once in this process (cheap after the first call)."""
        if self.live and not self.monitor.started:
            self.monitor.start()

    def close(self) -> None:
        """Stop the threads and release the connections (tests, clean shutdown)."""
        self.monitor.stop()
        self.client.close()
        if self.history is not None:
            self.history.store.close()
        self.queues.close()
        self.revocations.close()
        self.marks.close()
        if self.audit is not None:
            self.audit.close()
