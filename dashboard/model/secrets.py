"""Masking of credentials in URLs and free text, so no password reaches a page, a response or a log."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

MASK = "********"
# The lookbehind lets a match start only where a scheme can begin: without it, a long run of letters made the
# search quadratic (30 000 letters: 5 s holding the GIL), with it every input is scanned in linear time.
_USERINFO_RE = re.compile(
    r"(?<![a-z0-9+.\-])(?P<scheme>[a-z][a-z0-9+.\-]*://)(?P<user>[^:@/\s]*):(?P<password>[^@/\s]+)@", re.I
)


def mask_url(url: str | None) -> str:
    """The URL with its password (if any) replaced by a mask; the user name and host stay readable."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{user}:{MASK}@{host}" + (f":{parts.port}" if parts.port is not None else "")
    except ValueError:  # a malformed port or bracket: mask textually rather than fail
        return mask_text(url)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def mask_text(text: str) -> str:
    """Free text (an error message, a log line) with every URL password masked."""
    return _USERINFO_RE.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)


MAX_REASON_CHARS = 300


def reason(exc: BaseException | str) -> str:
    """Why something failed, for a message or a log line: the error's text (its type when it has none), every URL
    password masked, cut at MAX_REASON_CHARS."""
    text = mask_text(str(exc)) or (type(exc).__name__ if isinstance(exc, BaseException) else "")
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."


def mask_endpoint(url: str | None) -> str:
    """A webhook URL as it may be shown: scheme, host and port only. Chat webhooks carry their secret in the path
    (Slack's /services/T…/B…/<token>) or the query, and any of it may be a credential: all of it is masked."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host + (f":{parts.port}" if parts.port is not None else "")
    except ValueError:
        return MASK
    hidden = parts.path not in ("", "/") or parts.query or parts.fragment or parts.username is not None
    return urlunsplit((parts.scheme, netloc, "/" + MASK if hidden else parts.path, "", ""))
