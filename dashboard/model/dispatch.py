"""Turn untrusted dispatch input (a JSON body or a form) into a checked DispatchRequest, or field errors."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, get_args

from ..exceptions import BrokerUnavailable, DispatchRefused, RoutingError
from .catalog import Catalog, InvalidValue, TaskSpec, task_name_problem
from .values import is_number, is_whole

#: What became of a dispatch attempt: one vocabulary for the audit log, /metrics and the pages.
#: sent: the broker took it; refused: the guard stopped it (409, "force" to send anyway); invalid: bad input (4xx);
#: unavailable: the broker could not take it (503); routing_error: Celery's router failed for it (400);
#: error: anything else (a bug: the log has the traceback).
DispatchOutcome = Literal["sent", "refused", "invalid", "unavailable", "routing_error", "error"]
OUTCOMES: Final[tuple[DispatchOutcome, ...]] = get_args(DispatchOutcome)
#: What the audit log says of an attempt: a dispatch outcome, or unknown: the attempt was written before it was
#: published and its outcome never was (the process stopped in between, or writing the outcome failed). Its
#: task id is the one the task was (or would have been) published with: look for it before sending again.
AuditOutcome = DispatchOutcome | Literal["unknown"]
AUDIT_OUTCOMES: Final[tuple[AuditOutcome, ...]] = (*OUTCOMES, "unknown")

MAX_DELAY_SECONDS = 366 * 24 * 3600  # countdown, ETA and expiry: at most a year ahead
ETA_PAST_TOLERANCE = timedelta(seconds=60)  # clock skew we forgive on an ETA
MAX_JSON_DEPTH = 32
MAX_ARGS = 256
PRIORITY_RANGE = range(0, 10)  # Celery's Redis priorities (steps 0,3,6,9); also the usual x-max-priority=10
OPTION_NAMES = ("queue", "countdown", "eta", "expires", "priority")
FORM_PARAM_PREFIX = "arg."
FORM_OPTION_PREFIX = "opt."


def outcome_of(exc: BaseException | None) -> DispatchOutcome:
    """The outcome of a dispatch that raised `exc` (None: it was sent)."""
    if exc is None:
        return "sent"
    if isinstance(exc, DispatchRefused):
        return "refused"
    if isinstance(exc, DispatchInvalid):
        return "invalid"
    if isinstance(exc, BrokerUnavailable):
        return "unavailable"
    if isinstance(exc, RoutingError):
        return "routing_error"
    return "error"


class DispatchInvalid(ValueError):
    """Dispatch input was refused; `errors` maps a field ('name', 'args', 'kwargs.x', 'options.eta', ...) to why."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        self.errors = dict(errors)
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """All problems in one line, each prefixed with its field."""
        return "; ".join(f"{key}: {text}" if key else text for key, text in self.errors.items())


@dataclass(frozen=True, slots=True)
class DispatchOptions:
    """Execution options a user may set; None leaves Celery's routing and defaults in charge."""

    queue: str | None = None
    countdown: float | None = None
    eta: datetime | None = None
    expires: float | datetime | None = None
    priority: int | None = None

    def as_celery_options(self) -> dict[str, Any]:
        """The keyword arguments for `send_task`, without the unset ones."""
        return {key: value for key in OPTION_NAMES if (value := getattr(self, key)) is not None}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (datetimes in ISO 8601)."""
        out: dict[str, Any] = {}
        for key, value in self.as_celery_options().items():
            out[key] = value.isoformat() if isinstance(value, datetime) else value
        return out


@dataclass(frozen=True, slots=True)
class DispatchRequest:
    """A checked request to publish one task by name."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: DispatchOptions = field(default_factory=DispatchOptions)
    force: bool = False
    in_catalog: bool = False


def json_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """How deeply arrays and objects nest in a decoded JSON value (a scalar is 0), stopping once past `limit`."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_api_body(body: Any, catalog: Catalog, now: datetime) -> DispatchRequest:
    """Check a decoded `POST /api/dispatch` body against the catalog and the option bounds."""
    if not isinstance(body, dict):
        raise DispatchInvalid({"": "the body must be a JSON object like {\"name\": ..., \"args\": [...]}"})
    errors: dict[str, str] = {}
    unknown = sorted(set(body) - {"name", "args", "kwargs", "options", "force"})
    if unknown:
        errors[""] = f"unknown field(s) {shown_names(unknown)}; expected name, args, kwargs, options, force"
    name = body.get("name")
    if problem := task_name_problem(name):
        errors["name"] = problem
    args = body.get("args", [])
    if not isinstance(args, list):
        errors["args"] = "must be a JSON array"
        args = []
    elif len(args) > MAX_ARGS:
        errors["args"] = f"at most {MAX_ARGS} positional arguments"
    kwargs = body.get("kwargs", {})
    if not isinstance(kwargs, dict):
        errors["kwargs"] = "must be a JSON object"
        kwargs = {}
    if json_depth([args, kwargs]) > MAX_JSON_DEPTH:
        errors["args"] = f"arguments are nested deeper than {MAX_JSON_DEPTH} levels"
    raw_options = body.get("options", {})
    if raw_options is None:
        raw_options = {}
    if not isinstance(raw_options, dict):
        errors["options"] = "must be a JSON object"
        raw_options = {}
    force = body.get("force", False)
    if not isinstance(force, bool):
        errors["force"] = "must be true or false"
        force = False
    options = _parse_options(raw_options, now, errors, typed=True)
    spec = catalog.get(name) if isinstance(name, str) else None
    if spec is not None and "args" not in errors and "kwargs" not in errors:
        args, kwargs = _check_catalog_call(spec, args, kwargs, errors)
    else:
        _check_kwarg_names(kwargs, errors)
    if errors:
        raise DispatchInvalid(errors)
    assert isinstance(name, str)
    return DispatchRequest(name, tuple(args), dict(kwargs), options, force, spec is not None)


def parse_form(form: Mapping[str, str], catalog: Catalog, now: datetime) -> DispatchRequest:
    """Check a dispatch form: a catalog task's typed fields, or a raw name with JSON args and kwargs."""
    errors: dict[str, str] = {}
    name = form.get("name", "").strip()
    if problem := task_name_problem(name):
        errors["name"] = problem
    spec = catalog.get(name) if form.get("mode") != "raw" else None
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    if spec is not None:
        kwargs = _parse_param_fields(spec, form, errors)
    else:
        args = _parse_json_field(form.get("args", ""), "args", list, "a JSON array, like [1, \"a\"]", errors)
        kwargs = _parse_json_field(form.get("kwargs", ""), "kwargs", dict, "a JSON object, like {\"x\": 1}", errors)
        raw_spec = catalog.get(name)
        if raw_spec is not None and "args" not in errors and "kwargs" not in errors:
            args, kwargs = _check_catalog_call(raw_spec, args, kwargs, errors)
        else:
            _check_kwarg_names(kwargs, errors)
    raw_options = {
        key: value.strip()
        for key in OPTION_NAMES
        if (value := form.get(FORM_OPTION_PREFIX + key, "")) and value.strip()
    }
    options = _parse_options(raw_options, now, errors, typed=False)
    force = form.get("force", "").lower() in ("1", "true", "on", "yes")
    if errors:
        raise DispatchInvalid(errors)
    return DispatchRequest(name, tuple(args), kwargs, options, force, catalog.get(name) is not None)


def _parse_param_fields(spec: TaskSpec, form: Mapping[str, str], errors: dict[str, str]) -> dict[str, Any]:
    """Typed values from a catalog form's fields; an empty optional field is left to the task's default."""
    kwargs: dict[str, Any] = {}
    for param in spec.params:
        text = form.get(FORM_PARAM_PREFIX + param.name, "")
        if text == "" or (param.type != "str" and not text.strip()):
            if param.required:
                errors[f"kwargs.{param.name}"] = "is required"
            continue
        try:
            kwargs[param.name] = param.parse(text)
        except InvalidValue as exc:
            errors[f"kwargs.{param.name}"] = str(exc)
    return kwargs


SHOWN_NAME_CHARS = 60  # a name echoed in an error message is cut here: never echo (or scan) a megabyte back
SHOWN_NAMES = 5


def shown_key(name: str) -> str:
    """A client-chosen name as an error message may echo it: at most SHOWN_NAME_CHARS characters."""
    return name if len(name) <= SHOWN_NAME_CHARS else name[:SHOWN_NAME_CHARS] + "…"


def shown_names(names: list[str]) -> str:
    """The first few client-chosen names, each cut short, quoted, for an error message."""
    shown = ", ".join(repr(shown_key(str(name))) for name in names[:SHOWN_NAMES])
    return shown + (f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else "")


def _parse_json_field(
    text: str, key: str, kind: type[list[Any]] | type[dict[str, Any]], example: str, errors: dict[str, str]
) -> Any:
    """Decode a raw JSON form field that must hold a `kind`; empty means empty."""
    if not text.strip():
        return kind()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        errors[key] = f"is not valid JSON ({exc.msg} at position {exc.pos}); enter {example}"
        return kind()
    except ValueError:  # Python refuses integers of more than 4300 digits (int_max_str_digits)
        errors[key] = f"holds a number too long to read; enter {example}"
        return kind()
    except RecursionError:
        errors[key] = "is nested too deeply"
        return kind()
    if not isinstance(value, kind):
        errors[key] = f"must be {example}"
        return kind()
    if json_depth(value) > MAX_JSON_DEPTH:
        errors[key] = f"is nested deeper than {MAX_JSON_DEPTH} levels"
    return value


def _check_kwarg_names(kwargs: Mapping[str, Any], errors: dict[str, str]) -> None:
    """Keyword names must be Python identifiers, or the worker cannot call the task with them."""
    bad = [key for key in kwargs if not key.isidentifier()]
    if bad:
        errors["kwargs"] = f"keyword names must be identifiers; not {shown_names(bad)}"


def _check_catalog_call(
    spec: TaskSpec, args: list[Any], kwargs: dict[str, Any], errors: dict[str, str]
) -> tuple[list[Any], dict[str, Any]]:
    """Bind args and kwargs to the catalog's params, type-check each, and demand the required ones."""
    if len(args) > len(spec.params):
        errors["args"] = f"{spec.name} takes at most {len(spec.params)} positional argument(s), got {len(args)}"
        return args, kwargs
    bound: dict[str, Any] = {}
    for param, value in zip(spec.params, args, strict=False):
        bound[param.name] = value
    for key, value in kwargs.items():
        if spec.param(key) is None:
            known = ", ".join(p.name for p in spec.params) or "none"
            errors[f"kwargs.{shown_key(key)}"] = f"is not a parameter of {spec.name} (parameters: {known})"
        elif key in bound:
            errors[f"kwargs.{shown_key(key)}"] = "is given both positionally and by keyword"
        else:
            bound[key] = value
    checked_args: list[Any] = []
    checked_kwargs: dict[str, Any] = {}
    for index, param in enumerate(spec.params):
        if param.name not in bound:
            if param.required:
                errors[f"kwargs.{param.name}"] = "is required"
            continue
        try:
            value = param.check(bound[param.name])
        except InvalidValue as exc:
            if index < len(args):
                errors[f"args[{index}]"] = f"({param.name}) {exc}"
            else:
                errors[f"kwargs.{param.name}"] = str(exc)
            continue
        if index < len(args):
            checked_args.append(value)
        else:
            checked_kwargs[param.name] = value
    return checked_args, checked_kwargs


def _parse_options(raw: Mapping[str, Any], now: datetime, errors: dict[str, str], *, typed: bool) -> DispatchOptions:
    """Check queue/countdown/eta/expires/priority; `typed` is False for form text."""
    unknown = sorted(set(raw) - set(OPTION_NAMES))
    if unknown:
        errors["options"] = f"unknown option(s) {shown_names(unknown)}; expected {', '.join(OPTION_NAMES)}"
    queue = raw.get("queue")
    if queue is not None:
        if not isinstance(queue, str) or not queue.strip():
            errors["options.queue"] = "must be a non-empty queue name"
            queue = None
        elif len(queue) > 255 or any(ch.isspace() for ch in queue):
            errors["options.queue"] = "must be at most 255 characters without spaces"
            queue = None
    countdown = _number_option(raw.get("countdown"), "countdown", errors, typed=typed)
    if countdown is not None and not 0 <= countdown <= MAX_DELAY_SECONDS:
        errors["options.countdown"] = f"must be between 0 and {MAX_DELAY_SECONDS} seconds"
        countdown = None  # not used below: a huge value would overflow the date arithmetic
    eta = _datetime_option(raw.get("eta"), "eta", errors)
    if eta is not None:
        if eta < now - ETA_PAST_TOLERANCE:
            errors["options.eta"] = f"is in the past ({eta.isoformat()}); leave it empty to run now"
        elif eta > now + timedelta(seconds=MAX_DELAY_SECONDS):
            errors["options.eta"] = "is more than a year ahead"
    if countdown is not None and eta is not None:
        errors["options.countdown"] = "give either countdown or eta, not both"
    expires = _expires_option(raw.get("expires"), now, errors)
    start = eta or (now + timedelta(seconds=countdown or 0))
    if isinstance(expires, datetime) and expires <= start:
        errors["options.expires"] = "is not after the time the task would start"
    elif isinstance(expires, float) and now + timedelta(seconds=expires) <= start:
        errors["options.expires"] = "must be later than the countdown or ETA"
    priority = raw.get("priority")
    if priority is not None:
        if not typed and isinstance(priority, str):
            try:
                priority = int(priority)
            except ValueError:
                priority = "bad"
        if not is_whole(priority) or priority not in PRIORITY_RANGE:
            errors["options.priority"] = "must be a whole number from 0 to 9"
            priority = None
    return DispatchOptions(queue, countdown, eta, expires, priority)


def _number_option(value: Any, key: str, errors: dict[str, str], *, typed: bool) -> float | None:
    """A finite number of seconds from JSON or form text."""
    if value is None:
        return None
    if not typed and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            errors[f"options.{key}"] = "must be a number of seconds"
            return None
    if not is_number(value) or not math.isfinite(value):
        errors[f"options.{key}"] = "must be a number of seconds"
        return None
    return float(value)


def _datetime_option(value: Any, key: str, errors: dict[str, str]) -> datetime | None:
    """An ISO 8601 date-time; one without a zone is taken as UTC."""
    if value is None:
        return None
    if not isinstance(value, str):
        errors[f"options.{key}"] = "must be an ISO 8601 date-time, like 2030-01-31T12:00:00Z"
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("z", "Z"))
    except ValueError:
        errors[f"options.{key}"] = "must be an ISO 8601 date-time, like 2030-01-31T12:00:00Z"
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _expires_option(value: Any, now: datetime, errors: dict[str, str]) -> float | datetime | None:
    """Expiry as seconds from now (a number, or its text), or as an ISO 8601 date-time."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            when = _datetime_option(value, "expires", errors)
            if when is not None and not now < when <= now + timedelta(seconds=MAX_DELAY_SECONDS):
                errors["options.expires"] = "must be in the future and at most a year ahead"
                return None
            return when
    seconds = _number_option(value, "expires", errors, typed=True)
    if seconds is not None and not 0 < seconds <= MAX_DELAY_SECONDS:
        errors["options.expires"] = f"must be more than 0 and at most {MAX_DELAY_SECONDS} seconds"
        return None
    return seconds
