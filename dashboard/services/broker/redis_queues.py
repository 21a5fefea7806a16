"""The queue browser on Redis: peek with LRANGE (nothing taken), move and delete by an atomic Lua script per window,
purge in one MULTI. The key layout is dashboard.model.kombu's; connections and error translation are the
RedisBrokerInspector's (redis.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

from ...exceptions import ActionInterrupted, BrokerUnavailable
from ...model.messages import (
    Selection,
    load_redis_payload,
    redis_envelope,
    redis_name_and_id,
    retarget_redis_payload,
)
from .queues import MOVE_BATCH, QueueBrowser, QueuePeek, checked_page, decoded, page_slices, remaining
from .redis import RedisBrokerInspector

# One window of a move or delete, atomic. The caller read the window (`n` messages just past the `kept` ones at the
# tail, which it leaves in place) and says, per message in serving order, what becomes of it: ARGV = kept, n, a
# tombstone (a value no message has), then per message (as read, as it goes to the target), the second "" to keep
# it (for a delete, any other value takes it). The script checks the window is still exactly what was read (else
# -1: a worker changed the tail; the caller handles it), then pushes the taken ones onto the target (oldest
# first) and removes them from the source: with nothing kept, by popping the tail and pushing back the others;
# past kept messages, by overwriting each taken one with the tombstone (LSET) and removing the tombstones in one
# scan from the tail (LREM), so the kept messages are never copied. A Redis that dies between two windows leaves
# every message either moved or where it was.
_WINDOW_SCRIPT: Final = """
local kept, n, tombstone = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local window = redis.call('LRANGE', KEYS[1], -(kept + n), -(kept + 1))
if #window ~= n then return -1 end
for i = 1, n do
  if window[n - i + 1] ~= ARGV[2 + 2 * i] then return -1 end
end
local taken = 0
for i = 1, n do
  local replacement = ARGV[3 + 2 * i]
  if replacement ~= '' then
    if KEYS[2] ~= KEYS[1] then redis.call('LPUSH', KEYS[2], replacement) end
    taken = taken + 1
    if kept > 0 then redis.call('LSET', KEYS[1], -(kept + i), tombstone) end
  end
end
if kept > 0 then
  if taken > 0 then redis.call('LREM', KEYS[1], -taken, tombstone) end
  return taken
end
local popped = redis.call('RPOP', KEYS[1], n)
for i = n, 1, -1 do
  if ARGV[3 + 2 * i] == '' then redis.call('RPUSH', KEYS[1], popped[i]) end
end
return taken
"""
_IDLE_RETRIES: Final = 50  # windows in a row that changed under us and moved nothing: give up
# When the tail changed under a window (a worker took a message), its selected messages are handled by value
# instead, each atomically: LREM (count -1: from the tail) finds it wherever it now is, or finds it gone.
_BY_VALUE_SCRIPT: Final = """
local taken = 0
for i = 1, #ARGV, 2 do
  if redis.call('LREM', KEYS[1], -1, ARGV[i]) == 1 then
    if KEYS[2] ~= KEYS[1] then redis.call('LPUSH', KEYS[2], ARGV[i + 1]) end
    taken = taken + 1
  end
end
return taken
"""


class RedisQueueBrowser(QueueBrowser):
    """Queue messages on a Redis broker, read with LRANGE (nothing removed) and moved by an atomic Lua script.

    A queue is one list per priority step (dashboard.model.kombu); kombu pushes on the left (LPUSH) and workers
    pop from the right (BRPOP over the steps in ascending order), so serving order is: step 0's list from its
    tail, then step 3's, and so on. Moving keeps each message's step and its order.
    """

    transport = "redis"
    peek_method = "LRANGE over the queue's lists (nothing is taken)"

    def __init__(self, inspector: RedisBrokerInspector, *, batch: int = MOVE_BATCH) -> None:
        self.inspector = inspector
        self.layout = inspector.layout
        self.batch = batch
        client = inspector.client
        self._client = client
        self._window = client.register_script(_WINDOW_SCRIPT)
        self._by_value = client.register_script(_BY_VALUE_SCRIPT)

    @contextmanager
    def _translated(self, done: Callable[[], int] | None = None) -> Iterator[None]:
        try:
            with self.inspector.translated():
                yield
        except BrokerUnavailable as exc:
            if done is None:
                raise
            count = done()
            raise ActionInterrupted(f"{exc}; {count} message(s) were handled before that, the others stay where "
                                    "they were", count) from None

    def _lengths(self, queue: str) -> list[tuple[str, int]]:
        keys = self.layout.queue_keys(queue)
        with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.llen(key)
            replies: list[Any] = pipe.execute(raise_on_error=False)
        return [(key, reply if isinstance(reply, int) else 0) for key, reply in zip(keys, replies, strict=True)]

    def depth(self, queue: str) -> int:
        """Sum of LLEN over the priority sub-lists."""
        with self._translated():
            return sum(length for _, length in self._lengths(queue))

    def peek(self, queue: str, limit: int, offset: int = 0) -> QueuePeek:
        """LLEN of every sub-list, then LRANGE of the slices the page covers (two round trips, nothing taken)."""
        limit, offset = checked_page(limit, offset)
        with self._translated():
            lengths = self._lengths(queue)
            with self._client.pipeline(transaction=False) as pipe:
                for index, first, last in page_slices([length for _, length in lengths], offset, limit):
                    pipe.lrange(lengths[index][0], -(last + 1), -(first + 1))
                slices: list[Any] = pipe.execute(raise_on_error=False)
        raw: list[bytes] = []
        for items in slices:
            if isinstance(items, list):
                raw.extend(reversed(items))  # LRANGE reads head to tail; the tail is served first
        depth = sum(length for _, length in lengths)
        return QueuePeek(queue, depth, offset, decoded([redis_envelope(item) for item in raw[:limit]]),
                         exists=depth > 0)

    def target_binding(self, queue: str) -> tuple[str, str]:
        """(exchange, routing_key) a message for `queue` is delivered with: the queue's own binding when there is
        one (Celery binds a queue to an exchange of its name by default), else (queue, queue)."""
        bindings = [binding for binding in self.inspector.bindings() if binding.queue == queue]
        for binding in sorted(bindings, key=lambda b: (b.exchange != queue, b.exchange, b.routing_key)):
            return binding.exchange, binding.routing_key
        return queue, queue

    def move(self, queue: str, to: str, selection: Selection) -> int:
        """Move the selected messages, oldest first, keeping their priority step (see _WINDOW_SCRIPT)."""
        exchange, routing_key = self.target_binding(to)
        targets = dict(zip(self.layout.queue_keys(queue), self.layout.queue_keys(to), strict=True))

        def moved(raw: bytes, payload: Any) -> bytes | str:
            return retarget_redis_payload(raw, exchange, routing_key) or raw

        return self._each_selected(queue, selection, targets, moved)

    def delete(self, queue: str, selection: Selection) -> int:
        """Delete the selected messages, window by window (each atomic)."""
        keys = self.layout.queue_keys(queue)
        return self._each_selected(queue, selection, dict(zip(keys, keys, strict=True)), lambda raw, payload: "x")

    def _each_selected(self, queue: str, selection: Selection, targets: Mapping[str, str],
                       replacement: Callable[[bytes, Any], bytes | str]) -> int:
        """Walk every sub-list from its tail, window by window: the selected messages go to `targets[key]` as
        `replacement` makes them (to nowhere when the target is the list itself), the others stay in place.

        `kept` counts the messages left at the tail end, so the next window starts past them: a new message is
        pushed at the head and never shifts it. When the tail changed since the window was read (a worker took a
        message), that window's selected messages are moved by value and reading starts again from the tail: a
        message is never moved twice, never lost.
        """
        done = 0
        tombstone = f"\x00dispatch-dashboard-moved-{uuid.uuid4()}"  # no kombu message looks like this
        with self._translated(lambda: done):
            for key in self.layout.queue_keys(queue):
                kept = idle = 0
                while (left := remaining(selection, done)) is None or left > 0:
                    items: list[Any] = self._client.lrange(key, -(kept + self.batch), -(kept + 1))
                    if not items:
                        break
                    args: list[Any] = []
                    taking = skipped = 0
                    for item in reversed(items):  # oldest first
                        take = left is None or taking < left
                        payload = None
                        if take and not selection.everything:
                            payload = load_redis_payload(item)
                            take = selection.matches(*redis_name_and_id(payload))
                        taking += take
                        skipped += not take
                        args += [item, replacement(item, payload) if take else ""]
                    taken = int(self._window(keys=[key, targets[key]], args=[kept, len(items), tombstone, *args]))
                    if taken < 0:  # the tail moved under us: this window by value, then read again from the tail
                        chosen = [arg for i in range(0, len(args), 2) if args[i + 1] != "" for arg in args[i:i + 2]]
                        by_value = int(self._by_value(keys=[key, targets[key]], args=chosen)) if chosen else 0
                        done += by_value
                        kept, idle = 0, 0 if by_value else idle + 1
                        if idle > _IDLE_RETRIES:
                            raise BrokerUnavailable(f"queue {queue!r} changed under every read ({idle} in a row); "
                                                    "try again when it is quieter")
                        continue
                    idle = 0
                    done += taken
                    kept += skipped
                    if len(items) < self.batch:
                        break
        return done

    def purge(self, queue: str) -> int:
        """LLEN and DEL of every sub-list in one MULTI (kombu's own purge, atomic)."""
        keys = self.layout.queue_keys(queue)
        with self._translated(), self._client.pipeline(transaction=True) as pipe:
            for key in keys:
                pipe.llen(key)
                pipe.delete(key)
            replies: list[Any] = pipe.execute()
        return sum(reply for reply in replies[::2] if isinstance(reply, int))

    def close(self) -> None:
        """The inspector owns the connections."""
        self.inspector.close()
