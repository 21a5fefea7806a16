"""Checks of values that arrive from TOML, JSON or events: one definition of "a number" (pure)."""

from __future__ import annotations

import math
from typing import Any, TypeGuard


def is_number(value: Any) -> TypeGuard[int | float]:
    """True for an int or a float, never a bool (which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_whole(value: Any) -> TypeGuard[int]:
    """True for an int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def number_in(value: Any, low: float, high: float, *, whole: bool = False) -> bool:
    """True for a finite number (a whole one, with `whole`) from `low` to `high` inclusive."""
    if not (is_whole(value) if whole else is_number(value)):
        return False
    return math.isfinite(value) and low <= value <= high
