"""Remote control commands to workers, bounded: a reply is awaited for a set time, from as many workers as asked.

Like the inspector's broadcasts, each command runs on a connection of its own (a pooled one may be a dead socket
after a broker restart). Broker errors become BrokerUnavailable here; a worker that does not answer is NoReply, one
that answers with an error is WorkerRefused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from celery import Celery

from ...exceptions import BrokerUnavailable
from ...model.secrets import reason
from ..client import BROKER_ERRORS
from ..inspection import NoReply, WorkerRefused

log = logging.getLogger(__name__)

MIN_COMMAND_TIMEOUT = 2.0  # seconds a worker gets to answer a command (inspections may use less)


class Control:
    """Sends control commands through the bounded control app and reads the replies."""

    def __init__(self, app: Celery, timeout: float) -> None:
        self.app = app
        self.timeout = max(timeout, MIN_COMMAND_TIMEOUT)

    def command(self, name: str, hostname: str, arguments: Mapping[str, Any] | None = None) -> str:
        """Run control command `name` on one worker and return its "ok" answer."""
        replies = self._broadcast(name, dict(arguments or {}), [hostname], 1)
        answer = replies.get(hostname)
        if answer is None:
            raise NoReply(f"worker {hostname} did not answer within {self.timeout:.0f}s")
        return _ok(hostname, answer)

    def revoke(self, task_ids: Sequence[str], *, terminate: bool, signal: str,
               expected: int | None) -> dict[str, Any]:
        """Broadcast a revoke of `task_ids` to every worker; the replies by hostname (empty when none answered).

        With `expected` None nobody is waited for (no worker is online to answer)."""
        arguments = {"task_id": list(task_ids), "terminate": terminate, "signal": signal}
        if expected is None:
            self._send("revoke", arguments)
            return {}
        return self._broadcast("revoke", arguments, None, expected)

    def _broadcast(self, name: str, arguments: dict[str, Any], destination: list[str] | None,
                   limit: int) -> dict[str, Any]:
        try:
            with self.app.connection_for_write() as connection:
                replies = self.app.control.broadcast(
                    name, arguments=arguments, destination=destination, reply=True, timeout=self.timeout,
                    limit=limit, connection=connection,
                )
        except BROKER_ERRORS as exc:
            raise BrokerUnavailable(f"the broker did not take the {name} command ({reason(exc)})") from None
        found: dict[str, Any] = {}
        for reply in replies or []:
            if isinstance(reply, Mapping):
                found.update({str(host): answer for host, answer in reply.items()})
        return found

    def _send(self, name: str, arguments: dict[str, Any]) -> None:
        try:
            with self.app.connection_for_write() as connection:
                self.app.control.broadcast(name, arguments=arguments, reply=False, connection=connection)
        except BROKER_ERRORS as exc:
            raise BrokerUnavailable(f"the broker did not take the {name} command ({reason(exc)})") from None


def _ok(hostname: str, answer: Any) -> str:
    if isinstance(answer, Mapping):
        if "error" in answer:
            raise WorkerRefused(f"{hostname}: {answer['error']}")
        return str(answer.get("ok", answer))
    return str(answer)


def answer_text(hostname: str, answer: Any) -> tuple[bool, str]:
    """(ok, text) of one worker's reply to a broadcast."""
    try:
        return True, _ok(hostname, answer)
    except WorkerRefused as exc:
        return False, str(exc)
