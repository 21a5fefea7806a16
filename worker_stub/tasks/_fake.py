"""Deterministic fake text for the stub tasks: the same input always gives the same words."""

from __future__ import annotations

import hashlib

_VOCABULARY: tuple[str, ...] = (
    "the",
    "queue",
    "worker",
    "message",
    "broker",
    "task",
    "result",
    "event",
    "route",
    "signal",
    "quickly",
    "slowly",
    "arrives",
    "waits",
    "returns",
    "retries",
    "green",
    "amber",
    "quiet",
    "busy",
)


def fake_words(seed: str, count: int) -> list[str]:
    """Return `count` words chosen deterministically from `seed`."""
    words: list[str] = []
    block = 0
    while len(words) < count:
        digest = hashlib.sha256(f"{seed}\x00{block}".encode()).digest()
        words.extend(_VOCABULARY[byte % len(_VOCABULARY)] for byte in digest)
        block += 1
    return words[:count]


def fake_count(seed: str, low: int, high: int) -> int:
    """Return an integer in [low, high] chosen deterministically from `seed`."""
    digest = hashlib.sha256(seed.encode()).digest()
    return low + int.from_bytes(digest[:4], "big") % (high - low + 1)
