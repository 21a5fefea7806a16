"""One server-side websocket on the loop (wsproto frames): non-blocking writes, pings, a bounded backlog."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import threading
import time
from typing import Any

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

log = logging.getLogger(__name__)

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PING_INTERVAL = 20.0  # seconds between pings; a client silent for two intervals is gone
MAX_INCOMING_MESSAGE = 64 * 1024  # clients only ever send pings and closes; anything big is refused (1009)
MAX_BACKLOG_BYTES = 8 * 1024 * 1024  # queued for a client that does not read: past this it is dropped (1008)
SOFT_BACKLOG_BYTES = 256 * 1024  # past this the fan-out skips the client's frames (a snapshot once it caught up)


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final text frame (a server's frames are never masked: RFC 6455 5.1)."""
    length = len(payload)
    if length < 126:
        header = bytes((0x81, length))
    elif length < 1 << 16:
        header = bytes((0x81, 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + length.to_bytes(8, "big")
    return header + payload


class FrameCache:
    """Framed forms of recent messages: many clients get the same task message, framed once. One thread only."""

    def __init__(self, size: int = 8192) -> None:
        self._items: dict[str, bytes] = {}
        self._size = size

    def frames(self, messages: list[str], *, keep: bool = True) -> bytes:
        """The messages framed, back to back: one write for a client's whole frame (`keep`: remember them)."""
        out = []
        for message in messages:
            if not message:
                continue
            framed = self._items.get(message)
            if framed is None and not keep:
                framed = text_frame(message.encode("utf-8"))
            elif framed is None:
                if len(self._items) >= self._size:
                    self._items.clear()
                framed = self._items[message] = text_frame(message.encode("utf-8"))
            out.append(framed)
        return b"".join(out)


WRITES_AT_ONCE = 100  # a tick's writes go out in slices, so that requests' reads and writes come in between


class Written(threading.Event):
    """Set once a tick's writes are done; `cpu_seconds`: the loop thread's CPU time they took."""

    def __init__(self) -> None:
        super().__init__()
        self.cpu_seconds = 0.0


def write_all(writes: list[tuple[Any, bytes]], written: Written | None = None, start: int = 0) -> None:
    """On the loop: write each (connection, frames) pair of a tick of the fan-out, a slice per callback, then set
    `written`."""
    end = min(len(writes), start + WRITES_AT_ONCE)
    cpu = time.thread_time()
    try:
        for connection, frames in writes[start:end]:
            try:
                connection.write_frames(frames)
            except Exception:  # noqa: BLE001 - one broken socket must not cost the others their frames
                log.exception("writing a websocket frame failed")
    finally:
        if written is not None:
            written.cpu_seconds += time.thread_time() - cpu
        if end < len(writes):
            asyncio.get_running_loop().call_soon(write_all, writes, written, end)
        elif written is not None:
            written.set()


def accept_token(key: bytes) -> bytes:
    """The Sec-WebSocket-Accept value for a client's Sec-WebSocket-Key (RFC 6455)."""
    return base64.b64encode(hashlib.sha1(key.strip() + GUID).digest())  # noqa: S324 - the protocol's own hash


class WebSocketConnection:
    """A websocket the loop reads and writes; the fan-out thread hands the loop its frames (`write_all`, which
    calls `write_frames` for each member of a tick)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, trailing: bytes = b"") -> None:
        self.reader = reader
        self.writer = writer
        self.ws = Connection(ConnectionType.SERVER)
        self.loop = asyncio.get_running_loop()
        self.closed = False
        self._trailing = trailing
        self._incoming = 0
        self._last_heard = self.loop.time()

    @property
    def backlog(self) -> int:
        """Bytes written but not yet taken by the client (read from any thread: a snapshot)."""
        transport = self.writer.transport
        return 0 if transport is None or transport.is_closing() else transport.get_write_buffer_size()

    @property
    def lagging(self) -> bool:
        """True while the client is behind: the fan-out skips its frames (and sends a snapshot once it caught up)."""
        return self.backlog > SOFT_BACKLOG_BYTES

    def write_frames(self, frames: bytes) -> None:
        """Write already framed text messages (on the loop's thread). The bytes object may be shared by many
        clients: the transport sends it as it is, and copies only what the kernel did not take."""
        if self.closed or self.ws.state is not ConnectionState.OPEN:
            return
        self.writer.write(frames)
        if self.backlog > MAX_BACKLOG_BYTES:
            log.info("dropping a websocket client that stopped reading (%d bytes queued)", self.backlog)
            self.close(1008, "too slow: the client stopped reading")

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start a clean close (on the loop's thread)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            if self.ws.state is ConnectionState.OPEN:
                self.writer.write(self.ws.send(CloseConnection(code=code, reason=reason)))
        with contextlib.suppress(Exception):
            self.writer.close()

    async def run(self) -> None:
        """Read until the client leaves; answer pings, ping it when quiet, drop it when silent too long."""
        pinger = asyncio.create_task(self._ping_loop())
        try:
            if self._trailing:
                self._receive(self._trailing)
            while not self.closed:
                data = await self.reader.read(65536)
                if not data:
                    break
                self._last_heard = self.loop.time()
                self._receive(data)
        except (ConnectionError, OSError):
            pass
        finally:
            pinger.cancel()
            self.closed = True
            with contextlib.suppress(Exception):
                self.writer.close()

    def _receive(self, data: bytes) -> None:
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, Ping):
                self.writer.write(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                with contextlib.suppress(Exception):
                    self.writer.write(self.ws.send(event.response()))
                self.closed = True
                self.writer.close()
                return
            elif isinstance(event, (TextMessage, BytesMessage)):
                self._incoming += len(event.data)
                if event.message_finished:
                    self._incoming = 0
                if self._incoming > MAX_INCOMING_MESSAGE:
                    self.close(1009, "message too big")
                    return
            elif isinstance(event, Pong):
                pass

    async def _ping_loop(self) -> None:
        while not self.closed:
            await asyncio.sleep(PING_INTERVAL)
            if self.loop.time() - self._last_heard > 2 * PING_INTERVAL + 5:
                self.close(1001, "no answer to pings")
                return
            if self.ws.state is ConnectionState.OPEN:
                self.writer.write(self.ws.send(Ping()))
