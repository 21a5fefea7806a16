"""The serving model's pure parts: websocket caps, the handshake token, the WSGI call, sessions over a hub."""

from __future__ import annotations

from typing import Any

from dashboard.services.events.hub import Batch, Hub
from dashboard.serving.connection import call_app
from dashboard.serving.server import Handoff, Limits, Server
from dashboard.serving.websocket import accept_token
from dashboard.web.live import LiveSession


def wsgi_ok(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello ", b"", environ["PATH_INFO"].encode()]


def test_the_accept_token_of_rfc_6455() -> None:
    assert accept_token(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_the_app_is_called_and_its_whole_answer_collected() -> None:
    status, headers, chunks = call_app(wsgi_ok, {"PATH_INFO": "/x"})

    assert (status, headers, b"".join(chunks)) == (200, [("Content-Type", "text/plain")], b"hello /x")


def test_websockets_are_capped_per_process_and_per_client() -> None:
    server = Server(wsgi_ok, Limits(max_websockets=3, max_websockets_per_client=2))
    try:
        assert server.reserve_websocket("alice") is None
        assert server.reserve_websocket("alice") is None
        refusal = server.reserve_websocket("alice")
        assert refusal is not None and "alice already has 2" in refusal
        assert server.reserve_websocket("bob") is None
        full = server.reserve_websocket("carol")
        assert full is not None and "max_websockets" in full
        assert server.websockets == 3

        server.release_websocket("alice")
        assert server.reserve_websocket("carol") is None
        assert server.refused_websockets == 2
    finally:
        server.pool.shutdown()


def test_a_handoff_keeps_the_session_only_when_accepted() -> None:
    server = Server(wsgi_ok, Limits(max_websockets=1))
    try:
        session = LiveSession(lambda: ["snap"], lambda batch: ["upd"], 0.1, client="a")
        first, second = Handoff(server), Handoff(server)
        assert first.accept(session) is None and first.session is session
        assert second.accept(session) is not None and second.session is None
    finally:
        server.pool.shutdown()


def test_a_session_sends_its_snapshot_then_only_what_changed() -> None:
    hub = Hub()
    seen: list[Batch] = []

    def update(batch: Batch) -> list[str]:
        seen.append(batch)
        return [f"changed {batch.get('task')}"]

    session = LiveSession(lambda: ["snapshot"], update, 0.1, hub=hub)
    session.open()
    assert session.frame(first=True) == ["snapshot"]
    assert not session.has_changes
    assert session.frame(first=False) == []

    hub.publish("task", "t1")
    hub.publish("task", "t1")
    assert session.has_changes
    assert session.frame(first=False) == ["changed ['t1']"]

    hub.resync_all()
    assert session.frame(first=False) == ["snapshot"]
    session.close()
    assert hub.size == 0
    assert session.frame(first=False) is None


def test_frames_are_what_wsproto_would_send_and_shared_messages_are_framed_once() -> None:
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import TextMessage

    from dashboard.serving.websocket import FrameCache, text_frame

    reference = Connection(ConnectionType.SERVER)
    for size in (0, 1, 125, 126, 65_535, 65_536, 200_000):
        message = "é" * (size // 2) + "x" * (size % 2)
        assert text_frame(message.encode()) == reference.send(TextMessage(data=message)), size

    cache = FrameCache(size=2)
    shared = '{"type":"task","id":"t1"}'
    first = cache.frames([shared, "", "b"])
    assert first == text_frame(shared.encode()) + text_frame(b"b")
    assert cache.frames([shared]) == text_frame(shared.encode())
    cache.frames(["c", "d", "e"])  # past its size the cache starts afresh: bounded memory
    assert cache.frames(["c"]) == text_frame(b"c")
