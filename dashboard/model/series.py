"""Time series of task outcomes and queue depth (pure): minute buckets, runtime histograms and their percentiles,
the windows a chart shows, and the SVG geometry of a chart. Nothing here does I/O.

A finished task adds one to its minute's bucket for its (name, queue): succeeded or failed, and its runtime to a
histogram with fixed log-spaced edges, so that buckets add up exactly and p50/p95 over an hour, a day or a week
come from the sum of the buckets (within one bucket's width: +/- 12 %).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

#: Runtime histogram edges in seconds: 1 ms to ~1 day, 25 % apart.
RUNTIME_EDGES: Final = tuple(0.001 * 1.25 ** step for step in range(52))
BUCKETS: Final = len(RUNTIME_EDGES) + 1  # the last one is "longer than the last edge"
Window = Literal["hour", "day", "week"]
#: Each window: its length in minutes and the minutes per point shown.
WINDOWS: Final[dict[str, tuple[int, int]]] = {"hour": (60, 1), "day": (1440, 15), "week": (10080, 60)}


def minute_of(timestamp: float) -> int:
    """The minute (since the epoch) a moment falls in."""
    return int(timestamp // 60)


def bucket_of(runtime: float) -> int:
    """The histogram bucket of a runtime."""
    return bisect_left(RUNTIME_EDGES, runtime)


@dataclass
class MinuteRow:
    """One minute of one (task name, queue): outcomes and a runtime histogram (sparse: bucket -> count)."""

    minute: int
    name: str
    queue: str
    succeeded: int = 0
    failed: int = 0
    runtime_sum: float = 0.0
    histogram: dict[int, int] = field(default_factory=dict)

    def add(self, failed: bool, runtime: float | None) -> None:
        """Count one finished task."""
        if failed:
            self.failed += 1
        else:
            self.succeeded += 1
        if runtime is not None and math.isfinite(runtime) and runtime >= 0:
            bucket = bucket_of(runtime)
            self.histogram[bucket] = self.histogram.get(bucket, 0) + 1
            self.runtime_sum += runtime

    def merge(self, other: MinuteRow) -> None:
        """Add another bucket's counts to this one."""
        self.succeeded += other.succeeded
        self.failed += other.failed
        self.runtime_sum += other.runtime_sum
        for bucket, count in other.histogram.items():
            self.histogram[bucket] = self.histogram.get(bucket, 0) + count


@dataclass(frozen=True)
class QueueSample:
    """A queue's depth and consumer count at one inspection."""

    at: float
    queue: str
    depth: int | None
    consumers: int


def percentile(histogram: dict[int, int], fraction: float) -> float | None:
    """The runtime under which `fraction` of the counted tasks ran (the bucket's upper edge); None when empty."""
    total = sum(histogram.values())
    if not total:
        return None
    rank = fraction * total
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return RUNTIME_EDGES[bucket] if bucket < len(RUNTIME_EDGES) else RUNTIME_EDGES[-1]
    return RUNTIME_EDGES[-1]  # pragma: no cover - the loop always reaches the rank


@dataclass(frozen=True)
class Point:
    """One point of a task series: the minutes from `start` on, `step` long."""

    start: int  # minute
    succeeded: int
    failed: int
    p50: float | None
    p95: float | None

    @property
    def finished(self) -> int:
        """Tasks that finished in this point's minutes."""
        return self.succeeded + self.failed

    @property
    def failure_rate(self) -> float | None:
        """Failed / finished, None when nothing finished."""
        return self.failed / self.finished if self.finished else None


@dataclass(frozen=True)
class DepthPoint:
    """The deepest a queue was within one point's minutes, and its fewest consumers then."""

    start: int
    depth: int | None
    consumers: int | None


def window_range(window: str, now: float) -> tuple[int, int, int]:
    """(first minute, number of points, minutes per point) of a window ending now, aligned to its step."""
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {', '.join(WINDOWS)}")
    length, step = WINDOWS[window]
    points = length // step
    last = minute_of(now) // step * step
    return last - (points - 1) * step, points, step


def task_series(rows: Iterable[MinuteRow], first: int, points: int, step: int) -> list[Point]:
    """Rows (any names and queues) summed into `points` points of `step` minutes from minute `first` on."""
    sums = [MinuteRow(first + index * step, "", "") for index in range(points)]
    for row in rows:
        index = (row.minute - first) // step
        if 0 <= index < points:
            sums[index].merge(row)
    return [Point(bucket.minute, bucket.succeeded, bucket.failed, percentile(bucket.histogram, 0.5),
                  percentile(bucket.histogram, 0.95)) for bucket in sums]


def depth_series(samples: Iterable[QueueSample], first: int, points: int, step: int) -> list[DepthPoint]:
    """Samples of one queue as `points` points: the deepest sample in each, and the fewest consumers."""
    deepest: list[int | None] = [None] * points
    fewest: list[int | None] = [None] * points
    for sample in samples:
        index = (minute_of(sample.at) - first) // step
        if not 0 <= index < points:
            continue
        if sample.depth is not None:
            current = deepest[index]
            deepest[index] = sample.depth if current is None else max(current, sample.depth)
        current_consumers = fewest[index]
        fewest[index] = sample.consumers if current_consumers is None else min(current_consumers, sample.consumers)
    return [DepthPoint(first + index * step, deepest[index], fewest[index]) for index in range(points)]


def totals(points: Sequence[Point], rows: Iterable[MinuteRow] = ()) -> dict[str, float | int | None]:
    """A window's sums: finished, failed, failure rate, and p50/p95 over every row given."""
    merged = MinuteRow(0, "", "")
    for row in rows:
        merged.merge(row)
    finished = sum(point.finished for point in points)
    failed = sum(point.failed for point in points)
    return {"finished": finished, "failed": failed, "failure_rate": failed / finished if finished else None,
            "p50": percentile(merged.histogram, 0.5), "p95": percentile(merged.histogram, 0.95)}


def polyline(values: Sequence[float | None], width: float, height: float, top: float | None = None) -> str:
    """SVG polyline points for values spread evenly over `width`, scaled so `top` (default: the largest) is at the
    top; a missing value breaks nothing: it is drawn as zero."""
    if not values:
        return ""
    peak = top if top is not None else max((value for value in values if value is not None), default=0.0)
    peak = peak or 1.0
    step = width / max(len(values) - 1, 1)
    points = []
    for index, value in enumerate(values):
        y = height - (min(value or 0.0, peak) / peak) * height
        points.append(f"{index * step:.1f},{y:.1f}")
    return " ".join(points)
