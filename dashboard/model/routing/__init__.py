"""Routing comparison: where the API sends each task name versus what the online workers consume and register
(compare.py), and its result (report.py)."""

from .compare import compare
from .report import (
    MAX_NAMED_HOSTS,
    SEVERITY,
    ApiRoute,
    BrokerQueue,
    Problem,
    ProblemCode,
    QueueRouting,
    QueueStatus,
    RouteSource,
    RoutingReport,
    TaskRouting,
    TaskStatus,
    WorkerSnapshot,
    hosts_phrase,
)

__all__ = [
    "MAX_NAMED_HOSTS", "SEVERITY", "ApiRoute", "BrokerQueue", "Problem", "ProblemCode", "QueueRouting", "QueueStatus",
    "RouteSource", "RoutingReport", "TaskRouting", "TaskStatus", "WorkerSnapshot", "compare", "hosts_phrase",
]
