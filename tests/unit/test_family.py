"""Workflow trees from parent_id / root_id (pure): a chain, a group, an evicted root, a cut tree."""

from __future__ import annotations

from dashboard.model.state import State


def sent(state: State, task_id: str, parent: str | None = None, root: str | None = None, at: float = 1.0) -> None:
    event = {"type": "task-sent", "uuid": task_id, "name": f"wf.{task_id}", "timestamp": at}
    if parent is not None:
        event.update(parent_id=parent, root_id=root or parent)
    state.apply(event)


def shape(state: State, task_id: str) -> list[tuple[str, int]]:
    family = state.family(task_id)
    assert family is not None
    return [(member.task.id, member.depth) for member in family.members]


def test_a_chain_and_a_group_show_as_one_tree_from_any_member() -> None:
    state = State()
    sent(state, "root")
    sent(state, "a", parent="root", root="root")
    sent(state, "b", parent="a", root="root")  # a chain: root -> a -> b
    for n in range(3):
        sent(state, f"g{n}", parent="root", root="root")  # a group under the root

    expected = [("root", 0), ("a", 1), ("b", 2), ("g0", 1), ("g1", 1), ("g2", 1)]
    assert shape(state, "b") == expected
    assert shape(state, "g1") == expected
    family = state.family("root")
    assert family is not None and family.is_workflow and not family.truncated


def test_a_lone_task_is_no_workflow_and_an_unknown_one_has_none() -> None:
    state = State()
    sent(state, "alone")

    family = state.family("alone")
    assert family is not None and not family.is_workflow
    assert state.family("nope") is None


def test_an_evicted_root_is_named_and_evicted_children_leave_the_tree() -> None:
    state = State(max_tasks=3)
    sent(state, "root")
    sent(state, "a", parent="root", root="root")
    sent(state, "b", parent="a", root="root")
    sent(state, "c", parent="a", root="root")  # evicts "root"

    family = state.family("c")
    assert family is not None
    assert [(m.task.id, m.depth) for m in family.members] == [("a", 0), ("b", 1), ("c", 1)]
    assert family.missing_root == "root"
    sent(state, "d")  # evicts "a": b and c are roots of their own now
    assert shape(state, "c") == [("c", 0)]


def test_a_huge_group_is_cut_with_a_note() -> None:
    state = State()
    sent(state, "root")
    for n in range(250):
        sent(state, f"g{n}", parent="root", root="root")

    family = state.family("root")
    assert family is not None and family.truncated and len(family.members) == 200
