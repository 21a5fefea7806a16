"""The one path an event takes into the state, whether the listener read it or resync made it up."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ...model.state import State
from .hub import Hub, Kind

EventHook = Callable[[Mapping[str, Any]], None]


class EventSink:
    """Applies an event to the State, marks the change in the Hub, then tells the hooks (given at construction):
    the routing service notes sent and rejected names, the stats count finished tasks. `on_worker_change` is
    told when a worker appears, comes online or goes offline (its inspection is due again)."""

    def __init__(self, state: State, hub: Hub, hooks: Iterable[EventHook] = (),
                 on_worker_change: Callable[[], None] | None = None) -> None:
        self.state = state
        self.hub = hub
        self._hooks = tuple(hooks)
        self._on_worker_change = on_worker_change

    def apply(self, event: Mapping[str, Any]) -> None:
        """Apply one event (the event thread, or a resync job)."""
        change = self.state.apply(event)
        if change is None:
            return
        self.hub.publish(change.kind, change.key)
        if change.kind == "task":
            for hook in self._hooks:
                hook(event)
        elif change.kind == "worker" and self._on_worker_change is not None \
                and (change.created or event.get("type") in ("worker-online", "worker-offline")):
            self._on_worker_change()

    def publish(self, kind: Kind, key: str = "") -> None:
        """Mark a change that did not come from an event (a status, an alert, a worker flipped offline)."""
        self.hub.publish(kind, key)
