"""A task's workflow: its root, its parents and every descendant retained (chains, groups, chords), as a tree."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from .tasks import TaskRecord, TaskView

FAMILY_LIMIT: Final = 200  # tasks shown in one workflow tree; a group of thousands is cut with a note
MAX_DEPTH: Final = 50  # parent links followed up to the root


@dataclass(frozen=True, slots=True)
class FamilyMember:
    """One task of the tree and how deep it sits under the root shown."""

    task: TaskView
    depth: int


@dataclass(frozen=True, slots=True)
class Family:
    """The tree around one task: members in tree order (each after its parent), whether the tree was cut, and
    the root's id when the root itself is not retained (evicted, or sent before the dashboard started)."""

    members: tuple[FamilyMember, ...]
    truncated: bool
    missing_root: str | None

    @property
    def is_workflow(self) -> bool:
        """True when there is more than the task alone to show."""
        return len(self.members) > 1 or self.missing_root is not None


def link(children: dict[str, list[str]], parent: str | None, child: str, *, remove: bool = False) -> None:
    """Add `child` under `parent` in the children index (or remove it); empty lists are dropped."""
    if parent is None:
        return
    if not remove:
        children.setdefault(parent, []).append(child)
        return
    kids = children.get(parent)
    if kids is not None and child in kids:
        kids.remove(child)
        if not kids:
            del children[parent]


def family_of(
    task_id: str,
    tasks: Mapping[str, TaskRecord],
    children: Mapping[str, Sequence[str]],
    view: Callable[[TaskRecord], TaskView],
    limit: int = FAMILY_LIMIT,
) -> Family | None:
    """The workflow tree of `task_id` (call under the state's lock), or None when the task is not retained."""
    task = tasks.get(task_id)
    if task is None:
        return None
    root, seen = task, {task.id}
    for _ in range(MAX_DEPTH):
        parent = tasks.get(root.parent_id) if root.parent_id else None
        if parent is None or parent.id in seen:
            break
        root = parent
        seen.add(root.id)
    missing = None
    if root.parent_id and root.parent_id not in tasks:
        missing = root.root_id if root.root_id and root.root_id not in tasks else root.parent_id
    members: list[FamilyMember] = []
    stack: list[tuple[TaskRecord, int]] = [(root, 0)]
    visited: set[str] = set()
    while stack and len(members) < limit:
        node, depth = stack.pop()
        if node.id in visited:
            continue
        visited.add(node.id)
        members.append(FamilyMember(view(node), depth))
        kids = [tasks[kid] for kid in children.get(node.id, ()) if kid in tasks]
        stack.extend((kid, depth + 1) for kid in reversed(kids))
    return Family(tuple(members), truncated=bool(stack), missing_root=missing)
