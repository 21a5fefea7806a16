"""Revoke: the signals an operator may choose, the body, and when a revoke would be heard by nobody."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .base import ActionError, no_unknown

#: Signals an operator may choose for "revoke and terminate" (Celery takes the name; the worker maps it).
SIGNALS: Final = ("SIGTERM", "SIGKILL", "SIGINT", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGHUP")
DEFAULT_SIGNAL: Final = "SIGTERM"
#: States in which a task has not finished: a revoke can still change its fate.
UNFINISHED: Final = frozenset({"PENDING", "RECEIVED", "STARTED", "RETRY"})
#: States in which a task waits in a queue for a worker to take it.
WAITING: Final = frozenset({"PENDING"})


@dataclass(frozen=True, slots=True)
class RevokeRequest:
    """Revoke one task (or many): optionally terminate it where it runs, with a signal."""

    terminate: bool = False
    signal: str = DEFAULT_SIGNAL
    force: bool = False  # revoke even where no worker can hear it (a consumer added later still knows the id)


def parse_signal(value: object) -> str:
    """A signal name from SIGNALS ("KILL", "sigkill" and "SIGKILL" alike); ActionError otherwise."""
    if value is None or value == "":
        return DEFAULT_SIGNAL
    if isinstance(value, str):
        name = value.strip().upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        if name in SIGNALS:
            return name
    raise ActionError(f"signal: must be one of {', '.join(SIGNALS)}")


def _flag(body: Mapping[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if isinstance(value, str):
        value = value.strip().lower() in ("1", "true", "on", "yes")
    if not isinstance(value, bool):
        raise ActionError(f"{key}: must be true or false")
    return value


def parse_revoke(body: object) -> RevokeRequest:
    """A revoke body (JSON object or form fields): {"terminate": bool, "signal": str, "force": bool}."""
    if body is None:
        body = {}
    if not isinstance(body, Mapping):
        raise ActionError('send a JSON object like {"terminate": true, "signal": "SIGTERM"}')
    no_unknown(body, ("terminate", "signal", "force", "csrf_token"))
    return RevokeRequest(_flag(body, "terminate"), parse_signal(body.get("signal")), _flag(body, "force"))


def revoke_unheard(state: str | None, queue: str | None, consumers: Sequence[str] | None) -> str | None:
    """Why a revoke of a task in `state` waiting in `queue` would be heard by nobody, or None when it can work.

    A revoke is a broadcast that workers keep in memory; a task waiting in a queue that no online worker consumes
    is never looked at, and a worker started later does not know the id. `consumers` None: not compared yet."""
    if state not in WAITING or not queue or consumers is None or consumers:
        return None
    return (f"the task waits in queue {queue!r}, which no online worker consumes: no worker would hear the revoke. "
            f"Move or purge its messages from the queue instead")
