"""Query-string filters shared by the tasks and audit pages (and their JSON twins): parse, check, link.

Every problem is a QueryError whose message says which parameter is wrong and what it should be; the
views answer it with a 400.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import urlencode

MAX_OFFSET = 10_000_000
MAX_FILTER_CHARS = 255


class QueryError(ValueError):
    """A query parameter the user must fix (the message says how)."""


def text_args(args: Mapping[str, str], keys: Iterable[str], error: type[QueryError] = QueryError,
              max_chars: int = MAX_FILTER_CHARS) -> dict[str, str | None]:
    """Each key's value, stripped; None when absent or blank. Raises `error` for a value that is too long."""
    values: dict[str, str | None] = {}
    for key in keys:
        raw = (args.get(key) or "").strip()
        if len(raw) > max_chars:
            raise error(f"{key}: at most {max_chars} characters")
        values[key] = raw or None
    return values


def int_arg(args: Mapping[str, str], key: str, default: int, low: int, high: int,
            error: type[QueryError] = QueryError) -> int:
    """A whole number within [low, high], or `default` when absent. Raises `error` otherwise."""
    raw = (args.get(key) or "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise error(f"{key}: expected a whole number, got {raw[:40]!r}") from None
    if not low <= value <= high:
        raise error(f"{key}: must be between {low} and {high}")
    return value


def page_query(filters: Mapping[str, object], limit: int, offset: int, page_size: int,
               changes: Mapping[str, object]) -> str:
    """The query string for `filters` and a page, with `changes` applied; defaults and blanks left out."""
    values: dict[str, object] = dict(filters)
    values["offset"] = offset
    if limit != page_size:
        values["limit"] = limit
    values.update(changes)
    if values.get("offset") == 0:
        values.pop("offset")
    return urlencode({key: value for key, value in values.items() if value not in (None, "")})
