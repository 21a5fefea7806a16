"""The audit log: every dispatch attempt, sent or not, and every operator action, written durably to SQLite
(log.py) or, shared by replicas, to PostgreSQL (postgres.py); store.py is what both do. No Flask here."""

from __future__ import annotations

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
from .log import BUSY_TIMEOUT, MEMORY, SCHEMA_VERSION, AuditLog
from .store import DAY, MAX_QUERY_LIMIT, PRUNE_BATCH, PRUNE_EVERY, AuditStore, AuditUnavailable

POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")


def open_audit(where: str) -> AuditStore:
    """The audit log a configured path names: a postgresql:// URL, else a SQLite file (or ":memory:")."""
    if where.startswith(POSTGRES_SCHEMES):
        from .postgres import PostgresAuditLog  # psycopg is imported there only

        return PostgresAuditLog(where)
    return AuditLog(where)


__all__ = [
    "ACTION_OUTCOMES", "ANONYMOUS", "BUSY_TIMEOUT", "DAY", "MAX_QUERY_LIMIT", "MAX_TEXT_CHARS", "MEMORY",
    "PRUNE_BATCH", "PRUNE_EVERY", "SCHEMA_VERSION", "SOURCES", "ActionEntry", "ActionOutcome", "AuditEntry",
    "AuditLog", "AuditStore", "AuditUnavailable", "DispatchAttempt", "Origin", "Outcome", "Source", "action_entry",
    "capped", "error_text", "json_text", "open_audit", "request_entry",
]
