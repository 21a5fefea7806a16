"""Celery task messages as they wait in a queue: decoding (protocol 2, and 1), selection and the move/purge request
bodies. Pure: stdlib only, no I/O.

Everything here came from the broker, put there by anyone who could publish: it is decoded defensively (any shape,
any size), never executed (pickle, yaml and msgpack bodies are not decoded: the headers' argsrepr/kwargsrepr are
shown instead) and capped before it reaches a page.

Where the fields live (Celery 5, kombu 5):
- protocol 2: the headers carry ``task``, ``id``, ``eta``, ``expires``, ``retries``, ``argsrepr``, ``kwargsrepr``,
  ``root_id``, ``parent_id``, ``origin``; the body is ``[args, kwargs, embed]``;
- protocol 1: the body is a dict with ``task``, ``id``, ``args``, ``kwargs``, ``eta``, ``expires``, ``retries``;
- kombu's Redis transport stores each message as JSON ``{"body", "content-encoding", "content-type", "headers",
  "properties": {"body_encoding": "base64", "priority", "delivery_tag", "delivery_info": {...}}}``;
- RabbitMQ's management API answers ``{"payload", "payload_encoding": "string"|"base64", "properties":
  {"headers", "content_type", "content_encoding", "priority"}, "redelivered", ...}``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

MAX_VALUE_CHARS: Final = 2_000  # args or kwargs longer than this (as JSON) are cut, and say so
MAX_FIELD_CHARS: Final = 255  # ids, names, eta and the like
MAX_PAGE: Final = 500  # messages per page
MAX_SELECT_IDS: Final = 10_000
MAX_QUEUE_CHARS: Final = 255
JSON_TYPES: Final = frozenset({"application/json", "application/x-json", "text/json"})


@dataclass(frozen=True, slots=True)
class Envelope:
    """A broker message before the task is read from it: body bytes, headers and properties."""

    body: bytes
    content_type: str
    content_encoding: str
    headers: Mapping[str, Any]
    priority: int | None
    redelivered: bool = False
    problem: str | None = None  # why the envelope itself could not be read


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """One task message waiting in a queue, decoded for display (untrusted, capped)."""

    id: str | None
    name: str | None
    args: Any  # a list when decoded and short; the cut JSON (or repr) text otherwise
    kwargs: Any
    eta: str | None = None
    expires: str | None = None
    priority: int | None = None
    retries: int | None = None
    protocol: int | None = None
    content_type: str = ""
    parent_id: str | None = None
    root_id: str | None = None
    origin: str | None = None
    redelivered: bool = False
    truncated: bool = False  # args or kwargs were cut (or only a repr was available)
    problem: str | None = None  # why the arguments could not be decoded

    @property
    def args_text(self) -> str:
        """The args as one line of JSON (or the cut text), for a page."""
        return _shown(self.args)

    @property
    def kwargs_text(self) -> str:
        """The kwargs as one line of JSON (or the cut text), for a page."""
        return _shown(self.kwargs)

    def to_dict(self, *, registered: bool, sent_at: float | None = None) -> dict[str, Any]:
        """The JSON API's message shape (`registered` and `sent_at` come from the dashboard's other knowledge)."""
        return {
            "id": self.id, "name": self.name, "args": self.args, "kwargs": self.kwargs, "eta": self.eta,
            "priority": self.priority, "registered": registered, "retries": self.retries, "expires": self.expires,
            "sent_at": sent_at, "protocol": self.protocol, "content_type": self.content_type,
            "parent_id": self.parent_id, "root_id": self.root_id, "origin": self.origin,
            "redelivered": self.redelivered, "truncated": self.truncated, "problem": self.problem,
        }


def _shown(value: Any) -> str:
    if value is None:
        return "?"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=repr)


# -- envelopes -------------------------------------------------------------------------------------------------


def _text(value: Any, cap: int = MAX_FIELD_CHARS) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= cap else text[: cap - 1] + "…"


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def load_redis_payload(raw: bytes | str) -> Any:
    """One list element decoded (a dict for a kombu message), or None when it is not JSON."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def redis_envelope(raw: bytes | str | Mapping[str, Any]) -> Envelope:
    """kombu's Redis transport payload (one list element, or it decoded) as an Envelope; `problem` says what was
    wrong."""
    payload = load_redis_payload(raw) if isinstance(raw, (bytes, str)) else raw
    if payload is None:
        return Envelope(b"", "", "", {}, None, problem="not a kombu message (not JSON)")
    if not isinstance(payload, Mapping):
        return Envelope(b"", "", "", {}, None, problem="not a kombu message (not a JSON object)")
    properties = payload.get("properties")
    properties = properties if isinstance(properties, Mapping) else {}
    headers = payload.get("headers")
    body = payload.get("body")
    encoded = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else b""
    problem = None
    if properties.get("body_encoding") == "base64":
        try:
            encoded = base64.b64decode(encoded, validate=False)
        except (binascii.Error, ValueError):
            encoded, problem = b"", "the body is not valid base64"
    return Envelope(encoded, str(payload.get("content-type") or ""), str(payload.get("content-encoding") or ""),
                    headers if isinstance(headers, Mapping) else {}, _int(properties.get("priority")),
                    redelivered=bool(headers.get("redelivered")) if isinstance(headers, Mapping) else False,
                    problem=problem)


def management_envelope(item: Mapping[str, Any]) -> Envelope:
    """One message of RabbitMQ's management API `POST /api/queues/<vhost>/<queue>/get` answer."""
    properties = item.get("properties")
    properties = properties if isinstance(properties, Mapping) else {}
    payload = item.get("payload")
    text = payload if isinstance(payload, str) else ""
    problem = None
    if item.get("payload_encoding") == "base64":
        try:
            body = base64.b64decode(text.encode("ascii", "replace"), validate=False)
        except (binascii.Error, ValueError):
            body, problem = b"", "the payload is not valid base64"
    else:
        body = text.encode("utf-8", "surrogatepass")
    headers = properties.get("headers")
    # The management API shows an AMQP void (Python's None) as the string "undefined".
    headers = {key: None if value == "undefined" else value for key, value in headers.items()} \
        if isinstance(headers, Mapping) else {}
    return Envelope(body, str(properties.get("content_type") or ""), str(properties.get("content_encoding") or ""),
                    headers, _int(properties.get("priority")),
                    redelivered=item.get("redelivered") is True, problem=problem)


# -- the task ------------------------------------------------------------------------------------------------------


def capped(value: Any, cap: int = MAX_VALUE_CHARS) -> tuple[Any, bool]:
    """`value` itself when its JSON fits in `cap` characters, else its JSON cut to `cap` (and True)."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=repr)
    except (ValueError, RecursionError):
        return _text(repr(value), cap), True
    if len(text) <= cap:
        return value, False
    return text[: cap - 1] + "…", True


def _json_body(envelope: Envelope) -> tuple[Any, str | None]:
    """The decoded JSON body, or why not (another serializer, compression, bad JSON)."""
    if envelope.problem:
        return None, envelope.problem
    if envelope.content_type not in JSON_TYPES:
        return None, f"{envelope.content_type or 'unknown'} body not decoded (only JSON is)"
    if envelope.headers.get("compression"):
        return None, "compressed body not decoded"
    try:
        return json.loads(envelope.body.decode(envelope.content_encoding or "utf-8", "replace")), None
    except (ValueError, LookupError, RecursionError):
        return None, "the body is not valid JSON"


def decode_task(envelope: Envelope, cap: int = MAX_VALUE_CHARS) -> QueuedMessage:
    """The task a message carries: protocol 2 (headers name it), else protocol 1 (the body does), else unknown."""
    headers = envelope.headers
    body, problem = _json_body(envelope)
    priority, content_type, redelivered = envelope.priority, _text(envelope.content_type) or "", envelope.redelivered
    if "task" in headers and "id" in headers:
        args: Any = None
        kwargs: Any = None
        truncated = False
        if isinstance(body, list) and len(body) >= 2 and isinstance(body[0], list) and isinstance(body[1], dict):
            args, cut_args = capped(body[0], cap)
            kwargs, cut_kwargs = capped(body[1], cap)
            truncated = cut_args or cut_kwargs
        else:
            # Not decoded: what the sender wrote as a repr is the best we have (already cut by Celery at 1 KiB).
            args, kwargs, truncated = _text(headers.get("argsrepr"), cap), _text(headers.get("kwargsrepr"), cap), True
            problem = problem or "the body is not [args, kwargs, embed]"
        return QueuedMessage(
            _text(headers.get("id")), _text(headers.get("task")), args, kwargs, eta=_text(headers.get("eta")),
            expires=_text(headers.get("expires")), retries=_int(headers.get("retries")), protocol=2,
            parent_id=_text(headers.get("parent_id")), root_id=_text(headers.get("root_id")),
            origin=_text(headers.get("origin")), truncated=truncated, problem=problem, priority=priority,
            content_type=content_type, redelivered=redelivered)
    if isinstance(body, Mapping) and "task" in body and "id" in body:
        args, cut_args = capped(body.get("args", []), cap)
        kwargs, cut_kwargs = capped(body.get("kwargs", {}), cap)
        return QueuedMessage(
            _text(body.get("id")), _text(body.get("task")), args, kwargs, eta=_text(body.get("eta")),
            expires=_text(body.get("expires")), retries=_int(body.get("retries")), protocol=1,
            parent_id=_text(body.get("parent_id")), root_id=_text(body.get("root_id")),
            truncated=cut_args or cut_kwargs, priority=priority, content_type=content_type,
            redelivered=redelivered)
    return QueuedMessage(None, None, None, None, truncated=True,
                         problem=problem or "not a Celery task message (no task name and id)", priority=priority,
                         content_type=content_type, redelivered=redelivered)


def task_name_and_id(envelope: Envelope) -> tuple[str | None, str | None]:
    """(name, id) without decoding the arguments when the headers have them (protocol 2): the cheap filter."""
    headers = envelope.headers
    if "task" in headers and "id" in headers:
        name, task_id = headers.get("task"), headers.get("id")
        return (name if isinstance(name, str) else None), (task_id if isinstance(task_id, str) else None)
    body, _ = _json_body(envelope)
    if isinstance(body, Mapping):
        name, task_id = body.get("task"), body.get("id")
        return (name if isinstance(name, str) else None), (task_id if isinstance(task_id, str) else None)
    return None, None


# -- selection and requests ----------------------------------------------------------------------------------


class RequestInvalid(ValueError):
    """A move/purge/delete request that cannot be used; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class Selection:
    """Which messages an action takes: those of one task name and/or given ids (all when neither), up to `limit`."""

    name: str | None = None
    ids: frozenset[str] | None = None
    limit: int | None = None

    @property
    def everything(self) -> bool:
        """True when every message is taken (no name, no ids)."""
        return self.name is None and self.ids is None

    def matches(self, name: str | None, task_id: str | None) -> bool:
        """True when a message with this task name and id is selected (the limit is the caller's to count)."""
        if self.name is not None and name != self.name:
            return False
        return self.ids is None or (task_id is not None and task_id in self.ids)

    def describe(self) -> dict[str, Any]:
        """For the audit log: the filter, JSON-ready (ids sorted, at most 100 of them spelled out)."""
        ids = sorted(self.ids) if self.ids is not None else None
        return {"name": self.name, "ids": ids[:100] if ids is not None else None,
                "ids_count": len(ids) if ids is not None else None, "limit": self.limit}


@dataclass(frozen=True, slots=True)
class MoveRequest:
    """`POST /api/queues/<queue>/move`: where to, and which messages."""

    to: str
    selection: Selection = field(default_factory=Selection)


def queue_name_problem(name: Any) -> str | None:
    """Why `name` cannot be a queue name here, or None."""
    if not isinstance(name, str) or not name.strip():
        return "give the name of a queue"
    if name != name.strip():
        return "a queue name has no leading or trailing spaces"
    if len(name) > MAX_QUEUE_CHARS:
        return f"a queue name has at most {MAX_QUEUE_CHARS} characters"
    if any(ord(char) < 32 or ord(char) == 127 for char in name):
        return "a queue name has no control characters"
    return None


def _optional_name(body: Mapping[str, Any]) -> str | None:
    name = body.get("name")
    if name is None or name == "":
        return None
    if not isinstance(name, str) or len(name) > MAX_FIELD_CHARS or not name.strip():
        raise RequestInvalid(f"name: a task name of at most {MAX_FIELD_CHARS} characters")
    return name.strip()


def _optional_limit(body: Mapping[str, Any]) -> int | None:
    limit = body.get("limit")
    if limit is None or limit == "":
        return None
    if isinstance(limit, str) and limit.strip().isdigit():
        limit = int(limit.strip())
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise RequestInvalid("limit: a whole number >= 1")
    return limit


def _optional_ids(body: Mapping[str, Any]) -> frozenset[str] | None:
    ids = body.get("ids")
    if ids is None:
        return None
    if isinstance(ids, str):  # a form field: ids separated by spaces, commas or lines
        ids = [part for part in ids.replace(",", " ").split() if part]
        if not ids:
            return None
    if not isinstance(ids, Sequence) or isinstance(ids, (bytes, bytearray)):
        raise RequestInvalid("ids: a list of task ids")
    if not ids or len(ids) > MAX_SELECT_IDS:
        raise RequestInvalid(f"ids: between 1 and {MAX_SELECT_IDS} task ids")
    if not all(isinstance(item, str) and 0 < len(item) <= MAX_FIELD_CHARS for item in ids):
        raise RequestInvalid(f"ids: each a task id of 1 to {MAX_FIELD_CHARS} characters")
    return frozenset(ids)


def parse_move(source: str, body: Any) -> MoveRequest:
    """Check a move body (JSON or form fields); RequestInvalid says what is wrong."""
    if not isinstance(body, Mapping):
        raise RequestInvalid('send a JSON object like {"to": "queue", "name": "task.name", "limit": 100}')
    to = body.get("to")
    to = to.strip() if isinstance(to, str) else to
    problem = queue_name_problem(to)
    if problem:
        raise RequestInvalid(f"to: {problem}")
    assert isinstance(to, str)
    if to == source:
        raise RequestInvalid("to: the messages are already in that queue; choose another one")
    return MoveRequest(to, Selection(_optional_name(body), _optional_ids(body), _optional_limit(body)))


def parse_delete(body: Any) -> Selection:
    """Check a delete-by-name body: a task name is required (purge takes everything)."""
    if not isinstance(body, Mapping):
        raise RequestInvalid('send a JSON object like {"name": "task.name"}')
    name = _optional_name(body)
    if name is None:
        raise RequestInvalid("name: the task name whose messages to delete (to empty the queue, purge it)")
    return Selection(name, _optional_ids(body), _optional_limit(body))


def parse_purge(queue: str, body: Any) -> None:
    """Check a purge body: the queue's name typed again, exactly."""
    confirm = body.get("confirm") if isinstance(body, Mapping) else None
    if not isinstance(confirm, str) or confirm.strip() != queue:
        raise RequestInvalid(f'confirm: type the queue\'s name exactly ({queue!r}) to purge it')


# -- rewriting a Redis payload for another queue -------------------------------------------------------------


def redis_name_and_id(payload: Any) -> tuple[str | None, str | None]:
    """(task name, id) of a decoded Redis payload: from the headers (protocol 2) without touching the body."""
    headers = payload.get("headers") if isinstance(payload, dict) else None
    if isinstance(headers, dict) and "task" in headers and "id" in headers:
        name, task_id = headers["task"], headers["id"]
        return (name if isinstance(name, str) else None), (task_id if isinstance(task_id, str) else None)
    return task_name_and_id(redis_envelope(payload)) if isinstance(payload, dict) else (None, None)


_DELIVERY_INFO_KEY: Final = '"delivery_info": {'  # as kombu's json.dumps writes it (default separators)


def _retarget_in_place(raw: str, exchange: str, routing_key: str) -> str | None:
    """The fast path: rewrite only the `delivery_info` object in the JSON text (it holds scalars only), leaving the
    rest byte for byte; None when the text is not as kombu writes it (the caller then decodes it all)."""
    if raw.count(_DELIVERY_INFO_KEY) != 1:  # a key inside a string would be escaped (\"delivery_info\")
        return None
    start = raw.index(_DELIVERY_INFO_KEY) + len(_DELIVERY_INFO_KEY) - 1
    end = raw.find("}", start) + 1
    try:
        info = json.loads(raw[start:end]) if end else None
    except ValueError:  # a "}" inside one of its strings: not worth a parser of our own
        return None
    if not isinstance(info, dict):
        return None
    info.update(exchange=exchange, routing_key=routing_key)
    return raw[:start] + json.dumps(info) + raw[end:]


def retarget_redis_payload(raw: bytes | str | dict[str, Any], exchange: str, routing_key: str) -> str | None:
    """The same kombu Redis payload, delivered to `exchange`/`routing_key` (what republishing would write, so a
    worker that dies holding it restores it to the new queue, not the old one); None when it is not one.
    A decoded payload is changed in place."""
    if isinstance(raw, (bytes, str)):
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError:
            return None
        fast = _retarget_in_place(text, exchange, routing_key)
        if fast is not None:
            return fast
    payload = load_redis_payload(raw) if isinstance(raw, (bytes, str)) else raw
    if not isinstance(payload, dict):
        return None
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        return None
    info = properties.get("delivery_info")
    info = dict(info) if isinstance(info, dict) else {}
    info.update(exchange=exchange, routing_key=routing_key)
    properties["delivery_info"] = info
    return json.dumps(payload)
