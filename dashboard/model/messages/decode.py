"""Celery task messages as they wait in a queue, decoded for display: protocol 2, and 1. Pure: stdlib only, no I/O.

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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

MAX_VALUE_CHARS: Final = 2_000  # args or kwargs longer than this (as JSON) are cut, and say so
MAX_FIELD_CHARS: Final = 255  # ids, names, eta and the like
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

