"""The README renders as meant: every code block is closed, so no section ends up inside one."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
FENCE = re.compile(r"^(```|~~~)")


def test_every_code_block_is_closed_and_no_heading_is_inside_one() -> None:
    inside = False
    opened_at = 0
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), start=1):
        if FENCE.match(line):
            inside, opened_at = not inside, number
        elif inside and line.startswith("## "):
            raise AssertionError(f"line {number}: heading {line!r} inside the code block opened on line {opened_at}")
    assert not inside, f"the code block opened on line {opened_at} is never closed"
