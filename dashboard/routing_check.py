"""`dispatch-dashboard check-routes`: one comparison of the API routes with the live workers, for CI."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .config import Config
from .exceptions import BrokerUnavailable, ConfigError, DashboardError
from .model.routing import RoutingReport
from .model.secrets import mask_text, mask_url
from .model.state import State
from .services.client import BROKER_ERRORS, ClientSettings, SendOnlyClient, build_send_only_app
from .services.events.hub import Hub
from .services.events.stream import StreamLog
from .services.inspection import WorkerInspector

EXIT_OK, EXIT_MISMATCH, EXIT_UNREACHABLE = 0, 1, 2
_UNAVAILABLE: tuple[type[BaseException], ...] = (BrokerUnavailable, *BROKER_ERRORS)


@dataclass
class CheckResult:
    """The outcome: an exit code, the report (when workers answered) and what went wrong."""

    exit_code: int
    broker: str
    source: str
    workers: list[str] = field(default_factory=list)
    report: RoutingReport | None = None
    error: str | None = None
    broker_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The --json output."""
        out: dict[str, Any] = {
            "exit_code": self.exit_code,
            "consistent": self.exit_code == EXIT_OK,
            "broker": self.broker,
            "api_routes": self.source,
            "workers": self.workers,
        }
        if self.error:
            out["error"] = self.error
        if self.broker_error:
            out["broker_error"] = self.broker_error
        if self.report is not None:
            mismatches = self.report.mismatches()
            out["mismatches"] = {
                "tasks": [task.to_dict() for task in mismatches.tasks],
                "queues": [queue.to_dict() for queue in mismatches.queues if queue.status == "orphaned"],
            }
            out["report"] = self.report.to_dict()
        return out

    def lines(self) -> list[str]:
        """Plain words, one finding per line."""
        if self.exit_code == EXIT_UNREACHABLE:
            return [f"check-routes: cannot check: {self.error}"]
        assert self.report is not None
        report = self.report
        hosts = ", ".join(self.workers)
        if self.exit_code == EXIT_OK:
            return [f"check-routes: consistent: {len(report.tasks)} task name(s) and {len(report.queues)} queue(s) "
                    f"agree between the API routes ({self.source}) and {len(self.workers)} worker(s): {hosts}"]
        mismatches = report.mismatches()
        orphaned = [queue for queue in mismatches.queues if queue.status == "orphaned"]
        out = [f"check-routes: MISMATCH between the API routes ({self.source}) and {len(self.workers)} worker(s): "
               f"{hosts}"]
        for task in mismatches.tasks:
            out.append(f"  task {task.task} -> queue {task.api_queue}: {task.status}")
            out.extend(f"      {problem.explanation}" for problem in task.problems)
        for queue in orphaned:
            out.append(f"  queue {queue.name}: orphaned, {queue.depth} message(s) waiting and no consumer")
            if queue.note:
                out.append(f"      {queue.note}")
        if self.broker_error:
            out.append(f"  (queue depths unknown: {self.broker_error})")
        return out


def _known_workers(settings: ClientSettings, timeout: float) -> set[str]:
    """Workers the broker has seen (Redis only: their pidbox bindings); empty when that cannot be told."""
    from .model.kombu import pidbox_hosts
    from .services.broker import broker_inspector
    from .services.broker.redis import RedisBrokerInspector

    try:
        inspector = broker_inspector(settings.broker_url, settings.broker_transport_options, timeout)
    except DashboardError:
        return set()
    try:
        if isinstance(inspector, RedisBrokerInspector):
            return pidbox_hosts(inspector.bindings())
        return set()
    except DashboardError:
        return set()
    finally:
        inspector.close()


def run_check(config: Config, timeout: float) -> CheckResult:
    """Ping, inspect, read queue depths and compare, each bounded by `timeout`."""
    from .services.broker import broker_inspector
    from .services.routing import RoutingService

    try:
        settings = ClientSettings.from_config(config)
    except DashboardError as exc:
        return CheckResult(EXIT_UNREACHABLE, mask_url(config.broker_url), "?", error=mask_text(str(exc)))
    settings = dataclasses.replace(settings, timeout=min(settings.timeout, timeout))  # --timeout bounds all
    broker = mask_url(settings.broker_url)
    client = SendOnlyClient(settings)
    control = build_send_only_app(settings)
    inspector = WorkerInspector(control, timeout=timeout)
    known = _known_workers(settings, timeout)
    try:
        # A ping waits its whole timeout unless told how many answers to expect: the workers the broker knows
        # (Redis: their remote-control bindings) make it stop as soon as each has answered.
        replies = control.control.ping(timeout=timeout, limit=len(known) or None) or []
    except BROKER_ERRORS as exc:
        return CheckResult(EXIT_UNREACHABLE, broker, settings.origin,
                           error=mask_text(f"the broker at {broker} is unreachable: {exc}"))
    hosts = sorted({host for reply in replies if isinstance(reply, dict) for host in reply})
    if not hosts:
        return CheckResult(EXIT_UNREACHABLE, broker, settings.origin,
                           error=f"no worker answered a ping on {broker} within {timeout:g}s")
    try:
        result = inspector.inspect(expected=len(hosts), destination=hosts)
    except BROKER_ERRORS as exc:
        return CheckResult(EXIT_UNREACHABLE, broker, settings.origin,
                           error=mask_text(f"worker inspection failed: {exc}"))
    try:
        queues_inspector = broker_inspector(settings.broker_url, settings.broker_transport_options, timeout)
    except ConfigError:
        queues_inspector = None
    service = RoutingService(client, State(config.monitor.max_tasks), Hub(), StreamLog(), inspector,
                             queues_inspector, [spec.name for spec in config.catalog], grace=0,
                             inspect_interval=config.monitor.inspect_interval)
    service.store_reports(result)
    online = sorted(result.workers)
    first = service.compare([], online_hosts=online)  # resolves every compared name: the queues to measure
    broker_error = None
    depths = []
    if queues_inspector is not None:
        try:
            depths = queues_inspector.queues(known=[queue.name for queue in first.queues])
        except _UNAVAILABLE as exc:
            broker_error = mask_text(str(exc))
        finally:
            queues_inspector.close()
    report = service.compare(depths, online_hosts=online)
    code = EXIT_OK if report.consistent else EXIT_MISMATCH
    return CheckResult(code, broker, settings.origin, online, report, broker_error=broker_error)
