"""The dispatch audit log: every attempt, sent or not, written durably to SQLite. No Flask here.

One connection per log, guarded by a lock (`check_same_thread=False`): SQLite serialises writers anyway, one
connection is one file handle however many server threads there are, and `close()` really closes it. Other
processes (gunicorn workers) open their own; WAL lets them read while one writes, and the busy timeout bounds
how long a write waits for another's lock.

Durability: WAL with `synchronous=FULL`. NORMAL survives a killed process but may lose the last commits on a
power cut or kernel crash; an audit log exists for the moment something went wrong, and one fsync per
dispatch is cheap next to the broker round trip that comes with it.

Recording never breaks a dispatch: a failed write is logged (without the arguments) and counted in
`write_errors`, and the dispatch goes on.
"""

from .attempt import DispatchAttempt
from .entries import (
    ANONYMOUS,
    MAX_TEXT_CHARS,
    SOURCES,
    AuditEntry,
    Origin,
    Outcome,
    Source,
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
    "ANONYMOUS", "BUSY_TIMEOUT", "DAY", "MAX_QUERY_LIMIT", "MAX_TEXT_CHARS", "MEMORY", "PRUNE_BATCH", "PRUNE_EVERY",
    "SCHEMA_VERSION", "SOURCES", "AuditEntry", "AuditLog", "AuditUnavailable", "DispatchAttempt", "Origin",
    "Outcome", "Source", "capped", "error_text", "json_text", "request_entry",
]
