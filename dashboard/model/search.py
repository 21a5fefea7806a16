"""The task search language (pure): parse a query once, then match it in memory or compile it for a store.

    name:acme.billing.* state:FAILURE worker:celery@a queue:billing since:1h until:2026-12-01 id:3f2a
    args:42 result:timeout "free text" words

- `name`, `queue`, `worker`: a value or a glob (`*` any run of characters, `?` one), case-sensitive as Celery's
  names are; `state`: one of Celery's states, any case; `id`: a prefix of the task id. Repeating one of these
  keys, or giving a comma-separated list (`state:FAILURE,RETRY`), means any of them.
- `since`, `until`: a duration back from now (`90s`, `15m`, `1h`, `2d`, `1w`), a date or date-time in ISO 8601
  (UTC unless it says otherwise) or epoch seconds; the task's first sighting must fall in [since, until).
- `args`, `kwargs`, `result`, `exception`, `traceback`: words in that field; free text (bare words and quoted
  text) looks in all five. A word matches a word of the text that starts with it, case-insensitively
  (`timeout` finds `TimeoutError`); every word must match (AND).
- A key may be negated with a leading `-` (`-state:SUCCESS`, `-name:debug.*`).

Every problem raises SearchError naming it; nothing here does I/O.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any, Final, Literal

from .state.tasks import EVENT_STATES, TaskView

MAX_QUERY_CHARS: Final = 1000
MAX_TERMS: Final = 32
TEXT_FIELDS: Final = ("args", "kwargs", "result", "exception", "traceback")
TextField = Literal["args", "kwargs", "result", "exception", "traceback"]
VALUE_KEYS: Final = ("name", "state", "queue", "worker", "id")
TIME_KEYS: Final = ("since", "until")
KEYS: Final = (*VALUE_KEYS, *TIME_KEYS, *TEXT_FIELDS)
#: Orders of a search: first sighting (newest first by default), runtime, name or state.
SEARCH_SORTS: Final = ("-seen", "seen", "-runtime", "runtime", "-name", "name", "-state", "state")
_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}
_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_TOKEN: Final = re.compile(r'(-?)(?:([A-Za-z_]+):)?(?:"([^"]*)"|(\S+))')
_WORD: Final = re.compile(r"[^\W_]+")
_GLOB_CHARS: Final = frozenset("*?")


class SearchError(ValueError):
    """A query that cannot be run; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class ValueFilter:
    """One of name/state/queue/worker/id: any of `values` (globs for name/queue/worker, prefixes for id)."""

    key: str
    values: tuple[str, ...]
    negated: bool = False

    def accepts(self, value: str | None) -> bool:
        """Whether a task with this value passes the filter."""
        found = value is not None and any(_value_matches(self.key, pattern, value) for pattern in self.values)
        return found != self.negated


@dataclass(frozen=True, slots=True)
class Term:
    """Words that must all occur (as word prefixes) in `field`, or in any text field when `field` is None."""

    words: tuple[str, ...]
    field: TextField | None = None
    negated: bool = False


@dataclass(frozen=True)
class TaskQuery:
    """A parsed search: every part must hold (AND)."""

    text: str = ""
    filters: tuple[ValueFilter, ...] = ()
    since: float | None = None
    until: float | None = None
    terms: tuple[Term, ...] = ()

    @property
    def empty(self) -> bool:
        """True when the query matches every task."""
        return not (self.filters or self.terms) and self.since is None and self.until is None

    def matches(self, task: Any, seen: float | None = None) -> bool:
        """Whether `task` satisfies the query: a TaskView (from memory or the store) or anything with the same
        attributes (the state's records), `seen` its first sighting when it is not a TaskView."""
        for flt in self.filters:
            if not flt.accepts(getattr(task, flt.key)):
                return False
        if self.since is not None or self.until is not None:
            if seen is None and isinstance(task, TaskView):
                seen = first_seen(task)
            if seen is None or (self.since is not None and seen < self.since) \
                    or (self.until is not None and seen >= self.until):
                return False
        for term in self.terms:
            fields: Iterable[TextField] = (term.field,) if term.field is not None else TEXT_FIELDS
            texts = [text for text in (getattr(task, name) for name in fields) if text]
            found = all(any(_has_word_prefix(text, word) for text in texts) for word in term.words)
            if found == term.negated:
                return False
        return True

    @property
    def needs_time(self) -> bool:
        """True when matching needs the task's first sighting."""
        return self.since is not None or self.until is not None


def first_seen(task: TaskView) -> float | None:
    """When the task was first seen: its earliest timeline entry (the time searches and sorting use)."""
    return task.timeline[0].timestamp if task.timeline else None


def words(text: str) -> list[str]:
    """The words of `text` as searches see them: runs of letters and digits, case-folded, accents removed (the
    rule SQLite's unicode61 tokenizer applies, so that memory and the store agree)."""
    folded = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(char for char in folded if not unicodedata.combining(char))
    return _WORD.findall(plain)


def parse_query(text: str, now: float) -> TaskQuery:
    """Parse a search (see the module's docstring); SearchError for anything that cannot be run."""
    if len(text) > MAX_QUERY_CHARS:
        raise SearchError(f"the search is too long: at most {MAX_QUERY_CHARS} characters")
    if text.count('"') % 2:
        raise SearchError('a quote (") is not closed')
    filters: list[ValueFilter] = []
    terms: list[Term] = []
    since: float | None = None
    until: float | None = None
    position = 0
    stripped = text.strip()
    while position < len(stripped):
        if stripped[position].isspace():
            position += 1
            continue
        match = _TOKEN.match(stripped, position)
        if match is None:  # pragma: no cover - the pattern matches any non-space character
            raise SearchError(f"cannot read the search at {stripped[position:position + 20]!r}")
        position = match.end()
        negated, key, quoted, bare = match.group(1) == "-", match.group(2), match.group(3), match.group(4)
        value = quoted if quoted is not None else bare
        if key is None and bare is not None and bare.endswith(":") and bare[:-1].lower() in KEYS:
            raise SearchError(f"{bare[:-1].lower()}: give a value after the colon")
        if key is not None:
            key = key.lower()
            if key not in KEYS:
                raise SearchError(f"unknown key {key!r}: use {', '.join(KEYS)}, or put the text in quotes")
            if not value:
                raise SearchError(f"{key}: give a value after the colon")
            if key in TIME_KEYS:
                if negated:
                    raise SearchError(f"{key}: cannot be negated")
                moment = parse_time(value, now, key)
                if key == "since":
                    since = moment if since is None else max(since, moment)
                else:
                    until = moment if until is None else min(until, moment)
            elif key in VALUE_KEYS:
                filters.append(_value_filter(key, value, negated))
            else:
                terms.append(_term(value, key, negated))  # type: ignore[arg-type]
        else:
            if not value:
                continue
            terms.append(_term(value, None, negated))
        if len(filters) + len(terms) > MAX_TERMS:
            raise SearchError(f"the search has too many parts: at most {MAX_TERMS}")
    if since is not None and until is not None and since >= until:
        raise SearchError("since: must be before until")
    return TaskQuery(text=text.strip(), filters=_merged(filters), since=since, until=until, terms=tuple(terms))


def _merged(filters: list[ValueFilter]) -> tuple[ValueFilter, ...]:
    """One filter per key for the positive ones (a repeated key means any of its values); negations stay apart
    (each value is excluded)."""
    merged: dict[str, ValueFilter] = {}
    negations: list[ValueFilter] = []
    for flt in filters:
        if flt.negated:
            negations.append(flt)
        elif flt.key in merged:
            merged[flt.key] = ValueFilter(flt.key, merged[flt.key].values + flt.values)
        else:
            merged[flt.key] = flt
    return (*merged.values(), *negations)


def fold_filters(q: str, state: str | None = None, name: str | None = None, queue: str | None = None,
                 worker: str | None = None) -> str:
    """A search with the tasks list's other filters added: the state, queue and worker exact, the name as a part of
    names. SearchError for a filter a search cannot quote (one holding a double quote)."""
    parts = [q]
    if state:
        parts.append(f"state:{state}")
    for key, value, pattern in (("queue", queue, "{}"), ("worker", worker, "{}"), ("name", name, "*{}*")):
        if value:
            if '"' in value:
                raise SearchError(f'{key}: a filter beside a search cannot hold a double quote (")')
            parts.append(f'{key}:"{pattern.format(value)}"')
    return " ".join(part for part in parts if part)


def parse_time(value: str, now: float, key: str = "time") -> float:
    """A moment: a duration back from `now` (1h), ISO 8601 (UTC unless it says otherwise) or epoch seconds."""
    duration = _DURATION.fullmatch(value.lower())
    if duration is not None:
        return now - float(duration.group(1)) * _UNITS[duration.group(2)]
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if math.isfinite(number) and number >= 0:
            return number
        raise SearchError(f"{key}: {value[:40]!r} is not a time")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise SearchError(f"{key}: {value[:40]!r} is neither a duration like 15m, 1h, 2d nor a date like "
                          "2026-12-01 or 2026-12-01T08:00") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def glob_prefix(pattern: str) -> str:
    """The literal start of a glob, before its first wildcard (what an index can seek to)."""
    for index, char in enumerate(pattern):
        if char in _GLOB_CHARS:
            return pattern[:index]
    return pattern


def is_glob(pattern: str) -> bool:
    """Whether the value has a wildcard."""
    return any(char in _GLOB_CHARS for char in pattern)


def glob_to_like(pattern: str) -> str:
    """The glob as a SQL LIKE pattern with `\\` as the escape character."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def glob_to_sqlite(pattern: str) -> str:
    """The glob as a SQLite GLOB pattern: only * and ? are wildcards ([ is taken literally)."""
    return pattern.replace("[", "[[]")


def _value_filter(key: str, value: str, negated: bool) -> ValueFilter:
    values = tuple(part.strip() for part in value.split(",") if part.strip())
    if not values:
        raise SearchError(f"{key}: give a value after the colon")
    if any(len(part) > 255 for part in values):
        raise SearchError(f"{key}: at most 255 characters per value")
    if key == "state":
        upper = tuple(part.upper() for part in values)
        unknown = [part for part in upper if part not in EVENT_STATES]
        if unknown:
            raise SearchError(f"state: {unknown[0][:40]!r} is not a state; use one of {', '.join(EVENT_STATES)}")
        return ValueFilter(key, upper, negated)
    if key == "id":
        if any(is_glob(part) for part in values):
            raise SearchError("id: give the start of a task id, without * or ?")
        return ValueFilter(key, tuple(part.lower() for part in values), negated)
    return ValueFilter(key, values, negated)


def _term(value: str, key: TextField | None, negated: bool) -> Term:
    found = tuple(words(value))
    if not found:
        where = f"{key}: " if key else ""
        raise SearchError(f"{where}{value[:40]!r} has no letters or digits to search for")
    return Term(found, key, negated)


def _value_matches(key: str, pattern: str, value: str) -> bool:
    if key == "id":
        return value.lower().startswith(pattern)
    if key == "state" or not is_glob(pattern):
        return value == pattern
    return fnmatchcase(value, pattern.replace("[", "[[]"))


def _has_word_prefix(text: str, word: str) -> bool:
    return any(candidate.startswith(word) for candidate in words(text))


def sort_order(sort: str) -> tuple[str, bool]:
    """(column, descending) for a SEARCH_SORTS value; SearchError otherwise."""
    if sort not in SEARCH_SORTS:
        raise SearchError(f"sort: must be one of {', '.join(SEARCH_SORTS)}")
    return sort.removeprefix("-"), sort.startswith("-")

