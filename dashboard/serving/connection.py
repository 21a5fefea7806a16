"""One HTTP/1.1 connection on the serving loop: requests read under deadlines (h11), the app called on the pool,
its answer written; or, after an accepted upgrade, one websocket handed to the fan-out."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import unquote_to_bytes

import h11

from ..web.live import HANDOFF_KEY
from .fanout import Fanout, SessionLike
from .websocket import WebSocketConnection, accept_token

log = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
READ_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Deadlines and caps of one serving process."""

    threads: int = 64  # the WSGI app's thread pool: requests being *handled* at once (none waits on a client)
    request_timeout: float = 10.0  # a client has this long to send a whole request, from its first byte
    keepalive_timeout: float = 5.0  # an idle kept-alive connection is closed after this
    max_connections: int = 10_000
    max_websockets: int = 1000
    max_websockets_per_client: int = 50
    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 1024 * 1024
    graceful_timeout: float = 3.0


class Handoff:
    """Put in a websocket request's environ: the app, after its checks, calls `accept(session)`; the loop then
    completes the handshake and the fan-out thread drives the session."""

    def __init__(self, server: Host) -> None:
        self._server = server
        self.session: SessionLike | None = None

    def accept(self, session: SessionLike) -> str | None:
        """Reserve a socket for `session`; a refusal message (the caps) instead, or None when accepted."""
        refusal = self._server.reserve_websocket(session.client)
        if refusal is None:
            self.session = session
        return refusal


class RequestCounter(Protocol):
    """Told when a request starts arriving and when its answer is written (services/priority.py)."""

    def begin(self) -> None: ...

    def end(self) -> None: ...


class Host(Protocol):
    """What a connection needs of the server that accepted it (server.Server)."""

    app: WSGIApp
    limits: Limits
    multiprocess: bool
    pool: ThreadPoolExecutor
    fanout: Fanout
    requests: RequestCounter | None

    def reserve_websocket(self, client: str) -> str | None: ...

    def release_websocket(self, client: str) -> None: ...

    def track(self, connection: WebSocketConnection) -> None: ...

    def untrack(self, connection: WebSocketConnection) -> None: ...


_REFUSALS = {413: "the request body is too large (at most 1 MiB)", 431: "the request headers are too large"}


class _Timeout(Exception):
    pass


class Connection:
    """One HTTP/1.1 connection: requests in turn, or one websocket after an accepted upgrade."""

    def __init__(self, server: Host, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.limits = server.limits
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
        peer = writer.get_extra_info("peername")
        sockname = writer.get_extra_info("sockname")
        self.peer = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else ("", 0)
        self.local = (str(sockname[0]), int(sockname[1])) if isinstance(sockname, tuple) else ("", 0)
        self._counted = False  # this connection's current request is counted in server.requests

    def _arriving(self) -> None:
        requests = self.server.requests
        if requests is not None and not self._counted:
            self._counted = True
            requests.begin()

    def _answered(self) -> None:
        requests = self.server.requests
        if requests is not None and self._counted:
            self._counted = False
            requests.end()

    async def serve(self) -> None:
        try:
            await self._serve()
        finally:
            self._answered()

    async def _serve(self) -> None:
        first = True
        while True:
            try:
                received = await self._read_request(first)
            except _Timeout:
                await self._send_error(408, "the request did not arrive in time")
                return
            except h11.RemoteProtocolError as exc:
                await self._send_error(exc.error_status_hint, "malformed request")
                return
            if received is None:
                return
            request, body = received
            first = False
            if isinstance(body, int):
                await self._send_error(body, _REFUSALS[body])
                return
            if await self._respond(request, body):
                return  # upgraded to a websocket, which has now closed
            self._answered()
            if self.h11.our_state is h11.MUST_CLOSE or self.h11.their_state is h11.MUST_CLOSE:
                return
            try:
                self.h11.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _read_request(self, first: bool) -> tuple[h11.Request, bytes | int] | None:
        """The next request and its body (an int: the status to refuse it with); None when the client left."""
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        idle = self.limits.request_timeout if first else self.limits.keepalive_timeout
        request: h11.Request | None = None
        body = bytearray()
        got_bytes = False
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                if not got_bytes:
                    timeout = idle
                else:
                    deadline = deadline or loop.time() + self.limits.request_timeout
                    timeout = deadline - loop.time()
                if timeout <= 0:
                    raise _Timeout()
                try:
                    data = await asyncio.wait_for(self.reader.read(READ_CHUNK), timeout)
                except TimeoutError:
                    if not got_bytes:
                        return None  # an idle connection: close it quietly
                    raise _Timeout() from None
                if data and not got_bytes:
                    got_bytes = True
                    deadline = loop.time() + self.limits.request_timeout
                    self._arriving()
                self.h11.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                request = event
                if sum(len(name) + len(value) + 4 for name, value in event.headers) > self.limits.max_header_bytes:
                    return event, 431  # one read can bring a whole oversized head: h11 only bounds a partial one
                length = _content_length(event)
                if length is not None and length > self.limits.max_body_bytes:
                    return event, 413
                if self.h11.they_are_waiting_for_100_continue:
                    self.writer.write(self.h11.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.limits.max_body_bytes:
                    assert request is not None
                    return request, 413
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None

    async def _respond(self, request: h11.Request, body: bytes) -> bool:
        """Run the app for one request and send its answer; True when it became a websocket (now closed)."""
        environ = self._environ(request, body)
        handoff: Handoff | None = None
        if _is_websocket_upgrade(request):
            handoff = Handoff(self.server)
            environ[HANDOFF_KEY] = handoff
        loop = asyncio.get_running_loop()
        try:
            status, headers, chunks = await loop.run_in_executor(self.server.pool, call_app, self.server.app,
                                                                  environ)
        except RuntimeError:  # the pool is shut down: the process is stopping
            await self._send_error(503, "the server is stopping")
            return True
        except Exception:  # noqa: BLE001 - the app's own handlers answer errors; this is a bug below them
            log.exception("the app failed on %s %s", request.method.decode(), request.target[:200].decode("latin-1"))
            if handoff is not None and handoff.session is not None:
                self.server.release_websocket(handoff.session.client)
            await self._send_error(500, "internal error; the server log has the details")
            return True
        if handoff is not None and handoff.session is not None:
            session, handoff.session = handoff.session, None
            environ.clear()  # the request's objects (and this frame's hold on them) are not kept while the socket lives
            if status == 101:
                await self._upgrade(request, session)
                return True
            self.server.release_websocket(session.client)  # accepted, then the app answered otherwise
        await self._send(request, status, headers, chunks)
        return False

    async def _upgrade(self, request: h11.Request, session: SessionLike) -> None:
        self._answered()  # the handshake was the request; an open websocket is not one
        server = self.server
        client = session.client
        try:
            key = _header(request, b"sec-websocket-key") or b""
            response = h11.InformationalResponse(status_code=101, headers=[
                (b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
                (b"sec-websocket-accept", accept_token(key)),
            ])
            self.writer.write(self.h11.send(response) or b"")
            trailing, _closed = self.h11.trailing_data
            connection = WebSocketConnection(self.reader, self.writer, bytes(trailing))
            server.track(connection)
            server.fanout.add(connection, session)
            del session  # the fan-out keeps what it needs of it (its group, its CSRF token), not this
            try:
                await connection.run()
            finally:
                server.untrack(connection)
        finally:
            server.release_websocket(client)

    def _environ(self, request: h11.Request, body: bytes) -> dict[str, Any]:
        target = request.target
        path, _, query = target.partition(b"?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": request.method.decode("ascii"),
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query.decode("latin-1"),
            "RAW_URI": target.decode("latin-1"),
            "SERVER_NAME": self.local[0],
            "SERVER_PORT": str(self.local[1]),
            "SERVER_PROTOCOL": "HTTP/" + request.http_version.decode("ascii"),
            "REMOTE_ADDR": self.peer[0],
            "REMOTE_PORT": str(self.peer[1]),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": self.server.multiprocess,
            "wsgi.run_once": False,
        }
        for raw_name, raw_value in request.headers:
            name = raw_name.decode("latin-1")
            if "_" in name:
                continue  # X_Forwarded_For would become HTTP_X_FORWARDED_FOR: drop names a proxy may not clean
            value = raw_value.decode("latin-1")
            if name == "content-type":
                environ["CONTENT_TYPE"] = value
            elif name == "content-length":
                environ["CONTENT_LENGTH"] = value
            else:
                key = "HTTP_" + name.upper().replace("-", "_")
                environ[key] = f"{environ[key]},{value}" if key in environ else value
        return environ

    async def _send(self, request: h11.Request, status: int, headers: list[tuple[str, str]],
                    chunks: list[bytes]) -> None:
        body = b"".join(chunks)
        names = {name.lower() for name, _ in headers}
        out = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
        if "content-length" not in names and status >= 200 and status not in (204, 304):
            out.append((b"content-length", str(len(body)).encode()))
        out.append((b"date", _http_date()))
        self.writer.write(self.h11.send(h11.Response(status_code=status, headers=out, reason=_status_phrase(status)))
                          or b"")
        if body and request.method != b"HEAD":
            self.writer.write(self.h11.send(h11.Data(data=body)) or b"")
        self.writer.write(self.h11.send(h11.EndOfMessage()) or b"")
        await self.writer.drain()

    async def _send_error(self, status: int, message: str) -> None:
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = (message + "\n").encode()
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        with contextlib.suppress(h11.LocalProtocolError):
            self.writer.write(self.h11.send(h11.Response(status_code=status, headers=headers,
                                                         reason=_status_phrase(status))) or b"")
            self.writer.write(self.h11.send(h11.Data(data=body)) or b"")
            self.writer.write(self.h11.send(h11.EndOfMessage()) or b"")
        with contextlib.suppress(ConnectionError, OSError):
            await asyncio.wait_for(self.writer.drain(), 1.0)


def call_app(app: WSGIApp, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], list[bytes]]:
    """Run the WSGI app (on a pool thread) and collect its whole answer."""
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [status, headers]
        return chunks.append

    chunks: list[bytes] = []
    result = app(environ, start_response)
    try:
        for chunk in result:
            if chunk:
                chunks.append(chunk)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, headers = started
    return int(str(status).split(" ", 1)[0]), list(headers), chunks


def _status_phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def _http_date() -> bytes:
    return formatdate(usegmt=True).encode("ascii")


def _header(request: h11.Request, name: bytes) -> bytes | None:
    for key, value in request.headers:
        if key == name:
            return bytes(value)
    return None


def _is_websocket_upgrade(request: h11.Request) -> bool:
    upgrade = (_header(request, b"upgrade") or b"").lower()
    connection = (_header(request, b"connection") or b"").lower()
    return request.method == b"GET" and upgrade == b"websocket" and b"upgrade" in connection


def _content_length(request: h11.Request) -> int | None:
    value = _header(request, b"content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
