"""Bulk actions: the selection (the tasks list's filters) and which tasks an action takes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from .revoke import UNFINISHED

DEFAULT_BULK_LIMIT: Final = 10_000
MAX_BULK_LIMIT: Final = 1_000_000
BULK_SAMPLE: Final = 20  # tasks a preview names
BulkKind = Literal["revoke", "redispatch"]
BULK_KINDS: Final[tuple[BulkKind, ...]] = ("revoke", "redispatch")


@dataclass(frozen=True, slots=True)
class Selection:
    """Which tasks a bulk action takes: the tasks list's filters (a search over the history can join as `q`)."""

    state: str | None = None
    name: str | None = None
    queue: str | None = None
    worker: str | None = None
    q: str | None = None  # a search (model.search), over history when it is kept

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, unset filters left out."""
        return {key: value for key in ("state", "name", "queue", "worker", "q") if (value := getattr(self, key))}


def bulk_state(kind: BulkKind, selection: Selection) -> tuple[Selection, str | None]:
    """The selection a bulk action really takes, or why it takes nothing: dispatch again is for failures only, a
    revoke only for unfinished tasks."""
    if kind == "redispatch":
        if selection.state not in (None, "FAILURE"):
            return selection, "dispatch again takes failures only: set the state filter to FAILURE (or leave it)"
        return Selection("FAILURE", selection.name, selection.queue, selection.worker, selection.q), None
    if selection.state is not None and selection.state not in UNFINISHED:
        return selection, (f"a {selection.state} task has finished: revoke takes unfinished tasks "
                           f"({', '.join(sorted(UNFINISHED))})")
    return selection, None


def eligible(kind: BulkKind, state: str) -> bool:
    """Whether a task in `state` is acted on by a bulk action of `kind`."""
    return state == "FAILURE" if kind == "redispatch" else state in UNFINISHED
