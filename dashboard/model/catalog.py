"""The task catalog: task names as constants with typed parameters, and the value rules for each type."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

ParamType = Literal["str", "int", "float", "bool", "json"]
PARAM_TYPES: tuple[str, ...] = get_args(ParamType)

# Celery accepts any string as a task name; we accept the characters real names use, so a stray
# space, quote or control character is caught as the typo it almost always is.
TASK_NAME_RE = re.compile(r"[A-Za-z0-9_][\w.:@/$-]{0,254}")  # used with fullmatch: "$" would allow a final newline
PARAM_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


class _Missing:
    """Sentinel type: a parameter without a default."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class InvalidValue(ValueError):
    """A value does not fit its parameter's type; the message says what to enter instead."""


def task_name_problem(name: object) -> str | None:
    """Why `name` is not an acceptable task name, or None when it is."""
    if not isinstance(name, str) or not name:
        return "a task name is required"
    if len(name) > 255:
        return "a task name is at most 255 characters"
    if not TASK_NAME_RE.fullmatch(name):
        return "a task name may hold letters, digits and . _ - : @ / $ only (no spaces)"
    return None


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """One typed parameter of a catalog task."""

    name: str
    type: ParamType = "str"
    required: bool = False
    default: Any = MISSING
    description: str = ""

    @property
    def has_default(self) -> bool:
        """True when the catalog gives a default value."""
        return self.default is not MISSING

    def check(self, value: Any) -> Any:
        """Validate a value that arrived already typed (JSON API) and return it."""
        match self.type:
            case "str":
                if isinstance(value, str):
                    return value
                raise InvalidValue("must be a string")
            case "int":
                if isinstance(value, int) and not isinstance(value, bool):
                    return value
                raise InvalidValue("must be a whole number")
            case "float":
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    return float(value)
                raise InvalidValue("must be a finite number")
            case "bool":
                if isinstance(value, bool):
                    return value
                raise InvalidValue("must be true or false")
            case _:
                return value

    def parse(self, text: str) -> Any:
        """Convert a form field's text to this parameter's type."""
        match self.type:
            case "str":
                return text
            case "int":
                try:
                    return int(text.strip())
                except ValueError:
                    raise InvalidValue("must be a whole number, like 42") from None
            case "float":
                try:
                    number = float(text.strip())
                except ValueError:
                    raise InvalidValue("must be a number, like 2.5") from None
                if not math.isfinite(number):
                    raise InvalidValue("must be a finite number")
                return number
            case "bool":
                word = text.strip().lower()
                if word in _TRUE:
                    return True
                if word in _FALSE:
                    return False
                raise InvalidValue("must be true or false")
            case _:
                try:
                    return json.loads(text)
                except json.JSONDecodeError as exc:
                    raise InvalidValue(f"must be valid JSON ({exc.msg} at position {exc.pos})") from None
                except ValueError:  # an integer of more than 4300 digits
                    raise InvalidValue("holds a number too long to read") from None
                except RecursionError:
                    raise InvalidValue("is nested too deeply") from None

    def format_default(self) -> str:
        """The default as a form field shows it ('' when there is none)."""
        if not self.has_default or self.default is None:
            return ""
        if self.type == "json":
            return json.dumps(self.default)
        if self.type == "bool":
            return "true" if self.default else "false"
        return str(self.default)


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A catalog entry: a task name the API may dispatch, described and with typed parameters."""

    name: str
    description: str = ""
    params: tuple[ParamSpec, ...] = ()

    def param(self, name: str) -> ParamSpec | None:
        """The parameter called `name`, if declared."""
        for spec in self.params:
            if spec.name == name:
                return spec
        return None


@dataclass(frozen=True)
class Catalog:
    """The ordered set of catalog tasks, looked up by name."""

    tasks: tuple[TaskSpec, ...] = ()
    _by_name: Mapping[str, TaskSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {spec.name: spec for spec in self.tasks})

    @classmethod
    def of(cls, specs: Iterable[TaskSpec]) -> Catalog:
        """Build a catalog from task specs, in the given order."""
        return cls(tuple(specs))

    def get(self, name: str) -> TaskSpec | None:
        """The entry for `name`, or None for a name outside the catalog."""
        return self._by_name.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[TaskSpec]:
        return iter(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)
