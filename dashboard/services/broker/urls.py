"""Broker URLs: which transport a URL names, and how to show it without its password. Pure: no I/O."""

from __future__ import annotations

from typing import Final

from ...exceptions import ConfigError
from ...model.secrets import MASK, mask_text, mask_url

REDIS_SCHEMES: Final = frozenset({"redis", "rediss", "redis+socket"})
AMQP_SCHEMES: Final = frozenset({"amqp", "amqps", "pyamqp", "librabbitmq"})


def broker_scheme(broker_url: str) -> str:
    """The URL's transport scheme, lower case (the first URL of a ``;`` failover list); ConfigError if none."""
    first = broker_url.split(";", 1)[0].strip()
    scheme, found, _ = first.partition("://")
    if not found or not scheme:
        raise ConfigError(f"broker URL {shown_url(first)!r} has no scheme, like redis://host:6379/0")
    return scheme.lower()


def shown_url(broker_url: str) -> str:
    """The first URL of a failover list, fit for a message: its password masked even when it is malformed."""
    url = broker_url.split(";", 1)[0].strip()
    if "://" not in url:  # mask_url cannot find a password without a scheme: keep what follows the "@"
        return f"{MASK}@{url.rpartition('@')[2]}" if "@" in url else url
    try:
        return mask_url(url)
    except ValueError:  # urlsplit rejects a malformed port; the regex does not need one
        return mask_text(url)
