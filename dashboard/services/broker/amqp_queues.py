"""The queue browser on RabbitMQ: peek through the management API's get-with-requeue (or refuse), move and delete the
way celery.contrib.migrate does (consume with acks, republish, ack), purge with queue.purge. Connections, the
management API's address and error translation are the AmqpBrokerInspector's (amqp.py)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, Final
from urllib.parse import quote

import kombu
from celery.contrib.migrate import republish

from ...exceptions import ActionInterrupted, BrokerUnavailable, CannotPeek, QueueNotFound
from ...model.messages import Envelope, Selection, management_envelope
from .amqp import NOT_FOUND, AmqpBrokerInspector, QueueStat
from .queues import QueueBrowser, QueuePeek, checked_page, decoded, remaining, selected

_kombu: Any = kombu  # Queue, Exchange, Producer and Consumer: untyped

MAX_PEEK_WINDOW: Final = 2_000  # offset + limit: the management API takes (and requeues) that many to show a page
PEEK_TRUNCATE: Final = 256 * 1024  # bytes of each payload the management API returns
PREFETCH: Final = 1_000  # deliveries in flight when every message is taken
IDLE_WAIT: Final = 1.0  # a move stops when no message came for this long (the rest were taken by others)


class AmqpQueueBrowser(QueueBrowser):
    """Queue messages on RabbitMQ.

    Peeking: AMQP has no way to read a message without taking it, so a page is read through the management API's
    `POST /api/queues/<vhost>/<queue>/get` with ``ackmode=ack_requeue_true``: RabbitMQ hands the messages over and
    puts them back at once, in place, flagged redelivered (a worker consuming the queue at that moment may get
    one of them a moment later). Without ``management_url`` it refuses (CannotPeek) rather than requeue by AMQP.

    Moving and deleting follow celery.contrib.migrate: consume with manual acks, republish with Celery's own
    `republish` (raw body, headers and properties kept) under publisher confirms, then ack. Messages that are not
    selected stay unacknowledged until the connection closes, and RabbitMQ requeues them then; a broker failure
    halfway requeues every message not yet acknowledged. Bodies are never decoded beyond JSON (no pickle).
    """

    transport = "amqp"

    def __init__(self, inspector: AmqpBrokerInspector) -> None:
        self.inspector = inspector
        self.timeout = inspector.timeout
        self.peek_method = ("the management API's get with requeue (messages are taken and put back at once)"
                            if inspector.management is not None else "")

    # -- reading -------------------------------------------------------------------------------------------------

    def _stat(self, queue: str) -> QueueStat:
        stat = self.inspector.declare(queue)
        if stat.exists and stat.depth is None:
            raise BrokerUnavailable(f"RabbitMQ would not measure queue {queue!r} (another connection's exclusive "
                                    "queue?)")
        return stat

    def depth(self, queue: str) -> int:
        """A passive declare's message count (0 when the queue does not exist)."""
        return self._stat(queue).depth or 0

    def peek(self, queue: str, limit: int, offset: int = 0) -> QueuePeek:
        """The management API's get with requeue, or CannotPeek when it is not configured."""
        limit, offset = checked_page(limit, offset)
        stat = self._stat(queue)
        if not stat.exists:
            return QueuePeek(queue, 0, offset, (), exists=False)
        api = self.inspector.management
        if api is None:
            raise CannotPeek(
                f"queue {queue!r} holds {stat.depth} message(s), but RabbitMQ cannot show them without taking "
                "them: set broker_transport_options.management_url so the management API can read them and "
                "requeue them at once (see the README's queue browser section for the trade-off)"
            )
        count = min(offset + limit, MAX_PEEK_WINDOW, stat.depth or 0)
        if count <= offset:
            return QueuePeek(queue, stat.depth or 0, offset, (), exists=True, requeued=False)
        path = f"queues/{quote(self.inspector.vhost, safe='')}/{quote(queue, safe='')}/get"
        body = {"count": count, "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": PEEK_TRUNCATE}
        items = api.post_json(path, body, self.timeout)
        if items is None:
            raise QueueNotFound(f"queue {queue!r} does not exist on the broker (the management API answered 404)")
        if not isinstance(items, list):
            raise BrokerUnavailable(f"the management API at {api.base_url} answered a {type(items).__name__}, "
                                    "not a list of messages")
        envelopes = [management_envelope(item) for item in items[offset:offset + limit] if isinstance(item, dict)]
        return QueuePeek(queue, stat.depth or 0, offset, decoded(envelopes), exists=True, requeued=True)

    # -- acting --------------------------------------------------------------------------------------------------

    @contextmanager
    def _session(self, done: Callable[[], int] | None = None) -> Iterator[Any]:
        """A connection of its own with publisher confirms; failures become BrokerUnavailable (ActionInterrupted
        once something was done)."""
        connection = self.inspector.connection(confirm_publish=True)
        try:
            with self.inspector.translated():
                connection.ensure_connection(max_retries=max(len(connection.alt), 1) - 1, timeout=self.timeout)
            try:
                with self.inspector.translated():
                    yield connection
            except BrokerUnavailable as exc:
                count = done() if done is not None else 0
                if count:
                    raise ActionInterrupted(f"{exc}; {count} message(s) were handled before that, the others "
                                            "stay where they were", count) from None
                raise
        finally:
            try:  # a polite close: RabbitMQ requeues what was not acknowledged at once
                connection.release()
            except self.inspector.errors:
                connection.collect()

    def _exists(self, connection: Any, queue: str) -> bool:
        channel = connection.channel()
        try:
            channel.queue_declare(queue=queue, passive=True)
        except self.inspector.channel_errors as exc:
            if getattr(exc, "code", None) == NOT_FOUND:
                return False
            raise
        finally:
            with suppress(*self.inspector.errors):
                channel.close()
        return True

    def purge(self, queue: str) -> int:
        """queue.purge: the ready messages are deleted by RabbitMQ in one step."""
        with self._session() as connection:
            if not self._exists(connection, queue):
                raise QueueNotFound(f"queue {queue!r} does not exist on the broker")
            channel = connection.channel()
            return int(channel.queue_purge(queue=queue) or 0)

    def move(self, queue: str, to: str, selection: Selection) -> int:
        """Consume, republish to `to` through the default exchange (confirmed), then ack — one message at a time."""
        done = 0

        def count() -> int:
            return done

        with self._session(count) as connection:
            if not self._exists(connection, queue):
                raise QueueNotFound(f"queue {queue!r} does not exist on the broker")
            if not self._exists(connection, to):
                # Declared as Celery declares a queue of that name, so the first worker that consumes it agrees.
                target = _kombu.Queue(to, _kombu.Exchange(to, type="direct"), routing_key=to)
                target(connection.channel()).declare()
            producer = _kombu.Producer(connection.channel(), auto_declare=False)

            def move_one(message: Any) -> None:
                nonlocal done
                republish(producer, message, exchange="", routing_key=to)  # the default exchange: straight to `to`
                message.ack()
                done += 1

            self._each_selected(connection, queue, selection, move_one, count)
        return done

    def delete(self, queue: str, selection: Selection) -> int:
        """Consume and ack the selected messages without republishing them."""
        done = 0

        def count() -> int:
            return done

        with self._session(count) as connection:
            if not self._exists(connection, queue):
                raise QueueNotFound(f"queue {queue!r} does not exist on the broker")

            def delete_one(message: Any) -> None:
                nonlocal done
                message.ack()
                done += 1

            self._each_selected(connection, queue, selection, delete_one, count)
        return done

    def _each_selected(self, connection: Any, queue: str, selection: Selection, act: Callable[[Any], None],
                       done: Callable[[], int]) -> None:
        """Consume `queue` once through (as many messages as it held when we started), acting on the selected
        ones; the others stay unacknowledged, so RabbitMQ requeues them when the connection closes."""
        channel = connection.channel()
        depth = int(channel.queue_declare(queue=queue, passive=True).message_count)

        # Deliveries are queued here and handled outside the callback: waiting for a publisher confirm drains the
        # connection, which would otherwise hand over the next message before this one is counted.
        delivered: deque[Any] = deque()
        seen = 0
        # Moving everything acks as it goes, so a window bounds what is held here; a filtered move keeps the
        # unselected messages unacknowledged to the end, and a window would fill up with them.
        channel.basic_qos(0, PREFETCH if selection.everything else 0, False)
        consumer = _kombu.Consumer(channel, queues=[_kombu.Queue(queue, no_declare=True)],
                                   on_message=delivered.append, accept=[], no_ack=False, auto_declare=False)
        with consumer:
            while seen < depth and ((left := remaining(selection, done())) is None or left > 0):
                if not delivered:
                    try:
                        connection.drain_events(timeout=min(self.timeout, IDLE_WAIT))
                    except TimeoutError:  # socket.timeout: nothing more came (others took the rest)
                        break
                    continue
                message = delivered.popleft()
                seen += 1
                body = message.body or b""
                envelope = Envelope(body.encode("utf-8", "surrogatepass") if isinstance(body, str) else bytes(body),
                                    str(message.content_type or ""), str(message.content_encoding or ""),
                                    message.headers or {}, message.properties.get("priority"))
                if selected(envelope, selection):
                    act(message)

    def close(self) -> None:
        """The inspector owns the kept connection."""
        self.inspector.close()
