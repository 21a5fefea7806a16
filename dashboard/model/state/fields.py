"""Coercion of untrusted event fields into small, bounded Python values."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Final

#: Appended to a clipped string; the UI can detect it and show "truncated".
TRUNCATION_MARK: Final = "...[truncated, {total} chars in all]"

# Values that a large share of tasks carry verbatim; sharing one object each
# saves ~50 bytes per task and field without an unbounded intern table.
_COMMON_TEXT: Final[dict[str, str]] = {
    text: text for text in ("", "()", "{}", "[]", "None", "True", "False", "0", "1")
}


def as_text(value: object) -> str | None:
    """Return value as a str, or None when absent."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    # Events from non-Python producers may carry JSON lists or numbers here.
    return repr(value)


def clip(value: object, cap: int) -> str | None:
    """Return value as a str of at most cap characters plus a truncation mark."""
    text = as_text(value)
    if text is None:
        return None
    if len(text) > cap:
        return text[:cap] + TRUNCATION_MARK.format(total=len(text))
    return _COMMON_TEXT.get(text, text)


def as_float(value: object) -> float | None:
    """Return a finite float, or None for anything else (bools, NaN, strings)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        return None
    number = float(value)
    # A NaN timestamp would break the sorted timeline (NaN compares false).
    return number if math.isfinite(number) else None


def as_int(value: object) -> int | None:
    """Return an int, or None when value is not an integral number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    number = as_float(value)
    return int(number) if number is not None else None


class Interner:
    """Share one str object per distinct value, up to a fixed number of values."""

    __slots__ = ("_table", "_capacity", "_max_length")

    def __init__(self, capacity: int = 50_000, max_length: int = 256) -> None:
        """Create an empty table holding at most capacity strings."""
        self._table: dict[str, str] = {}
        self._capacity = capacity
        self._max_length = max_length

    def __call__(self, value: object) -> str | None:
        """Return the shared copy of value as text (None stays None)."""
        text = as_text(value)
        if text is None:
            return None
        shared = self._table.get(text)
        if shared is not None:
            return shared
        # Past the cap (or for odd, long values) we keep the caller's object:
        # correct, just not shared, so hostile input cannot grow the table.
        if len(self._table) < self._capacity and len(text) <= self._max_length:
            self._table[text] = text
        return text
