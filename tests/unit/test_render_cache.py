"""The websockets' shared render cache: snapshot versions in the state, the LRU, and cached_tasks (no broker)."""

from __future__ import annotations

import pytest
from flask import Flask

from dashboard.model.state import State, TaskView
from dashboard.services.render_cache import RenderCache
from dashboard.web import views
from dashboard.web.context import services
from dashboard.web.live import cached_tasks

T0 = 1_700_000_000.0


def sent(state: State, task_id: str, at: float = T0) -> None:
    state.apply({"type": "task-sent", "uuid": task_id, "name": "a.b", "queue": "q", "timestamp": at})


def test_each_applied_event_makes_a_new_version() -> None:
    state = State()
    sent(state, "t1")
    first = state.task("t1")
    state.apply({"type": "task-started", "uuid": "t1", "hostname": "celery@w", "timestamp": T0 + 1})
    second = state.task("t1")

    assert first is not None and second is not None
    assert (first.version, second.version) == (1, 2)
    assert state.task_versions(["t1", "unknown"]) == {"t1": 2}


def test_tasks_by_id_keeps_the_order_asked_and_skips_unknown_ids() -> None:
    state = State()
    for task_id in ("t1", "t2", "t3"):
        sent(state, task_id)

    assert [task.id for task in state.tasks_by_id(["t3", "nope", "t1"])] == ["t3", "t1"]


def test_the_cache_drops_the_least_recently_used() -> None:
    cache = RenderCache(size=2)
    cache.put(("json", "a", 1), "A")
    cache.put(("json", "b", 1), "B")
    assert cache.get(("json", "a", 1)) == "A"  # a is now the most recent
    cache.put(("json", "c", 1), "C")

    assert cache.get(("json", "b", 1)) is None
    assert (cache.get(("json", "a", 1)), cache.get(("json", "c", 1))) == ("A", "C")
    assert (cache.hits, cache.misses) == (3, 1)


@pytest.fixture
def app(offline_app: Flask) -> Flask:
    return offline_app


def test_clients_share_a_rendering_until_the_task_changes(app: Flask) -> None:
    rt = services(app)
    sent(rt.monitor.state, "t1")
    sent(rt.monitor.state, "t2")
    renders: list[tuple[str, int]] = []

    def render(task: TaskView) -> str:
        renders.append((task.id, task.version))
        return f"{task.id}@{task.state}"

    first = cached_tasks(rt, ["t2", "t1", "gone"], "json", render)
    second = cached_tasks(rt, ["t1", "t2"], "json", render)  # another client, same frame
    rt.monitor.state.apply({"type": "task-started", "uuid": "t1", "hostname": "celery@w", "timestamp": T0 + 1})
    third = cached_tasks(rt, ["t1", "t2"], "json", render)

    assert first == ["t2@PENDING", "t1@PENDING"]
    assert second == ["t1@PENDING", "t2@PENDING"]
    assert third == ["t1@STARTED", "t2@PENDING"]
    assert renders == [("t2", 1), ("t1", 1), ("t1", 2)]  # each snapshot rendered once


def test_the_tasks_table_takes_its_rows_from_the_cache(app: Flask) -> None:
    rt = services(app)
    for task_id in ("t1", "t2"):
        sent(rt.monitor.state, task_id)
    filters = views.TaskFilters()

    with app.test_request_context("/tasks"):
        first, _ = views.task_table_fragment(rt, filters)
        misses = rt.rendered.misses
        second, _ = views.task_table_fragment(rt, filters)  # another viewer, nothing changed
        rt.monitor.state.apply({"type": "task-started", "uuid": "t1", "hostname": "celery@w", "timestamp": T0 + 1})
        third, _ = views.task_table_fragment(rt, filters)

    assert misses == 2 and rt.rendered.misses == 3  # both rows once, then only the row that changed
    assert second == first
    assert third.count('data-state="STARTED"') == 1 and third.count('data-state="PENDING"') == 1
    assert third.index('data-task-id="t2"') < third.index('data-task-id="t1"')  # newest first, as ever


def test_rows_are_cached_per_path_prefix(app: Flask) -> None:
    rt = services(app)
    sent(rt.monitor.state, "t1")

    with app.test_request_context("/tasks"):
        plain, _ = views.task_table_fragment(rt, views.TaskFilters())
    with app.test_request_context("/tasks", base_url="http://localhost/ops"):
        prefixed, _ = views.task_table_fragment(rt, views.TaskFilters())

    assert 'href="/tasks/t1"' in plain and 'href="/ops/tasks/t1"' in prefixed


def test_a_frame_of_changed_rows_carries_the_counts_too(app: Flask) -> None:
    # Once the rows updated and the counts beside them did not: "PENDING 1" next to a row that said SUCCESS.
    from dashboard.services.events.hub import Batch
    from dashboard.web.live import tasks_update

    rt = services(app)
    sent(rt.monitor.state, "t1")
    filters = views.TaskFilters()
    shown = {"t1"}
    rt.monitor.state.apply({"type": "task-succeeded", "uuid": "t1", "hostname": "celery@w", "timestamp": T0 + 1,
                            "runtime": 0.1, "result": "1"})

    with app.test_request_context("/ws/ui?view=tasks"):
        chrome_and_counts, rows = tasks_update(rt, filters, shown, Batch({"task": ["t1"]}), "")

    assert 'id="task-counts"' in chrome_and_counts and 'hx-swap-oob="true"' in chrome_and_counts
    assert "SUCCESS</span> 1" in chrome_and_counts and "PENDING" not in chrome_and_counts
    assert 'data-task-id="t1"' in rows and 'data-state="SUCCESS"' in rows


def test_with_a_filter_the_counts_are_the_matches_only(app: Flask) -> None:
    rt = services(app)
    sent(rt.monitor.state, "t1")
    sent(rt.monitor.state, "t2")

    with app.test_request_context("/tasks?state=PENDING&name=a.b"):
        table, _ = views.task_table_fragment(rt, views.TaskFilters.from_args({"state": "PENDING", "name": "a.b"}))

    assert "2</strong> tasks match" in table
    assert 'class="by-state"' not in table


def test_the_task_page_shows_the_workflow_tree_and_redraws_it_when_a_child_appears(app: Flask) -> None:
    from dashboard.services.events.hub import Batch
    from dashboard.web.live import ui_session

    rt = services(app)
    state = rt.monitor.state
    state.apply({"type": "task-sent", "uuid": "root", "name": "wf.<root>", "timestamp": T0})
    state.apply({"type": "task-sent", "uuid": "a", "name": "wf.a", "parent_id": "root", "root_id": "root",
                 "timestamp": T0 + 1})
    page = app.test_client().get("/tasks/a").data.decode()
    assert 'id="task-family"' in page and 'data-task-id="root"' in page and "wf.&lt;root&gt;" in page
    assert "hidden" not in page.split('id="task-family"')[1].split(">")[0]

    with app.test_request_context("/ws/ui?view=task&id=a"):
        session = ui_session(rt, {"view": "task", "id": "a"})
        session.snapshot()
        state.apply({"type": "task-sent", "uuid": "b", "name": "wf.b", "parent_id": "a", "root_id": "root",
                     "timestamp": T0 + 2})
        (frame,) = session.update(Batch({"task": ["b"]}))
        (quiet,) = session.update(Batch({"task": ["unrelated"]}))

    assert 'id="task-family"' in frame and 'data-task-id="b"' in frame and 'data-depth="2"' in frame
    assert 'id="task-family"' not in quiet
    lone = app.test_client().get("/tasks/unknown-task").data.decode()
    assert 'id="task-family" class="panel family" aria-label="Workflow" hidden' in lone
