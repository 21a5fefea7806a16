"""Which waiting messages an action takes, and the move / purge / delete request bodies, checked. Pure: stdlib only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ..kombu import EVENT_QUEUE_PREFIX, PIDBOX_SUFFIX
from .decode import MAX_FIELD_CHARS

MAX_PAGE: Final = 500  # messages per page
MAX_SELECT_IDS: Final = 10_000
MAX_QUEUE_CHARS: Final = 255


class RequestInvalid(ValueError):
    """A move/purge/delete request that cannot be used; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class Selection:
    """Which messages an action takes: those of one task name and/or given ids (all when neither), up to `limit`."""

    name: str | None = None
    ids: frozenset[str] | None = None
    limit: int | None = None

    @property
    def everything(self) -> bool:
        """True when every message is taken (no name, no ids)."""
        return self.name is None and self.ids is None

    def matches(self, name: str | None, task_id: str | None) -> bool:
        """True when a message with this task name and id is selected (the limit is the caller's to count)."""
        if self.name is not None and name != self.name:
            return False
        return self.ids is None or (task_id is not None and task_id in self.ids)

    def describe(self) -> dict[str, Any]:
        """For the audit log: the filter, JSON-ready (ids sorted, at most 100 of them spelled out)."""
        ids = sorted(self.ids) if self.ids is not None else None
        return {"name": self.name, "ids": ids[:100] if ids is not None else None,
                "ids_count": len(ids) if ids is not None else None, "limit": self.limit}


@dataclass(frozen=True, slots=True)
class MoveRequest:
    """`POST /api/queues/<queue>/move`: where to, and which messages."""

    to: str
    selection: Selection = field(default_factory=Selection)


def queue_name_problem(name: Any) -> str | None:
    """Why `name` cannot be a queue name here, or None."""
    if not isinstance(name, str) or not name.strip():
        return "give the name of a queue"
    if name != name.strip():
        return "a queue name has no leading or trailing spaces"
    if len(name) > MAX_QUEUE_CHARS:
        return f"a queue name has at most {MAX_QUEUE_CHARS} characters"
    if any(ord(char) < 32 or ord(char) == 127 for char in name):
        return "a queue name has no control characters"
    return None


def _optional_name(body: Mapping[str, Any]) -> str | None:
    name = body.get("name")
    if name is None or name == "":
        return None
    if not isinstance(name, str) or len(name) > MAX_FIELD_CHARS or not name.strip():
        raise RequestInvalid(f"name: a task name of at most {MAX_FIELD_CHARS} characters")
    return name.strip()


def _optional_limit(body: Mapping[str, Any]) -> int | None:
    limit = body.get("limit")
    if limit is None or limit == "":
        return None
    if isinstance(limit, str) and limit.strip().isdigit():
        limit = int(limit.strip())
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise RequestInvalid("limit: a whole number >= 1")
    return limit


def _optional_ids(body: Mapping[str, Any]) -> frozenset[str] | None:
    ids = body.get("ids")
    if ids is None:
        return None
    if isinstance(ids, str):  # a form field: ids separated by spaces, commas or lines
        ids = [part for part in ids.replace(",", " ").split() if part]
        if not ids:
            return None
    if not isinstance(ids, Sequence) or isinstance(ids, (bytes, bytearray)):
        raise RequestInvalid("ids: a list of task ids")
    if not ids or len(ids) > MAX_SELECT_IDS:
        raise RequestInvalid(f"ids: between 1 and {MAX_SELECT_IDS} task ids")
    if not all(isinstance(item, str) and 0 < len(item) <= MAX_FIELD_CHARS for item in ids):
        raise RequestInvalid(f"ids: each a task id of 1 to {MAX_FIELD_CHARS} characters")
    return frozenset(ids)


def parse_move(source: str, body: Any) -> MoveRequest:
    """Check a move body (JSON or form fields); RequestInvalid says what is wrong."""
    if not isinstance(body, Mapping):
        raise RequestInvalid('send a JSON object like {"to": "queue", "name": "task.name", "limit": 100}')
    to = body.get("to")
    to = to.strip() if isinstance(to, str) else to
    problem = queue_name_problem(to)
    if problem:
        raise RequestInvalid(f"to: {problem}")
    assert isinstance(to, str)
    if to == source:
        raise RequestInvalid("to: the messages are already in that queue; choose another one")
    if to.startswith(EVENT_QUEUE_PREFIX) or to.endswith(PIDBOX_SUFFIX):
        raise RequestInvalid(f"to: {to!r} is one of Celery's own queues (events or remote control), not for tasks")
    return MoveRequest(to, Selection(_optional_name(body), _optional_ids(body), _optional_limit(body)))


def parse_delete(body: Any) -> Selection:
    """Check a delete-by-name body: a task name is required (purge takes everything)."""
    if not isinstance(body, Mapping):
        raise RequestInvalid('send a JSON object like {"name": "task.name"}')
    name = _optional_name(body)
    if name is None:
        raise RequestInvalid("name: the task name whose messages to delete (to empty the queue, purge it)")
    return Selection(name, _optional_ids(body), _optional_limit(body))


def parse_purge(queue: str, body: Any) -> None:
    """Check a purge body: the queue's name typed again, exactly."""
    confirm = body.get("confirm") if isinstance(body, Mapping) else None
    if not isinstance(confirm, str) or confirm.strip() != queue:
        raise RequestInvalid(f'confirm: type the queue\'s name exactly ({queue!r}) to purge it')


