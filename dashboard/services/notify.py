"""Webhooks for alert changes, delivered off every hot path.

The routing job hands each alert change to `AlertNotifier.notify`, which only appends it to the bounded queue of
every webhook that hears it (never blocks, never raises). Each webhook has its own lane: a daemon thread, started
and stopped with the monitor, that POSTs its queue in order, each POST bounded by the webhook's timeout, and
retries a failure with exponential backoff up to `max_attempts` before giving the delivery up. A hanging receiver
therefore delays only its own lane; the alerts, the pages and the other webhooks go on. (urllib's timeout bounds the
connection and each wait for the receiver's bytes; urllib is used for the proxy settings of the environment.)
"""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..model.alerts import AlertChange
from ..model.notify import RETRY_BASE_SECONDS, WebhookSpec, encode, payload, request_headers, retry_delays, retryable
from ..model.secrets import mask_endpoint, reason
from .alert_marks import AlertMarks
from .events.hub import Hub

log = logging.getLogger(__name__)

QUEUE_SIZE = 1000  # changes waiting per webhook; past it the oldest is dropped (and counted)
MAX_ERROR_CHARS = 200

Post = Callable[[str, bytes, dict[str, str], float], int]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A webhook that answers with a redirect is misconfigured: following it would resend the body as a GET."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect())


def http_post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    """POST `body`; the HTTP status (4xx/5xx too). Raises OSError when no answer came within `timeout`."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            response.read(65_536)
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One alert change on its way to one webhook."""

    change: AlertChange
    queued_at: float


class WebhookLane:
    """One webhook's queue, sender thread and counters."""

    def __init__(self, spec: WebhookSpec, dashboard_url: str | None, on_status: Callable[[], None], *,
                 post: Post, clock: Callable[[], float], queue_size: int = QUEUE_SIZE,
                 retry_base: float = RETRY_BASE_SECONDS) -> None:
        self.spec = spec
        self.retry_base = retry_base
        self.dashboard_url = dashboard_url
        self._on_status = on_status
        self._post = post
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[Delivery] = deque()
        self._queue_size = queue_size
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_pid: int | None = None
        self.in_flight = False
        self.sent = 0  # deliveries the receiver took (2xx)
        self.failed = 0  # deliveries given up after their last attempt
        self.retries = 0  # attempts after a first one failed
        self.dropped = 0  # changes dropped because the queue was full
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_sent_at: float | None = None

    @property
    def pending(self) -> int:
        """Deliveries waiting, the one being attempted included."""
        return len(self._queue) + (1 if self.in_flight else 0)

    def put(self, change: AlertChange) -> None:
        """Queue a change (O(1), never blocks); the oldest waiting one is dropped when the queue is full."""
        with self._cond:
            if len(self._queue) >= self._queue_size:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(Delivery(change, self._clock()))
            self._cond.notify()

    def start(self) -> None:
        """Start the sender thread (once per process: after a fork the parent's thread is gone)."""
        pid = os.getpid()
        if self._started_pid == pid:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"dashboard-webhook-{self.spec.name}", daemon=True)
        self._thread.start()
        self._started_pid = pid

    def stop(self, timeout: float) -> None:
        """Stop the thread (a POST in progress ends at its own timeout)."""
        self.signal_stop()
        self.join(timeout)

    def signal_stop(self) -> None:
        """Ask the thread to stop, without waiting."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def join(self, timeout: float) -> None:
        """Wait up to `timeout` for the thread to end."""
        if self._thread is not None:
            self._thread.join(max(0.0, timeout))
        self._started_pid = None

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                while not self._queue and not self._stop.is_set():
                    self._cond.wait(1.0)
                if self._stop.is_set():
                    return
                delivery = self._queue.popleft()
                self.in_flight = True
            try:
                self.deliver(delivery)
            except Exception:  # noqa: BLE001 - the lane must outlive any one failure
                log.exception("webhook %s: delivery failed", self.spec.name)
            finally:
                self.in_flight = False
                self._on_status()

    def deliver(self, delivery: Delivery) -> bool:
        """Try one delivery: up to max_attempts POSTs, backing off between them; True once the receiver took it."""
        delays = retry_delays(self.spec.max_attempts, self.retry_base)
        for attempt in range(self.spec.max_attempts):
            if attempt:
                self.retries += 1
                if self._stop.wait(delays[attempt - 1]):
                    return False
            now = self._clock()
            body = encode(payload(delivery.change, self.dashboard_url, now))
            status: int | None
            try:
                status = self._post(self.spec.url, body, request_headers(self.spec, body, now), self.spec.timeout)
                error = None if 200 <= status < 300 else f"HTTP {status}"
            except (OSError, ValueError, urllib.error.URLError) as exc:
                status, error = None, self._describe(exc)
            if error is None:
                self.sent += 1
                self.last_sent_at = self._clock()
                return True
            self.last_error, self.last_error_at = error, self._clock()
            final = attempt + 1 == self.spec.max_attempts or not retryable(status)
            log.log(logging.WARNING if final else logging.INFO, "webhook %s: %s (%s %s, attempt %d of %d)%s",
                    self.spec.name, error, delivery.change.status, delivery.change.alert.key[:100], attempt + 1,
                    self.spec.max_attempts, "; given up" if final else "")
            self._on_status()
            if final:
                break
        self.failed += 1
        return False

    def _describe(self, exc: BaseException) -> str:
        text = reason(getattr(exc, "reason", None) or exc).replace(self.spec.url, mask_endpoint(self.spec.url))
        if isinstance(exc, TimeoutError) or "timed out" in text:
            text = f"no answer within {self.spec.timeout:g} s"
        return text[:MAX_ERROR_CHARS]

    def to_dict(self) -> dict[str, Any]:
        """What the status API and page show (the URL masked)."""
        return {
            "name": self.spec.name, "url": mask_endpoint(self.spec.url), "events": sorted(self.spec.events),
            "kinds": sorted(self.spec.kinds) if self.spec.kinds is not None else None,
            "sent": self.sent, "failed": self.failed, "retries": self.retries, "dropped": self.dropped,
            "pending": self.pending, "last_error": self.last_error, "last_error_at": self.last_error_at,
            "last_sent_at": self.last_sent_at,
        }


class AlertNotifier:
    """Alert changes -> the webhooks that hear them, unless the alert's key is silenced."""

    def __init__(self, specs: Iterable[WebhookSpec], marks: AlertMarks, hub: Hub, *,
                 dashboard_url: str | None = None, post: Post = http_post,
                 clock: Callable[[], float] = time.time, queue_size: int = QUEUE_SIZE,
                 retry_base: float = RETRY_BASE_SECONDS) -> None:
        self.marks = marks
        self.hub = hub
        self.suppressed = 0  # changes not sent because their alert was silenced
        self.lanes = tuple(WebhookLane(spec, dashboard_url, self._status_changed, post=post, clock=clock,
                                       queue_size=queue_size, retry_base=retry_base) for spec in specs)

    def notify(self, change: AlertChange) -> None:
        """Queue `change` for every webhook that hears it (the routing job's hook: O(webhooks), never blocks)."""
        if not self.lanes:
            return
        if self.marks.silenced(change.alert.key) is not None:
            self.suppressed += 1
            return
        for lane in self.lanes:
            if lane.spec.wants(change):
                lane.put(change)
        self._status_changed()

    def _status_changed(self) -> None:
        self.hub.publish("webhook", "")  # the alerts page redraws its webhook status

    def start(self) -> None:
        """Start every lane's thread (with the monitor)."""
        for lane in self.lanes:
            lane.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every lane's thread, all within `timeout` (a lane stuck in a POST is a daemon: left behind)."""
        deadline = time.monotonic() + timeout
        for lane in self.lanes:
            lane.signal_stop()
        for lane in self.lanes:
            lane.join(deadline - time.monotonic())

    @property
    def failing(self) -> list[WebhookLane]:
        """Lanes whose latest attempt failed (no success since)."""
        return [lane for lane in self.lanes if lane.last_error_at is not None
                and (lane.last_sent_at is None or lane.last_sent_at < lane.last_error_at)]

    def status(self) -> dict[str, Any]:
        """Every webhook's counters and last error, for /api/status and the alerts page."""
        return {"webhooks": [lane.to_dict() for lane in self.lanes], "suppressed": self.suppressed}
