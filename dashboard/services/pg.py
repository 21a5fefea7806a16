"""PostgreSQL connections as the history and audit stores use them (psycopg 3, imported on first use only: the
dashboard runs without it when no PostgreSQL is configured): every connection bounded (connect timeout, TCP
keepalives, a statement timeout), a small pool of them, and versioned migrations safe with several replicas
starting at once."""

from __future__ import annotations

import contextlib
import logging
import select
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

SCHEMES: Final = ("postgresql://", "postgres://", "postgresql+psycopg://")
CONNECT_TIMEOUT: Final = 5  # seconds (libpq takes whole seconds)
STATEMENT_TIMEOUT_MS: Final = 5_000
MIGRATION_TIMEOUT_MS: Final = 600_000  # building an index on a large table may take minutes
POOL_WAIT: Final = 5.0  # seconds a caller waits for a free connection of a full pool


def is_postgres_url(url: str | None) -> bool:
    """Whether `url` names a PostgreSQL database."""
    return bool(url) and str(url).startswith(SCHEMES)


def connect_url(url: str) -> str:
    """The libpq URL for a configured URL (SQLAlchemy's postgresql+psycopg:// accepted too)."""
    return "postgresql://" + url.split("://", 1)[1] if url.startswith("postgresql+psycopg://") else url


def connect(url: str, *, statement_timeout_ms: int = STATEMENT_TIMEOUT_MS,
            purpose: str = "history") -> psycopg.Connection[Any]:
    """One autocommit connection with every bound set (connect timeout, keepalives, statement timeout)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    given = conninfo_to_dict(connect_url(url))
    options = " ".join(part for part in (str(given.get("options") or ""),
                                         f"-c statement_timeout={statement_timeout_ms}",
                                         "-c idle_in_transaction_session_timeout=60000",
                                         # JIT compiles a plan in tens to hundreds of ms: more than any of
                                         # these statements costs to run
                                         "-c jit=off") if part)
    conninfo = make_conninfo(
        connect_url(url), connect_timeout=given.get("connect_timeout") or CONNECT_TIMEOUT, options=options,
        application_name=given.get("application_name") or f"dispatch-dashboard {purpose}",
        keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3, tcp_user_timeout=10_000,
    )
    # Never prepared: a prepared statement keeps a plan made for other values (and for other planner settings,
    # which the history's searches set per query), and a search's best plan depends on its values.
    return psycopg.connect(conninfo, autocommit=True, prepare_threshold=None)


class Pool:
    """At most `size` connections, reused LIFO; a broken one is closed and replaced on the next use."""

    def __init__(self, url: str, size: int, wait: float = POOL_WAIT, purpose: str = "history") -> None:
        self.url = url
        self.size = size
        self._slots = threading.BoundedSemaphore(size)
        self.wait = wait
        self.purpose = purpose
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection for the `with` block (TimeoutError when none frees up in time, psycopg.Error when none
        can be opened); closed instead of kept when the block fails or leaves a transaction open."""
        import psycopg

        if not self._slots.acquire(timeout=self.wait):
            raise TimeoutError(f"all {self.size} connections stayed busy for {self.wait:.0f} s")
        conn: psycopg.Connection[Any] | None = None
        try:
            with self._lock:
                if self._closed:
                    raise psycopg.OperationalError("the store is closed")
                conn = self._idle.pop() if self._idle else None
            while conn is not None and stale(conn):
                with contextlib.suppress(Exception):
                    conn.close()
                with self._lock:
                    conn = self._idle.pop() if self._idle else None
            if conn is None:
                conn = connect(self.url, purpose=self.purpose)
            yield conn
        except BaseException:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
                conn = None
            raise
        finally:
            if conn is not None:
                with self._lock:
                    keep = not self._closed and not conn.closed and conn.info.transaction_status == 0  # IDLE
                    if keep:
                        self._idle.append(conn)
                if not keep:
                    with contextlib.suppress(Exception):
                        conn.close()
            self._slots.release()

    def close(self) -> None:
        """Close the idle connections; connections in use are closed when given back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()


def stale(conn: psycopg.Connection[Any]) -> bool:
    """Whether an idle connection is closed or was ended by the server (an idle session has nothing to read
    unless the server sent a goodbye: an admin's termination, a restart)."""
    if conn.closed:
        return True
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def migrate(conn: psycopg.Connection[Any], migrations: Sequence[Sequence[str]], table: str, key: int, shown: str,
            what: str) -> None:
    """Bring a schema to len(migrations) (its version in `table`), once, even with several replicas starting at
    once: the steps run in one transaction under a transaction-level advisory lock."""
    wanted = len(migrations)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (version integer NOT NULL)")
        row = conn.execute(f"SELECT max(version) FROM {table}").fetchone()
        version = int(row[0]) if row and row[0] is not None else 0
        if version > wanted:
            import psycopg

            raise psycopg.errors.FeatureNotSupported(
                f"{what} schema version {version} is newer than this dashboard's ({wanted})")
        for step in range(version, wanted):
            for statement in migrations[step]:
                conn.execute(statement)
        if version < wanted:
            conn.execute(f"DELETE FROM {table}")
            conn.execute(f"INSERT INTO {table} (version) VALUES (%s)", (wanted,))
    if version < wanted:
        log.info("%s: %s at schema version %d", what, shown, wanted)
