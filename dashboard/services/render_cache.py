"""Rendered forms of task snapshots, shared by an app's websocket clients."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from ..model.state import TaskView


class RenderCache:
    """Rendered forms of task snapshots keyed by (kind, task id, version), shared by an app's websocket clients.

    Dozens of clients pushing the same change render (encode, template) it once. A key names one snapshot
    exactly, so nothing here is ever stale; the least recently used entries go beyond `size`.
    """

    def __init__(self, size: int = 4096) -> None:
        self._items: OrderedDict[tuple[str, str, int], str] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, str, int]) -> str | None:
        """The cached form, or None (counted as a miss)."""
        with self._lock:
            found = self._items.get(key)
            if found is None:
                self.misses += 1
            else:
                self.hits += 1
                self._items.move_to_end(key)
            return found

    def put(self, key: tuple[str, str, int], value: str) -> None:
        """Remember a rendered form."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def render(self, kind: str, task: TaskView, render: Callable[[TaskView], str]) -> str:
        """`render(task)`, or what it gave for this very snapshot (same kind, task id and version) before."""
        key = (kind, task.id, task.version)
        found = self.get(key)
        if found is None:
            found = render(task)
            self.put(key, found)
        return found
