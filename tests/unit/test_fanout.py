"""The fan-out's broadcast groups: one render and one framed buffer per group and frame, whatever the clients.

Driven tick by tick (Fanout.tick), with sockets that record what the loop would write: no thread, no loop, no
timing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask

from dashboard.model.auth import Identity
from dashboard.services.events.hub import Batch, Hub
from dashboard.serving.fanout import Fanout
from dashboard.serving.websocket import text_frame
from dashboard.web.live import CSRF_PLACEHOLDER, Broadcast, LiveSession, open_session


class ImmediateLoop:
    """Runs what the fan-out hands the loop at once, in the calling thread."""

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any) -> None:
        callback(*args)


@dataclass(eq=False)
class FakeSocket:
    loop: Any = field(default_factory=ImmediateLoop)
    closed: bool = False
    lagging: bool = False
    written: list[bytes] = field(default_factory=list)
    closed_with: tuple[int, str] | None = None

    def write_frames(self, frames: bytes) -> None:
        self.written.append(frames)

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed, self.closed_with = True, (code, reason)


@dataclass
class Renders:
    """Counts what a group's sessions render."""

    snapshots: int = 0
    updates: list[Batch] = field(default_factory=list)
    joins: int = 0


def group_session(hub: Hub, renders: Renders, group: Hashable, *, secret: str = "", text: str = "") -> LiveSession:
    """A session of `group` whose frames say what changed (and carry the CSRF placeholder when `text` asks)."""

    def make() -> LiveSession:
        def snapshot() -> list[str]:
            renders.snapshots += 1
            return [f"snapshot {text}"]

        def update(batch: Batch) -> list[str]:
            renders.updates.append(batch)
            return [f"changed {batch.get('task')} {text}"]

        def joined() -> None:
            renders.joins += 1

        return LiveSession(snapshot, update, 0.1, joined=joined)

    def broadcast() -> Broadcast:
        updates = make()
        updates.hub = hub
        return Broadcast(updates, make())

    return LiveSession(lambda: [], lambda batch: [], 0.1, client="c", group=group, secret=secret,
                       make_broadcast=broadcast)


def test_clients_of_one_group_share_one_render_and_one_buffer_per_frame() -> None:
    # Once every client rendered and framed its own frame: the work grew as clients x new tasks, and one process
    # could not keep 500 clients up with 1 000 task events/s.
    hub, renders, fanout = Hub(), Renders(), Fanout()
    sockets = [FakeSocket() for _ in range(50)]
    for sock in sockets:
        fanout.add(sock, group_session(hub, renders, "events"))

    fanout.tick(0.0)
    assert renders.snapshots == 1 and renders.joins == 1
    assert hub.size == 1, "one hub subscriber per group, not per client"
    assert all(sock.written == [text_frame(b"snapshot ")] for sock in sockets)

    hub.publish("task", "t1")
    hub.publish("task", "t2")
    fanout.tick(1.0)

    assert len(renders.updates) == 1 and renders.updates[0].get("task") == ["t1", "t2"]
    frames = [sock.written[1] for sock in sockets]
    assert frames[0] == text_frame(b"changed ['t1', 't2'] ")
    assert all(frame is frames[0] for frame in frames), "the same bytes object for every member"
    assert (fanout.size, fanout.groups) == (50, 1)

    fanout.tick(2.0)  # nothing changed: nothing rendered, nothing sent
    assert len(renders.updates) == 1 and all(len(sock.written) == 2 for sock in sockets)


def test_a_frame_waits_for_the_groups_frame_interval() -> None:
    hub, renders, fanout = Hub(), Renders(), Fanout()
    sock = FakeSocket()
    fanout.add(sock, group_session(hub, renders, "g"))
    fanout.tick(0.0)
    hub.publish("task", "t1")
    fanout.tick(1.0)
    hub.publish("task", "t2")
    hub.publish("task", "t3")
    fanout.tick(1.05)  # within the 0.1 s interval: the changes coalesce
    fanout.tick(1.1)

    assert [batch.get("task") for batch in renders.updates] == [["t1"], ["t2", "t3"]]


def test_groups_are_apart_and_an_empty_group_ends() -> None:
    hub, fanout = Hub(), Fanout()
    tasks, workers = Renders(), Renders()
    a, b, c = FakeSocket(), FakeSocket(), FakeSocket()
    fanout.add(a, group_session(hub, tasks, ("tasks", 0)))
    fanout.add(b, group_session(hub, tasks, ("tasks", 0)))
    fanout.add(c, group_session(hub, workers, ("workers",)))
    fanout.tick(0.0)
    assert (fanout.groups, hub.size, tasks.snapshots, workers.snapshots) == (2, 2, 1, 1)

    c.closed = True
    fanout.tick(1.0)
    assert (fanout.groups, hub.size, fanout.size) == (1, 1, 2)


def test_a_lagging_member_skips_frames_then_gets_a_snapshot_and_holds_nobody_back() -> None:
    hub, renders, fanout = Hub(), Renders(), Fanout()
    fast, slow = FakeSocket(), FakeSocket()
    fanout.add(fast, group_session(hub, renders, "g"))
    fanout.add(slow, group_session(hub, renders, "g"))
    fanout.tick(0.0)

    slow.lagging = True
    hub.publish("task", "t1")
    fanout.tick(1.0)
    hub.publish("task", "t2")
    fanout.tick(2.0)
    assert len(fast.written) == 3 and len(slow.written) == 1  # the snapshot only: nothing queued for it since

    slow.lagging = False  # it caught up: the group's snapshot, then the group's frames again
    fanout.tick(3.0)
    assert slow.written[1:] == [text_frame(b"snapshot ")] and len(fast.written) == 3
    assert renders.snapshots == 2 and renders.joins == 2
    hub.publish("task", "t3")
    fanout.tick(4.0)
    assert slow.written[2] is fast.written[3]


def test_a_new_member_gets_a_snapshot_then_the_groups_frames() -> None:
    hub, renders, fanout = Hub(), Renders(), Fanout()
    first, late = FakeSocket(), FakeSocket()
    fanout.add(first, group_session(hub, renders, "g"))
    fanout.tick(0.0)
    hub.publish("task", "t1")
    fanout.add(late, group_session(hub, renders, "g"))
    fanout.tick(1.0)

    assert first.written[1] == text_frame(b"changed ['t1'] ")
    assert late.written == [text_frame(b"snapshot ")]  # the snapshot already shows t1
    hub.publish("task", "t2")
    fanout.tick(2.0)
    assert late.written[1] is first.written[2]


def test_each_member_gets_its_own_csrf_token_in_place_of_the_placeholder() -> None:
    hub, renders, fanout = Hub(), Renders(), Fanout()
    alice, alice_tab, bob = FakeSocket(), FakeSocket(), FakeSocket()
    fanout.add(alice, group_session(hub, renders, "g", secret="AAA", text=f"token={CSRF_PLACEHOLDER}"))
    fanout.add(alice_tab, group_session(hub, renders, "g", secret="AAA", text=f"token={CSRF_PLACEHOLDER}"))
    fanout.add(bob, group_session(hub, renders, "g", secret="BBB", text=f"token={CSRF_PLACEHOLDER}"))
    fanout.tick(0.0)

    assert alice.written == [text_frame(b"snapshot token=AAA")] and bob.written == [text_frame(b"snapshot token=BBB")]
    assert alice_tab.written[0] is alice.written[0]  # one session's tabs share their copy
    assert renders.snapshots == 1


def test_a_failing_stream_closes_its_clients_only() -> None:
    hub, fanout = Hub(), Fanout()
    broken, fine = FakeSocket(), FakeSocket()
    session = group_session(hub, Renders(), "broken")

    def fail(batch: Batch) -> list[str]:
        raise RuntimeError("boom")

    make = session.make_broadcast
    assert make is not None

    def broken_broadcast() -> Broadcast:
        made = make()
        made.updates.update = fail
        return made

    session.make_broadcast = broken_broadcast
    fanout.add(broken, session)
    fanout.add(fine, group_session(hub, Renders(), "fine"))
    fanout.tick(0.0)
    hub.publish("task", "t1")
    fanout.tick(1.0)

    assert broken.closed_with == (1011, "internal error") and not fine.closed
    assert fanout.groups == 1 and hub.size == 1


# -- groups of real sessions (open_session) ------------------------------------------------------------------


@pytest.fixture
def app(offline_app: Flask) -> Flask:
    return offline_app


def opened(app: Flask, path: str, identity: Identity | None, cookie: str = "", base_url: str | None = None
           ) -> LiveSession:
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", **({"Cookie": cookie} if cookie else {})}
    with app.test_request_context(path, headers=headers, base_url=base_url):
        from flask import g

        g.identity = identity
        return open_session()


OPERATOR = Identity("alice", "operator", "session")
OTHER_OPERATOR = Identity("bob", "operator", "session")
VIEWER = Identity("carol", "viewer", "session")


def test_sessions_group_by_stream_arguments_prefix_and_role(app: Flask) -> None:
    def group(path: str, identity: Identity | None = OPERATOR, base_url: str | None = None) -> Hashable:
        return opened(app, path, identity, base_url=base_url).group

    assert group("/ws/ui?view=tasks&state=FAILURE") == group("/ws/ui?state=FAILURE&view=tasks", OTHER_OPERATOR)
    assert group("/ws/ui?view=tasks&state=FAILURE") != group("/ws/ui?view=tasks&state=SUCCESS")
    assert group("/ws/ui?view=tasks") == group("/ws/ui?view=tasks&offset=0")  # normalised, not the raw query
    assert group("/ws/ui?view=tasks") != group("/ws/ui?view=tasks", VIEWER)  # an operator's buttons differ
    assert group("/ws/ui?view=tasks") != group("/ws/ui?view=tasks", base_url="http://localhost/ops")
    assert group("/ws/ui?view=task&id=a") != group("/ws/ui?view=task&id=b")
    assert group("/ws/events?tasks=0") == group("/ws/events?tasks=0", VIEWER)  # the JSON shows no buttons
    assert group("/ws/events?tasks=0") != group("/ws/events?tasks=5")  # their snapshots differ
    assert group("/ws/ui?view=tasks") != group("/ws/events")


def test_a_groups_renderer_has_the_placeholder_for_a_token_and_each_client_its_own(app: Flask) -> None:
    from dashboard.web.auth import csrf_token

    client = app.test_client()
    assert client.get("/tasks").status_code == 200
    cookie = client.get_cookie("dispatch_dashboard_session")
    assert cookie is not None
    with client.session_transaction() as stored:
        token = stored["csrf"]

    session = opened(app, "/ws/ui?view=status", OPERATOR, cookie=f"dispatch_dashboard_session={cookie.value}")
    assert session.secret == token
    broadcast = session.broadcast()
    with broadcast.updates.context():
        assert csrf_token() == CSRF_PLACEHOLDER
    anonymous = opened(app, "/ws/ui?view=status", OPERATOR)
    assert anonymous.secret and anonymous.secret != token


def test_a_ticks_writes_go_out_in_slices_and_then_say_so() -> None:
    import asyncio

    from dashboard.serving.websocket import WRITES_AT_ONCE, Written, write_all

    sockets = [FakeSocket() for _ in range(WRITES_AT_ONCE * 2 + 5)]
    written = Written()
    between: list[int] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        pairs: list[tuple[Any, bytes]] = [(sock, b"frame") for sock in sockets]
        loop.call_soon(write_all, pairs, written)
        loop.call_soon(lambda: between.append(sum(bool(sock.written) for sock in sockets)))
        for _ in range(100):  # a bounded number of loop passes, never a hang
            if written.is_set():
                break
            await asyncio.sleep(0)

    # In a thread of its own: in a full run, Playwright's sync API keeps an event loop running in the main thread,
    # and asyncio.run() refuses to start a second one there.
    runner = threading.Thread(target=asyncio.run, args=(run(),))
    runner.start()
    runner.join(10)
    assert written.is_set() and written.cpu_seconds >= 0.0
    assert all(sock.written == [b"frame"] for sock in sockets)
    assert between == [WRITES_AT_ONCE], "other callbacks ran between two slices"
