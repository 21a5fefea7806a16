"""What every action shares: the error that says why not (with its HTTP status), and a body's field check."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..dispatch import shown_key


class ActionError(Exception):
    """An action that cannot be done (or not now): `status` is the HTTP answer, the message says what to do."""

    def __init__(self, message: str, status: int = 400, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.extra = extra


def no_unknown(body: Mapping[str, Any], known: Sequence[str]) -> None:
    """Refuse a body with fields the action does not know (a typo must not pass silently)."""
    unknown = sorted(str(key) for key in body if key not in known)
    if unknown:
        shown = ", ".join(repr(shown_key(key)) for key in unknown[:5])
        raise ActionError(f"unknown field(s) {shown}; expected {', '.join(k for k in known if k != 'csrf_token')}")
