"""The send-only Celery client: publishes tasks by name with bounded timeouts; never imports worker code."""

from __future__ import annotations

import contextlib
import fnmatch
import importlib
import logging
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery
from celery.app.routes import MapRoute
from kombu.entity import Queue
from kombu.exceptions import KombuError, OperationalError

from ..config import Config
from ..exceptions import BrokerUnavailable, ConfigError, RoutingError
from ..model.dispatch import DispatchOptions, DispatchRequest
from ..model.routing import RouteSource
from ..model.secrets import mask_url, reason

log = logging.getLogger(__name__)

STALE_CONNECTION_WINDOW = 0.5  # a failure faster than this was a dead pooled connection, not a slow broker
# Publishes in flight at once. kombu's producer pool (broker_pool_limit, 10) makes any more wait for a free
# connection without a deadline: against a hung broker 100 concurrent dispatches queued for 20 s. Past this
# bound a dispatch waits at most SLOT_WAIT_SECONDS for a slot, then fails with a clear 503, so every answer
# comes within about broker_timeout + SLOT_WAIT_SECONDS.
MAX_PUBLISHES_AT_ONCE = 8
SLOT_WAIT_SECONDS = 0.5

# redis-py raises its own ConnectionError/TimeoutError, which kombu does not always wrap.
BROKER_ERRORS: tuple[type[BaseException], ...] = (OperationalError, KombuError, OSError, TimeoutError)
try:
    import redis.exceptions as _redis_exc

    BROKER_ERRORS += (_redis_exc.ConnectionError, _redis_exc.TimeoutError)
except ImportError:  # pragma: no cover - celery[redis] brings redis
    pass
# py-amqp's own errors (AccessRefused, PreconditionFailed, ...) are not all wrapped by kombu either.
from amqp.exceptions import ChannelError as AmqpChannelError  # noqa: E402
from kombu.transport.pyamqp import Transport as _AmqpTransport  # noqa: E402

BROKER_ERRORS += (*_AmqpTransport.connection_errors, *_AmqpTransport.channel_errors)


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """Which route decided a destination: an explicit queue, a task_routes entry, or the default queue."""

    kind: RouteSource
    pattern: str | None = None  # the task_routes key that matched, for kind == "route"
    router: str | None = None  # a description of a non-mapping router that matched


@dataclass(frozen=True, slots=True)
class Resolution:
    """Where Celery's router sends a task: the same code path `send_task` takes."""

    name: str
    queue: str
    exchange: str
    routing_key: str
    source: RouteMatch
    #: What Celery's router answered (queue, exchange, routing_key...): handed back to `send_task` as is, so that
    #: publishing does not route a second time.
    destination: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "queue": self.queue,
            "exchange": self.exchange,
            "routing_key": self.routing_key,
            "matched": self.source.kind,
            "pattern": self.source.pattern,
            "router": self.source.router,
        }


@dataclass(frozen=True, slots=True)
class SentTask:
    """A task the broker accepted."""

    task_id: str
    name: str
    resolution: Resolution
    sent_at: float
    options: DispatchOptions = field(default_factory=DispatchOptions)


@dataclass(frozen=True)
class ClientSettings:
    """What the send-only app is built from: the dashboard config, or the user's own client app."""

    broker_url: str
    result_backend: str | None
    task_routes: Any
    task_default_queue: str
    task_queues: Any = None
    task_create_missing_queues: bool = True
    broker_transport_options: Mapping[str, Any] = field(default_factory=dict)
    timeout: float = 2.0
    origin: str = "config"

    @classmethod
    def from_config(cls, config: Config) -> ClientSettings:
        """Settings from the dashboard's own config, or from `config.client_app` when it names one."""
        if config.client_app:
            return cls.from_celery_app(load_client_app(config.client_app), config)
        return cls(
            broker_url=config.broker_url,
            result_backend=config.result_backend,
            task_routes={pattern: dict(route) for pattern, route in config.routes.items()},
            task_default_queue=config.task_default_queue,
            broker_transport_options=dict(config.broker_transport_options),
            timeout=config.broker_timeout,
            origin=config.source or "config",
        )

    @classmethod
    def from_celery_app(cls, app: Celery, config: Config) -> ClientSettings:
        """The API side as the user's own send-only app has it: broker, backend and routing settings."""
        conf = app.conf
        return cls(
            broker_url=conf.broker_url or config.broker_url,
            result_backend=conf.result_backend or config.result_backend,
            task_routes=conf.task_routes,
            task_default_queue=conf.task_default_queue,
            task_queues=conf.task_queues,
            task_create_missing_queues=bool(conf.task_create_missing_queues),
            broker_transport_options=dict(conf.broker_transport_options or {}),
            timeout=config.broker_timeout,
            origin=f"client app {config.client_app}",
        )


def load_client_app(spec: str) -> Celery:
    """Import `module:attribute` (from the current directory too) and return the Celery app it names."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"--client-app {spec!r}: expected module:attribute, like app.celery_client:celery_app")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--client-app {spec!r}: cannot import {module_name}: {exc}") from None
    target = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(f"--client-app {spec!r}: {module_name} has no attribute {attribute}") from None
    if not isinstance(target, Celery):
        raise ConfigError(f"--client-app {spec!r}: {attribute} is a {type(target).__name__}, not a Celery app")
    return target


class SendOnlyClient:
    """Publishes tasks by name through a Celery app that knows no task code, with every wait bounded."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self.app = build_send_only_app(settings)
        self.results = build_result_app(settings)
        self._globs = _glob_sources(settings.task_routes)
        self._slots = threading.BoundedSemaphore(MAX_PUBLISHES_AT_ONCE)

    @property
    def broker_display(self) -> str:
        """The broker URL with its password masked."""
        return mask_url(self.settings.broker_url)

    def resolve(
        self, name: str, options: DispatchOptions | None = None, args: Any = (), kwargs: Any = None
    ) -> Resolution:
        """Where `send_task(name, ...)` would publish, resolved by Celery's own router."""
        wanted: dict[str, Any] = {}
        if options is not None and options.queue:
            wanted["queue"] = options.queue
        router = self.app.amqp.router
        try:
            route = router.route(wanted, name, args, kwargs or {})
        except RoutingError:
            raise
        except Exception as exc:  # noqa: BLE001 - user-supplied routers may raise anything
            raise RoutingError(f"Celery's router failed for {name!r}: {exc}") from exc
        queue = route.get("queue")
        if isinstance(queue, Queue):
            queue_name = queue.name
            exchange = route.get("exchange") or (queue.exchange.name if queue.exchange else "")
            routing_key = route.get("routing_key") or queue.routing_key or queue_name
        else:
            queue_name = str(queue or route.get("routing_key") or "")
            exchange = str(route.get("exchange") or "")
            routing_key = str(route.get("routing_key") or queue_name)
        if hasattr(exchange, "name"):
            exchange = exchange.name
        return Resolution(name, queue_name, str(exchange), str(routing_key), self._route_match(name, wanted), route)

    def _route_match(self, name: str, wanted: Mapping[str, Any]) -> RouteMatch:
        """Which task_routes entry Celery matched, found by asking each prepared router in Celery's order."""
        if wanted.get("queue"):
            return RouteMatch("override")
        router = self.app.amqp.router
        for index, candidate in enumerate(router.routes):
            if isinstance(candidate, MapRoute):
                if name in candidate.map:
                    return RouteMatch("route", pattern=name)
                for regex in candidate.patterns:
                    if regex.match(name):
                        source = getattr(regex, "pattern", str(regex))
                        return RouteMatch("route", pattern=self._globs.get(source, source))
                continue
            try:
                found = router.query_router(candidate, name, (), {}, {}, None)
            except Exception:  # noqa: BLE001 - user routers; resolve() already reported failures
                found = None
            if found:
                return RouteMatch("route", router=f"router #{index + 1}: {_describe(candidate)}")
        return RouteMatch("default")

    def send(self, request: DispatchRequest, resolution: Resolution | None = None,
             task_id: str | None = None) -> SentTask:
        """Publish the task (as `task_id` when given) where `resolution` says (resolved here when not given); raise
        BrokerUnavailable within the timeouts when the broker cannot take it."""
        if resolution is None:
            resolution = self.resolve(request.name, request.options, request.args, request.kwargs)
        options = request.options.as_celery_options()
        options.pop("queue", None)  # the resolution's destination has it, with its exchange and routing key
        options["router"] = _Resolved(resolution)
        if task_id is not None:
            options["task_id"] = task_id
        started = time.monotonic()
        if not self._slots.acquire(timeout=min(SLOT_WAIT_SECONDS, self.settings.timeout)):
            message = (f"the broker at {self.broker_display} is not answering: {MAX_PUBLISHES_AT_ONCE} dispatches "
                       "are already waiting on it; nothing was sent")
            log.warning("dispatch of %s refused: %s", request.name, message)
            raise BrokerUnavailable(message)
        try:
            task_id = self._publish(request, options)
        except BROKER_ERRORS as exc:
            elapsed = time.monotonic() - started
            message = f"the broker at {self.broker_display} did not take the task ({reason(exc)}) after {elapsed:.1f}s"
            if not _refused(exc):
                # The connection broke after the message may have gone out: Redis can store it and die before
                # it answers. Say so, rather than invite a blind resend that would run the task twice.
                message += "; it may still have been stored: check the queue or the task list before sending again"
            log.warning("dispatch of %s failed: %s", request.name, message)
            raise BrokerUnavailable(message) from None
        finally:
            self._slots.release()
        return SentTask(task_id, request.name, resolution, time.time(), request.options)

    def _publish(self, request: DispatchRequest, options: dict[str, Any]) -> str:
        """Publish once; if that failed at once (a pooled connection a broker restart killed), once more.

        Celery's own retry would add a full socket timeout per attempt against a broker that hangs, so a
        timed-out attempt is never repeated: the worst case stays near one `broker_timeout`.
        """
        for attempt in (1, 2):
            attempt_started = time.monotonic()
            try:
                # On Redis the message and its task-sent event go in one pipelined round trip (kombu's publish
                # batch, flushed when the block ends); other transports publish each at once, as before.
                with self.app.producer_or_acquire() as producer, _batch(producer):
                    result = self.app.send_task(request.name, args=list(request.args), kwargs=dict(request.kwargs),
                                                retry=False, producer=producer, **options)
                return str(result.id)
            except BROKER_ERRORS:
                if attempt == 2 or time.monotonic() - attempt_started > STALE_CONNECTION_WINDOW:
                    raise
        raise AssertionError("unreachable")

    def result_state(self, task_id: str) -> dict[str, Any] | None:
        """The task's state and result from the result backend, or None when there is no backend."""
        if self.results is None:
            return None
        try:
            result = self.results.AsyncResult(task_id)
            state = result.state
            value = result.result if state in ("SUCCESS", "FAILURE", "RETRY", "PROGRESS") else None
            return {"state": state, "result": value, "traceback": result.traceback}
        except BROKER_ERRORS as exc:
            raise BrokerUnavailable(f"the result backend did not answer ({reason(exc)})") from None
        except RuntimeError as exc:  # Celery's "Retry limit exceeded" wraps the connection error
            cause = exc.__cause__ or exc
            raise BrokerUnavailable(f"the result backend did not answer ({reason(cause)})") from None

    def close(self) -> None:
        """Release the apps' connections."""
        self.app.close()
        if self.results is not None:
            self.results.close()


def build_send_only_app(settings: ClientSettings) -> Celery:
    """A Celery app that only publishes: no task modules, bounded sockets, task-sent events on."""
    timeout = settings.timeout
    # No result backend here, on purpose: with one, send_task first subscribes to the task's result channel,
    # and against a dead Redis Celery's backend retries that 20 times (~20 s, or a minute when Redis hangs)
    # before publishing anything. Results are read through a separate app (build_result_app).
    app = Celery("dispatch-dashboard", set_as_current=False, broker=settings.broker_url)
    transport_options = dict(settings.broker_transport_options)
    # Defaults retry forever in some paths, and a broker that accepts TCP but never answers hangs for good.
    transport_options.update(
        {"max_retries": 0, "socket_connect_timeout": timeout, "socket_timeout": timeout, "connect_timeout": timeout}
    )
    if settings.broker_url.split(":", 1)[0].lower() in ("amqp", "amqps", "pyamqp"):
        # Without publisher confirms, a publish into a connection RabbitMQ just dropped "succeeds" and is lost.
        transport_options.update({"read_timeout": timeout, "write_timeout": timeout, "confirm_publish": True})
    app.conf.update(
        task_routes=settings.task_routes,
        task_default_queue=settings.task_default_queue,
        task_create_missing_queues=settings.task_create_missing_queues,
        task_send_sent_event=True,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        broker_transport_options=transport_options,
        broker_connection_timeout=timeout,
        broker_connection_retry=False,
        broker_connection_max_retries=0,
        broker_connection_retry_on_startup=False,
        redis_socket_timeout=timeout,
        redis_socket_connect_timeout=timeout,
        redis_retry_on_timeout=False,
        result_backend_always_retry=False,
        result_extended=True,
        enable_utc=True,
    )
    if settings.task_queues is not None:
        app.conf.task_queues = settings.task_queues
    return app


def build_result_app(settings: ClientSettings) -> Celery | None:
    """A Celery app that only reads the result backend, failing fast (None without a backend)."""
    if not settings.result_backend:
        return None
    timeout = settings.timeout
    app = Celery("dispatch-dashboard-results", set_as_current=False, broker=settings.broker_url,
                 backend=settings.result_backend)
    app.conf.update(
        accept_content=["json"],
        result_serializer="json",
        result_extended=True,
        result_backend_always_retry=False,
        result_backend_transport_options={"retry_policy": {"max_retries": 0}},
        redis_socket_timeout=timeout,
        redis_socket_connect_timeout=timeout,
        redis_retry_on_timeout=False,
    )
    return app


class _Resolved:
    """A router that answers what `SendOnlyClient.resolve` already found, so `send_task` does not route again."""

    def __init__(self, resolution: Resolution) -> None:
        self.resolution = resolution

    def route(self, options: dict[str, Any], name: str, args: Any = (), kwargs: Any = None,
              task_type: Any = None) -> dict[str, Any]:
        """The resolved destination, the call's own options (countdown, priority...) over it (Celery's lpmerge)."""
        destination = dict(self.resolution.destination) or {"queue": self.resolution.queue}
        destination.update((key, value) for key, value in options.items() if value is not None)
        return destination


def _batch(producer: Any) -> contextlib.AbstractContextManager[Any]:
    """kombu's publish batch where it has one (kombu 5.7+), else publishing at once."""
    batch = getattr(producer, "batch", None)
    return batch() if batch is not None else contextlib.nullcontext()


def _glob_sources(task_routes: Any) -> dict[str, str]:
    """Map each compiled glob's regex source back to the glob the user wrote, for display."""
    tables = task_routes if isinstance(task_routes, (list, tuple)) else [task_routes]
    sources: dict[str, str] = {}
    for table in tables:
        if isinstance(table, Mapping):
            for key in table:
                if isinstance(key, str) and "*" in key:
                    sources[fnmatch.translate(key)] = key
    return sources


def _describe(router: Any) -> str:
    name = getattr(router, "__qualname__", None) or type(router).__name__
    return str(name)


def _refused(exc: BaseException) -> bool:
    """True when the broker surely never took the message.

    The connection itself was refused, or RabbitMQ refused an operation on the channel (a channel error such
    as 406 PRECONDITION_FAILED on the queue declare that comes before the publish, or 404 for a missing
    exchange): with publisher confirms on, a message the channel failed on was not accepted.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ConnectionRefusedError, AmqpChannelError)) or "refused" in str(current).lower():
            return True
        current = current.__cause__ or current.__context__
    return False


