"""Free text in PostgreSQL (pure: no I/O): the tsvector a task row holds and the tsquery a search asks.

The words are model.search.words() of each text field, the very words the in-memory matcher sees (never
PostgreSQL's own parser), so that memory and the store agree; a query word matches the words it starts (`w:*`).
Fields: args, kwargs, result and traceback by weight (A, B, C, D, each at a position of its own, since weights
belong to positions); exception's words are stored tagged (`!word`), there being only four weights. A free-text
word asks `w:* | !w:*`; a field term `w:*A` (args) or `!w:*` (exception).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

from ...model.search import TaskQuery, glob_to_like, words
from ...model.state.rows import COLUMNS, TEXT_COLUMNS
from .store import Dialect

#: A tsvector lexeme is at most 2047 bytes; longer words are cut (a search for such a word still finds it).
MAX_LEXEME_BYTES: Final = 2000
_WEIGHTS: Final = {"args": (1, "A"), "kwargs": (2, "B"), "result": (3, "C"), "traceback": (5, "D")}
_TAGGED: Final = {"exception": "!"}
_EXCEPTION_POSITION: Final = 4


def _lexeme(word: str) -> str:
    """A word as a quoted tsvector/tsquery lexeme (words are letters and digits: nothing to escape)."""
    if len(word) > MAX_LEXEME_BYTES // 4:
        raw = word.encode()
        if len(raw) > MAX_LEXEME_BYTES:
            word = raw[:MAX_LEXEME_BYTES].decode(errors="ignore")
    return f"'{word}'"


_WORD: Final = re.compile(r"[^\W_]+")
_LONG_WORD: Final = MAX_LEXEME_BYTES // 4  # chars: a shorter word fits in MAX_LEXEME_BYTES whatever it holds
#: (row index, tag, position and weight) of each text column: args/kwargs/result/traceback by weight, exception
#: by tag (four weights for five fields).
_ROW_FIELDS: Final = tuple(
    (COLUMNS.index(field), _TAGGED.get(field, ""),
     f":{_EXCEPTION_POSITION}" if field in _TAGGED else f":{_WEIGHTS[field][0]}{_WEIGHTS[field][1]}")
    for field in TEXT_COLUMNS
)


def _words(text: str) -> set[str]:
    """model.search.words(text), as a set: ASCII text (nearly all of it) takes the short way, whose words are
    the same (NFKD leaves ASCII alone, and casefold() of ASCII is lower())."""
    if text.isascii():
        return set(_WORD.findall(text.lower()))
    return set(words(text))


def row_tsvector(row: Sequence[Any]) -> str:
    """The `words` of a row (model.state.rows), in tsvector input syntax: each word of args/kwargs/result/
    traceback at its field's position and weight, each word of exception tagged with "!". A word in several
    fields is listed once per field: the tsvector input merges its positions."""
    parts: list[str] = []
    for index, tag, mark in _ROW_FIELDS:
        text = row[index]
        if not text:
            continue
        found = _words(text)
        if len(text) > _LONG_WORD and any(len(word) > _LONG_WORD for word in found):
            parts += [_lexeme(tag + word) + mark for word in found]
        else:
            parts += [f"'{tag}{word}'{mark}" for word in found]
    return " ".join(parts)


def tsvector_text(texts: dict[str, str | None]) -> str:
    """row_tsvector for the text fields given by name (tests)."""
    row: list[Any] = [None] * len(COLUMNS)
    for field, text in texts.items():
        row[COLUMNS.index(field)] = text
    return row_tsvector(row)


def _word_query(word: str, field: str | None) -> str:
    if field is None:
        return f"({_lexeme(word)}:* | {_lexeme(_TAGGED['exception'] + word)}:*)"
    if field in _TAGGED:
        return f"{_lexeme(_TAGGED[field] + word)}:*"
    return f"{_lexeme(word)}:*{_WEIGHTS[field][1]}"


def tsquery_text(terms: Sequence[tuple[Sequence[str], str | None]]) -> str:
    """A tsquery (input syntax) for word lists that must all match as word prefixes, each in its field or in
    any field."""
    return " & ".join(_word_query(word, field) for found, field in terms for word in found)


class _PostgresDialect(Dialect):
    param = "%s"

    def glob(self, column: str, pattern: str) -> tuple[str, list[Any]]:
        return f"{column} LIKE %s", [glob_to_like(pattern)]  # backslash is LIKE's escape character

    def text_match(self, query: TaskQuery) -> tuple[str, list[Any]] | None:
        clauses: list[str] = []
        params: list[Any] = []
        positive = [(term.words, term.field) for term in query.terms if not term.negated]
        if positive:
            clauses.append("tasks.words @@ %s::tsquery")
            params.append(tsquery_text(positive))
        for term in query.terms:
            if term.negated:
                clauses.append("NOT (tasks.words @@ %s::tsquery)")
                params.append(tsquery_text([(term.words, term.field)]))
        return (" AND ".join(clauses), params) if clauses else None


DIALECT: Final = _PostgresDialect()
