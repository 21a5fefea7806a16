"""Operator actions on tasks and workers, the decisions without I/O: input checks, what a pool supports, whether a
task's arguments are known exactly, whether a revoke can be heard, what a bulk action may touch (pure)."""

from __future__ import annotations

from .base import ActionError
from .bulk import BULK_KINDS, BULK_SAMPLE, DEFAULT_BULK_LIMIT, MAX_BULK_LIMIT, BulkKind, Selection, bulk_state, eligible
from .calls import (
    CARRIED_OPTIONS,
    CallSource,
    KnownCall,
    call_from_audit,
    call_from_backend,
    call_from_events,
    form_text,
    redispatch_body,
)
from .revoke import (
    DEFAULT_SIGNAL,
    SIGNALS,
    UNFINISHED,
    WAITING,
    RevokeRequest,
    parse_revoke,
    parse_signal,
    revoke_unheard,
)
from .workers import (
    MAX_POOL_STEP,
    MAX_TIME_LIMIT,
    PoolSupport,
    mask_settings,
    parse_autoscale,
    parse_count,
    parse_queue,
    parse_rate_limit,
    parse_time_limit,
    pool_kind,
    pool_size,
    pool_support,
)

__all__ = [
    "BULK_KINDS", "BULK_SAMPLE", "CARRIED_OPTIONS", "DEFAULT_BULK_LIMIT", "DEFAULT_SIGNAL", "MAX_BULK_LIMIT",
    "MAX_POOL_STEP", "MAX_TIME_LIMIT", "SIGNALS", "UNFINISHED", "WAITING", "ActionError", "BulkKind", "CallSource",
    "KnownCall", "PoolSupport", "RevokeRequest", "Selection", "bulk_state", "call_from_audit", "call_from_backend",
    "call_from_events", "eligible", "form_text", "mask_settings", "parse_autoscale", "parse_count", "parse_queue",
    "parse_rate_limit", "parse_revoke", "parse_signal", "parse_time_limit", "pool_kind", "pool_size", "pool_support",
    "redispatch_body", "revoke_unheard",
]
