"""kombu's key layout on Redis, and which bindings are Celery's own plumbing. Pure: no I/O.

Checked against kombu 5.7's transport/redis.py:

- a queue is a list named after it; messages with a priority go to ``name + sep + step`` for each step of
  ``priority_steps`` except 0, which uses the bare name (defaults: sep ``"\\x06\\x16"``, steps 0, 3, 6, 9);
- every bind adds ``routing_key + sep + pattern + sep + queue`` to the set ``_kombu.binding.<exchange>``, so
  a queue that `send_task` declared is listed even when no worker ever consumed it (kombu 5.7 also mirrors the
  non-expiring ones into ``_kombu.binding_permanent.<exchange>``, which the scan pattern does not match);
- delivered but unacknowledged messages sit in the hash ``unacked`` (delivery tag -> message), not per queue;
- ``global_keyprefix`` is prepended to all of those keys (kombu's GlobalKeyPrefixMixin prefixes LLEN, SADD,
  SMEMBERS, HSET, ...); empty lists do not exist as keys, so an absent queue simply has depth 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ..exceptions import ConfigError

KOMBU_SEP: Final = "\x06\x16"
KOMBU_PRIORITY_STEPS: Final[tuple[int, ...]] = (0, 3, 6, 9)
KOMBU_UNACKED_KEY: Final = "unacked"
BINDING_KEY: Final = "_kombu.binding."  # + exchange
EVENT_EXCHANGE: Final = "celeryev"
EVENT_QUEUE_PREFIX: Final = "celeryev."
PIDBOX_SUFFIX: Final = ".pidbox"  # celery.pidbox, reply.celery.pidbox and their queues, any control_exchange


@dataclass(frozen=True, slots=True)
class Binding:
    """One member of a kombu binding set: exchange -> queue by routing key (and pattern, for topics)."""

    exchange: str
    routing_key: str
    pattern: str
    queue: str


@dataclass(frozen=True, slots=True)
class KombuRedisLayout:
    """Key names of kombu's Redis transport under the given transport options. Pure: no I/O."""

    prefix: str = ""
    sep: str = KOMBU_SEP
    priority_steps: tuple[int, ...] = KOMBU_PRIORITY_STEPS
    unacked_key: str = KOMBU_UNACKED_KEY

    @classmethod
    def from_transport_options(cls, options: Mapping[str, Any]) -> KombuRedisLayout:
        """The layout kombu uses with these `broker_transport_options`; ConfigError when they are malformed."""
        prefix = options.get("global_keyprefix") or ""
        sep = options.get("sep") or KOMBU_SEP
        unacked_key = options.get("unacked_key") or KOMBU_UNACKED_KEY
        for name, value in (("global_keyprefix", prefix), ("sep", sep), ("unacked_key", unacked_key)):
            if not isinstance(value, str):
                raise ConfigError(f"broker_transport_options.{name} must be a string, not {value!r}")
        raw_steps = options.get("priority_steps", KOMBU_PRIORITY_STEPS)
        try:
            steps = tuple(sorted({int(step) for step in raw_steps}))
        except (TypeError, ValueError):
            raise ConfigError(
                f"broker_transport_options.priority_steps must be a list of integers, not {raw_steps!r}"
            ) from None
        if not steps or any(step < 0 for step in steps):
            raise ConfigError(f"broker_transport_options.priority_steps must list integers >= 0, not {raw_steps!r}")
        return cls(prefix, sep, steps, unacked_key)

    def queue_keys(self, queue: str) -> tuple[str, ...]:
        """The list keys holding `queue`'s waiting messages, one per priority step (kombu's `_q_for_pri`)."""
        return tuple(
            f"{self.prefix}{queue}{self.sep}{step}" if step else f"{self.prefix}{queue}" for step in self.priority_steps
        )

    @property
    def unacked(self) -> str:
        """The hash of delivered, not yet acknowledged messages."""
        return self.prefix + self.unacked_key

    @property
    def binding_pattern(self) -> str:
        """The SCAN MATCH pattern of the binding sets (the prefix's glob characters escaped)."""
        literal = "".join(f"\\{char}" if char in "\\*?[]" else char for char in self.prefix + BINDING_KEY)
        return literal + "*"

    def exchange_of(self, key: str) -> str | None:
        """The exchange a binding-set key names, or None when `key` is not one."""
        head = self.prefix + BINDING_KEY
        if not key.startswith(head) or len(key) == len(head):
            return None
        return key[len(head) :]

    def parse_member(self, exchange: str, member: str) -> Binding | None:
        """A binding-set member (``routing_key sep pattern sep queue``), or None when malformed."""
        parts = member.rsplit(self.sep, 2)
        if len(parts) != 3 or not parts[2]:
            return None
        routing_key, pattern, queue = parts
        return Binding(exchange, routing_key, pattern, queue)


def is_internal(binding: Binding) -> bool:
    """True for Celery's own plumbing: the event exchange and its queues, and the pidbox (remote control)."""
    exchange, queue = binding.exchange, binding.queue
    return (
        exchange == EVENT_EXCHANGE
        or exchange.endswith(PIDBOX_SUFFIX)
        or queue.startswith(EVENT_QUEUE_PREFIX)
        or queue.endswith(PIDBOX_SUFFIX)
    )


def user_queues(bindings: Iterable[Binding]) -> set[str]:
    """The queue names bound in `bindings`, Celery's internal ones left out."""
    return {binding.queue for binding in bindings if not is_internal(binding)}


def pidbox_hosts(bindings: Iterable[Binding], control_exchange: str = "celery") -> set[str]:
    """The hostnames of the workers whose remote-control queues are bound (``<hostname>.<exchange>.pidbox``):
    every worker that started on this broker and may still answer a ping (a dead one's binding can linger)."""
    exchange = f"{control_exchange}{PIDBOX_SUFFIX}"
    suffix = f".{exchange}"
    return {binding.queue.removesuffix(suffix) for binding in bindings
            if binding.exchange == exchange and binding.queue.endswith(suffix) and binding.queue != suffix}
