"""The serving loop: one asyncio loop owns every socket; the WSGI app runs on a bounded thread pool.

Why not a thread per connection (gunicorn's gthread, until December 2026): a client that sends half a request, or
holds a websocket open, held a thread; 64 of them stopped every answer. Here:

- A request is read on the loop (h11) under deadlines (`request_timeout` for the whole head and body, a keep-alive
  timeout between requests) and size caps, and only a complete request reaches a thread. Slow, idle and half-sent
  connections cost a few kilobytes each, never a thread; past `max_connections` a new one gets a 503 at once.
- A websocket is checked by the app like any request (host, origin, identity, role), then handed to the fan-out
  thread (fanout.py), which renders each broadcast group's frames once and queues the same bytes here for each
  member's non-blocking write. Past
  `max_websockets` per process, or `max_websockets_per_client`, the handshake is refused with a 503 at once.
- No `Server` header; X-Forwarded-* are left to the app (ProxyFix, by `trusted_proxies`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .connection import READ_CHUNK, Connection, Handoff, Limits, RequestCounter, WSGIApp
from .fanout import Fanout
from .websocket import WebSocketConnection

__all__ = ["Handoff", "Limits", "Server", "WSGIApp"]

log = logging.getLogger(__name__)

_REFUSAL = b"too many connections to this dashboard process\n"
TOO_MANY_CONNECTIONS = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                        b"Retry-After: 5\r\nContent-Length: " + str(len(_REFUSAL)).encode() + b"\r\n\r\n" + _REFUSAL)


class Server:
    """Serves one WSGI app on given listening sockets until `stop()`."""

    def __init__(self, app: WSGIApp, limits: Limits, *, multiprocess: bool = False,
                 requests: RequestCounter | None = None) -> None:
        self.app = app
        self.requests = requests  # told of every request, so that the event thread yields to them
        self.limits = limits
        self.multiprocess = multiprocess
        self.pool = ThreadPoolExecutor(limits.threads, thread_name_prefix="dashboard-http")
        self.fanout = Fanout()
        self._lock = threading.Lock()
        self._sockets_by_client: dict[str, int] = {}
        self._websockets = 0
        self._connections = 0
        self._servers: list[asyncio.base_events.Server] = []
        self._live: set[WebSocketConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.refused_connections = 0
        self.refused_websockets = 0

    # -- lifecycle ------------------------------------------------------------------------------------------

    def run(self, sockets: list[socket.socket], on_tick: Callable[[], bool] | None = None) -> None:
        """Serve until stop() or until `on_tick()` (called about once a second) returns False."""
        asyncio.run(self._main(sockets, on_tick))

    def stop(self) -> None:
        """Ask the loop to stop (from any thread, or a signal handler); nothing once it has stopped."""
        loop, stopping = self.loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed between the check and the call
                loop.call_soon_threadsafe(stopping.set)

    async def _main(self, sockets: list[socket.socket], on_tick: Callable[[], bool] | None) -> None:
        self.loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self.fanout.start()
        for sock in sockets:
            sock.setblocking(False)
            self._servers.append(await asyncio.start_server(self._accept, sock=sock, limit=READ_CHUNK,
                                                            backlog=2048))
        try:
            while not self._stopping.is_set():
                if on_tick is not None and not on_tick():
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 1.0)
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        for connection in list(self._live):
            connection.close(1001, "the server is restarting")  # the page's websocket reconnects elsewhere
        self.fanout.stop()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.limits.graceful_timeout)
        for task in list(self._tasks):
            task.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -- caps -----------------------------------------------------------------------------------------------

    def reserve_websocket(self, client: str) -> str | None:
        """Count one more websocket for `client`; a refusal message when a cap is reached."""
        with self._lock:
            if self._websockets >= self.limits.max_websockets:
                self.refused_websockets += 1
                return (f"this dashboard process already serves {self.limits.max_websockets} live connections "
                        "([server] max_websockets): try again later")
            held = self._sockets_by_client.get(client, 0)
            if held >= self.limits.max_websockets_per_client:
                self.refused_websockets += 1
                return (f"{client or 'this client'} already has {held} live connections open "
                        "([server] max_websockets_per_client): close some pages")
            self._websockets += 1
            self._sockets_by_client[client] = held + 1
            return None

    def release_websocket(self, client: str) -> None:
        """A websocket reserved for `client` closed (or its handshake never completed)."""
        with self._lock:
            self._websockets -= 1
            held = self._sockets_by_client.get(client, 0) - 1
            if held > 0:
                self._sockets_by_client[client] = held
            else:
                self._sockets_by_client.pop(client, None)

    @property
    def websockets(self) -> int:
        """Open websockets in this process."""
        return self._websockets

    # -- connections ----------------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._connections += 1
        try:
            if self._connections > self.limits.max_connections:
                self.refused_connections += 1
                writer.write(TOO_MANY_CONNECTIONS)
                return
            await Connection(self, reader, writer).serve()
        except (ConnectionError, OSError):
            pass
        except Exception:  # noqa: BLE001 - one broken connection must never take the loop down
            log.exception("connection handler failed")
        finally:
            self._connections -= 1
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    def track(self, connection: WebSocketConnection) -> None:
        """Remember an open websocket (closed with 1001 on shutdown)."""
        self._live.add(connection)

    def untrack(self, connection: WebSocketConnection) -> None:
        """Forget a closed websocket."""
        self._live.discard(connection)
