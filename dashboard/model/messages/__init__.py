"""Celery task messages waiting in a queue (pure, stdlib only): decoding them for display (decode.py) and choosing
which ones an action takes, from checked request bodies (selection.py)."""

from .decode import (
    JSON_TYPES,
    MAX_FIELD_CHARS,
    MAX_VALUE_CHARS,
    Envelope,
    QueuedMessage,
    capped,
    decode_task,
    load_redis_payload,
    management_envelope,
    redis_envelope,
    redis_name_and_id,
    retarget_redis_payload,
    task_name_and_id,
)
from .selection import (
    MAX_PAGE,
    MAX_QUEUE_CHARS,
    MAX_SELECT_IDS,
    MoveRequest,
    RequestInvalid,
    Selection,
    parse_delete,
    parse_move,
    parse_purge,
    queue_name_problem,
)

__all__ = [
    "JSON_TYPES", "MAX_FIELD_CHARS", "MAX_PAGE", "MAX_QUEUE_CHARS", "MAX_SELECT_IDS", "MAX_VALUE_CHARS", "Envelope",
    "MoveRequest", "QueuedMessage", "RequestInvalid", "Selection", "capped", "decode_task", "load_redis_payload",
    "management_envelope", "parse_delete", "parse_move", "parse_purge", "queue_name_problem", "redis_envelope",
    "redis_name_and_id", "retarget_redis_payload", "task_name_and_id",
]
