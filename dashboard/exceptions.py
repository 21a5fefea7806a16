"""The errors the dashboard translates at its boundaries."""

from __future__ import annotations


class DashboardError(Exception):
    """Base class of the dashboard's own errors."""


class ConfigError(DashboardError):
    """The configuration is missing or malformed; the message names the file and the problem in one line."""


class BrokerUnavailable(DashboardError):
    """The broker (or the result backend) could not be reached in time; shown as a 503 with this message."""


class RoutingError(DashboardError):
    """Celery's router could not resolve a destination (a queue missing from task_queues, a failing router)."""


class DispatchRefused(DashboardError):
    """The task would land where nobody takes it; sent only when the user confirms (409 until then)."""

    def __init__(self, message: str, warnings: list[str], queue: str) -> None:
        super().__init__(message)
        self.warnings = warnings
        self.queue = queue


class QueueNotFound(DashboardError):
    """The queue does not exist on the broker (RabbitMQ: 404 NOT_FOUND); answered with 404."""


class CannotPeek(DashboardError):
    """The broker cannot show a queue's messages without taking them (RabbitMQ without the management API)."""


class ActionInterrupted(BrokerUnavailable):
    """A move or delete stopped halfway by a broker failure: `done` messages were handled, the rest stay put."""

    def __init__(self, message: str, done: int) -> None:
        super().__init__(message)
        self.done = done
