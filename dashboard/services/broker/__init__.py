"""Broker inspection: which queues the broker holds and how many messages wait in each, one module per transport
(redis.py, amqp.py) behind one interface; urls.py is what both share."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from ...exceptions import ConfigError
from ...model.routing import BrokerQueue
from .queues import QueueBrowser
from .urls import AMQP_SCHEMES, REDIS_SCHEMES, broker_scheme, shown_url

__all__ = ["AMQP_SCHEMES", "REDIS_SCHEMES", "BrokerInspector", "QueueBrowser", "broker_inspector", "broker_scheme",
           "queue_browser", "shown_url"]


class BrokerInspector(Protocol):
    """The broker side of the routing comparison; one implementation per transport."""

    def queues(self, known: Iterable[str] = ()) -> list[BrokerQueue]:
        """Queues found on the broker plus `known`, with their depth, sorted by name."""
        ...

    def close(self) -> None:
        """Release the connections."""
        ...


def broker_inspector(broker_url: str, transport_options: Mapping[str, Any], timeout: float) -> BrokerInspector:
    """The inspector for the broker URL's transport; ConfigError for a transport not supported (yet)."""
    scheme = broker_scheme(broker_url)
    if scheme in REDIS_SCHEMES:
        from .redis import RedisBrokerInspector

        return RedisBrokerInspector(broker_url, transport_options, timeout)
    if scheme in AMQP_SCHEMES:
        from .amqp import AmqpBrokerInspector  # imported on use: kombu's amqp transport is not needed for Redis

        return AmqpBrokerInspector(broker_url, transport_options, timeout)
    raise ConfigError(
        f"broker {shown_url(broker_url)!r}: cannot inspect queues on a {scheme!r} broker; "
        "supported: redis://, rediss://, redis+socket://, amqp:// and amqps://"
    )


def queue_browser(broker_url: str, transport_options: Mapping[str, Any], timeout: float) -> QueueBrowser:
    """The queue browser (peek, move, purge, delete) for the broker URL's transport, on connections of its own."""
    inspector = broker_inspector(broker_url, transport_options, timeout)
    if broker_scheme(broker_url) in REDIS_SCHEMES:
        from .redis import RedisBrokerInspector
        from .redis_queues import RedisQueueBrowser

        assert isinstance(inspector, RedisBrokerInspector)
        return RedisQueueBrowser(inspector)
    from .amqp import AmqpBrokerInspector
    from .amqp_queues import AmqpQueueBrowser

    assert isinstance(inspector, AmqpBrokerInspector)
    return AmqpQueueBrowser(inspector)
