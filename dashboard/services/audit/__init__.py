"""The dispatch audit log: every attempt, sent or not, written durably to SQLite (log.py says how). No Flask here."""

from .attempt import DispatchAttempt
from .entries import (
    ACTION_OUTCOMES,
    ANONYMOUS,
    MAX_TEXT_CHARS,
    SOURCES,
    ActionEntry,
    ActionOutcome,
    AuditEntry,
    Origin,
    Outcome,
    Source,
    action_entry,
    capped,
    error_text,
    json_text,
    request_entry,
)
from .log import (
    BUSY_TIMEOUT,
    DAY,
    MAX_QUERY_LIMIT,
    MEMORY,
    PRUNE_BATCH,
    PRUNE_EVERY,
    SCHEMA_VERSION,
    AuditLog,
    AuditUnavailable,
)

__all__ = [
    "ACTION_OUTCOMES", "ANONYMOUS", "BUSY_TIMEOUT", "DAY", "MAX_QUERY_LIMIT", "MAX_TEXT_CHARS", "MEMORY",
    "PRUNE_BATCH", "PRUNE_EVERY", "SCHEMA_VERSION", "SOURCES", "ActionEntry", "ActionOutcome", "AuditEntry",
    "AuditLog", "AuditUnavailable", "DispatchAttempt", "Origin", "Outcome", "Source", "action_entry", "capped",
    "error_text", "json_text", "request_entry",
]
