"""The queue browser's base: peek at a queue's messages without consuming them, move, purge, delete by name.

One implementation per transport (redis.py, amqp.py), both built on this module and never on each other.
Decoding the messages and choosing which ones an action takes is the pure model's (dashboard.model.messages).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Final

from ...model.messages import MAX_PAGE, Envelope, QueuedMessage, Selection, decode_task, task_name_and_id

MOVE_BATCH: Final = 1_000  # messages read, then moved atomically, per round trip


@dataclass(frozen=True, slots=True)
class QueuePeek:
    """A page of a queue's messages in the order a worker would receive them, and the queue's depth."""

    queue: str
    depth: int
    offset: int
    messages: tuple[QueuedMessage, ...]
    exists: bool  # False: no message waits (on Redis an empty queue is no key at all) or the queue was deleted
    requeued: bool = False  # read by taking and requeueing (RabbitMQ's management API): flagged redelivered


class QueueBrowser(ABC):
    """Peek, move, purge and delete messages on one broker. Every failure to reach it is BrokerUnavailable."""

    transport: str = ""
    #: How a peek reads the messages, for the page and the README's trade-off.
    peek_method: str = ""

    @abstractmethod
    def peek(self, queue: str, limit: int, offset: int = 0) -> QueuePeek:
        """Up to `limit` messages from `offset`, in serving order, none consumed (CannotPeek when impossible)."""

    @abstractmethod
    def depth(self, queue: str) -> int:
        """How many messages wait in `queue` (0 when it does not exist)."""

    @abstractmethod
    def move(self, queue: str, to: str, selection: Selection) -> int:
        """Move the selected messages to `to`, oldest first, each exactly once; how many moved.

        ActionInterrupted when the broker fails halfway: the messages not yet moved stay in `queue`.
        """

    @abstractmethod
    def delete(self, queue: str, selection: Selection) -> int:
        """Delete the selected messages; how many. ActionInterrupted as for move."""

    @abstractmethod
    def purge(self, queue: str) -> int:
        """Delete every message waiting in `queue`; how many."""

    @abstractmethod
    def close(self) -> None:
        """Release the connections."""


def checked_page(limit: int, offset: int) -> tuple[int, int]:
    """The page bounds every browser applies: 1..MAX_PAGE messages from an offset >= 0."""
    return max(1, min(limit, MAX_PAGE)), max(0, offset)


def page_slices(lengths: list[int], offset: int, limit: int) -> list[tuple[int, int, int]]:
    """Which part of each list a page covers, lists taken in serving order one after the other: (list index,
    first, last) positions counted from the list's tail (0 = served next), inclusive."""
    slices = []
    start = 0
    for index, length in enumerate(lengths):
        first, last = max(offset - start, 0), min(offset + limit - start, length) - 1
        if first <= last:
            slices.append((index, first, last))
        start += length
    return slices


def selected(envelope: Envelope, selection: Selection) -> bool:
    """True when `selection` takes this message (without decoding its arguments when the headers suffice)."""
    if selection.everything:
        return True
    name, task_id = task_name_and_id(envelope)
    return selection.matches(name, task_id)


def decoded(envelopes: list[Envelope]) -> tuple[QueuedMessage, ...]:
    """The page's messages, decoded for display."""
    return tuple(decode_task(envelope) for envelope in envelopes)


def remaining(selection: Selection, done: int) -> int | None:
    """How many more messages the selection's limit allows (None: no limit)."""
    return None if selection.limit is None else max(0, selection.limit - done)
