"""Worker records, Celery's heartbeat-expiry rule and immutable worker views."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from .fields import Interner, as_float, as_int

#: Percentage of the heartbeat frequency after which a silent worker is offline
#: (celery.events.state.HEARTBEAT_EXPIRE_WINDOW).
HEARTBEAT_EXPIRE_WINDOW: Final = 200
#: Celery's Worker default when an event carries no freq.
DEFAULT_FREQ: Final = 60.0

WORKER_EVENT_TYPES: Final = frozenset({"worker-online", "worker-heartbeat", "worker-offline"})


def heartbeat_expires(last_heartbeat: float, freq: float) -> float:
    """Return when a worker last heard from at last_heartbeat counts as offline."""
    # Celery's heartbeat_expires() computes freq * window / 100 (2 x freq with
    # the default 200), although its comment speaks of adding the window to
    # freq; we follow the code so both dashboards agree.
    return last_heartbeat + freq * HEARTBEAT_EXPIRE_WINDOW / 100


class WorkerRecord:
    """Mutable state of one worker, owned by the event thread."""

    __slots__ = (
        "hostname", "pid", "freq", "last_heartbeat", "heartbeat_ts", "offline_ts",
        "reported_ts", "active", "processed", "loadavg", "sw_ident", "sw_ver", "sw_sys",
        "pool", "queues", "registered", "stats", "inspected_at",
    )  # fmt: skip

    def __init__(self, hostname: str) -> None:
        """Create a record for a worker never heard from."""
        self.hostname = hostname
        self.pid: int | None = None
        self.freq = DEFAULT_FREQ
        # Receiver-clock time of the newest heartbeat, compared with our clock
        # so that worker clock skew cannot make a worker look alive or dead.
        self.last_heartbeat: float | None = None
        # Worker-clock times, to order a heartbeat against worker-offline.
        self.heartbeat_ts: float | None = None
        self.offline_ts: float | None = None
        self.reported_ts: float | None = None
        self.active: int | None = None
        self.processed: int | None = None
        self.loadavg: tuple[float, ...] | None = None
        self.sw_ident: str | None = None
        self.sw_ver: str | None = None
        self.sw_sys: str | None = None
        # Filled by the inspect poller; replaced wholesale, never mutated in place,
        # so views may share them.
        self.pool: Mapping[str, Any] | None = None
        self.queues: tuple[str, ...] | None = None
        self.registered: tuple[str, ...] | None = None
        self.stats: Mapping[str, Any] | None = None
        self.inspected_at: float | None = None

    def beat(self, ts: float, local_received: float) -> None:
        """Record a sign of life sent at ts (worker clock), received at local_received."""
        if self.offline_ts is not None and ts <= self.offline_ts:
            return  # sent before the worker said goodbye, delivered late
        if self.last_heartbeat is None or local_received > self.last_heartbeat:
            self.last_heartbeat = local_received
        if self.heartbeat_ts is None or ts > self.heartbeat_ts:
            self.heartbeat_ts = ts

    def is_online(self, now: float) -> bool:
        """Return whether the worker counts as online at now (receiver clock)."""
        if self.last_heartbeat is None:
            return False
        if self.offline_ts is not None and (
            self.heartbeat_ts is None or self.heartbeat_ts <= self.offline_ts
        ):
            return False
        return now < heartbeat_expires(self.last_heartbeat, self.freq)

    def apply(
        self, kind: str, event: Mapping[str, Any], ts: float, local_received: float, intern: Interner
    ) -> None:
        """Apply a worker-online/heartbeat/offline event."""
        get = event.get
        freq = as_float(get("freq"))
        if freq is not None and freq > 0:
            self.freq = freq
        pid = as_int(get("pid"))
        if pid is not None:
            self.pid = pid
        for attr in ("sw_ident", "sw_ver", "sw_sys"):
            value = intern(get(attr))
            if value is not None:
                setattr(self, attr, value)
        if self.reported_ts is None or ts >= self.reported_ts:
            # Counters are snapshots: only the newest report may set them.
            self.reported_ts = ts
            active, processed = as_int(get("active")), as_int(get("processed"))
            loadavg = _loadavg(get("loadavg"))
            self.active = active if active is not None else self.active
            self.processed = processed if processed is not None else self.processed
            self.loadavg = loadavg if loadavg is not None else self.loadavg
        if kind == "worker-offline":
            if self.offline_ts is None or ts > self.offline_ts:
                self.offline_ts = ts
        else:
            self.beat(ts, local_received)

    def inspect(
        self,
        now: float,
        intern: Interner,
        queues: Iterable[str] | None,
        registered: Iterable[str] | None,
        pool: Mapping[str, Any] | None,
        stats: Mapping[str, Any] | None,
    ) -> None:
        """Store what the inspect poller learned; None leaves a field as it was."""
        if queues is not None:
            self.queues = tuple(name for name in map(intern, queues) if name is not None)
        if registered is not None:
            self.registered = tuple(name for name in map(intern, registered) if name is not None)
        # Deep copies: the poller's dicts must not change under our readers.
        if pool is not None:
            self.pool = MappingProxyType(copy.deepcopy(dict(pool)))
        if stats is not None:
            self.stats = MappingProxyType(copy.deepcopy(dict(stats)))
        self.inspected_at = now


def _loadavg(value: object) -> tuple[float, ...] | None:
    """Return a load-average triple as floats, or None when malformed."""
    if not isinstance(value, (list, tuple)):
        return None
    numbers = tuple(number for number in map(as_float, value[:3]) if number is not None)
    return numbers if len(numbers) == len(value[:3]) else None


@dataclass(frozen=True, slots=True)
class WorkerView:
    """Immutable snapshot of one worker, with its status at snapshot time."""

    hostname: str
    online: bool
    last_heartbeat: float | None
    heartbeat_expires: float | None
    freq: float
    pid: int | None
    active: int | None
    processed: int | None
    loadavg: tuple[float, ...] | None
    sw_ident: str | None
    sw_ver: str | None
    sw_sys: str | None
    pool: Mapping[str, Any] | None
    queues: tuple[str, ...] | None
    registered: tuple[str, ...] | None
    stats: Mapping[str, Any] | None
    inspected_at: float | None

    @property
    def status(self) -> str:
        """Return "online" or "offline"."""
        return "online" if self.online else "offline"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (the JSON API's worker shape)."""
        return {
            "hostname": self.hostname,
            "status": self.status,
            "last_heartbeat": self.last_heartbeat,
            "heartbeat_expires": self.heartbeat_expires,
            "freq": self.freq,
            "pid": self.pid,
            "active": self.active,
            "processed": self.processed,
            "loadavg": list(self.loadavg) if self.loadavg is not None else None,
            "pool": copy.deepcopy(dict(self.pool)) if self.pool is not None else None,
            "queues": list(self.queues) if self.queues is not None else None,
            "registered": list(self.registered) if self.registered is not None else None,
            "stats": copy.deepcopy(dict(self.stats)) if self.stats is not None else None,
            "inspected_at": self.inspected_at,
            "sw": {"ident": self.sw_ident, "ver": self.sw_ver, "sys": self.sw_sys},
        }


def worker_view(worker: WorkerRecord, now: float) -> WorkerView:
    """Return an immutable snapshot of worker (call under the owner's lock)."""
    last = worker.last_heartbeat
    return WorkerView(
        hostname=worker.hostname,
        online=worker.is_online(now),
        last_heartbeat=last,
        heartbeat_expires=heartbeat_expires(last, worker.freq) if last is not None else None,
        freq=worker.freq,
        pid=worker.pid,
        active=worker.active,
        processed=worker.processed,
        loadavg=worker.loadavg,
        sw_ident=worker.sw_ident,
        sw_ver=worker.sw_ver,
        sw_sys=worker.sw_sys,
        pool=worker.pool,
        queues=worker.queues,
        registered=worker.registered,
        stats=worker.stats,
        inspected_at=worker.inspected_at,
    )
