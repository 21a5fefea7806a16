"""Alerts that reach people, pure: which webhook hears which alert change, the JSON it is sent, the retry schedule
and the HMAC signature; acknowledgements and silences judged against a given `now`. No I/O here."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from .alerts import Alert, AlertChange

EVENTS: Final[tuple[str, ...]] = ("raised", "updated", "cleared")
# "updated" fires on every change of depth or message (every couple of seconds while a queue fills): opt-in.
DEFAULT_EVENTS: Final[tuple[str, ...]] = ("raised", "cleared")
SILENCE_CHOICES: Final[tuple[tuple[int, str], ...]] = ((15, "15 min"), (60, "1 h"), (240, "4 h"), (1440, "1 day"))
MAX_SILENCE_MINUTES: Final = 7 * 24 * 60
SIGNATURE_HEADER: Final = "X-Dashboard-Signature"
TIMESTAMP_HEADER: Final = "X-Dashboard-Timestamp"
RETRY_BASE_SECONDS: Final = 1.0
RETRY_CAP_SECONDS: Final = 60.0
RETRYABLE_STATUSES: Final = frozenset({408, 425, 429})
_ICONS: Final[dict[str, str]] = {"raised": ":rotating_light:", "updated": ":warning:", "cleared": ":white_check_mark:"}


@dataclass(frozen=True, slots=True)
class WebhookSpec:
    """One configured webhook: where to POST, which events and alert kinds it hears, how hard to try."""

    name: str
    url: str = field(repr=False)  # a chat webhook's path is its secret: never in a repr (or a log of the config)
    events: frozenset[str] = frozenset(DEFAULT_EVENTS)
    kinds: frozenset[str] | None = None  # None: every kind
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # may carry a token
    secret: str | None = field(default=None, repr=False)
    timeout: float = 5.0  # seconds per POST
    max_attempts: int = 5

    def wants(self, change: AlertChange) -> bool:
        """True when this webhook hears this kind of change of this kind of alert."""
        return change.status in self.events and (self.kinds is None or change.alert.kind in self.kinds)


def hooks_for(specs: Iterable[WebhookSpec], change: AlertChange) -> list[WebhookSpec]:
    """The webhooks that hear `change`, in configuration order."""
    return [spec for spec in specs if spec.wants(change)]


def retry_delays(max_attempts: int, base: float = RETRY_BASE_SECONDS, cap: float = RETRY_CAP_SECONDS) -> list[float]:
    """Seconds to wait before each retry: base, 2 x base, 4 x base ... capped; one fewer than the attempts."""
    return [min(cap, base * 2**n) for n in range(max(0, max_attempts - 1))]


def retryable(status: int | None) -> bool:
    """Try again after this answer? A network failure or timeout (None), a 5xx, 408, 425 or 429: yes; any other
    4xx says the request itself is wrong (a revoked URL, a bad token), which a retry cannot fix."""
    return status is None or status >= 500 or status in RETRYABLE_STATUSES


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat()


def _slack_escape(text: str) -> str:
    """Slack's mrkdwn treats &, < and > as markup: names from tasks are untrusted text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def alerts_url(dashboard_url: str | None) -> str | None:
    """The alerts page under the configured public URL of the dashboard, if any."""
    return dashboard_url.rstrip("/") + "/alerts" if dashboard_url else None


def slack_text(change: AlertChange, dashboard_url: str | None) -> str:
    """One line for a chat room (Slack, Mattermost, Rocket.Chat, Teams' Slack-compatible hooks)."""
    alert = change.alert
    subject = alert.queue if alert.kind in ("orphaned_queue", "queue_lost_consumer") else alert.task
    what = alert.kind.replace("_", " ") + (f" `{subject}`" if subject else "")
    text = f"{_ICONS[change.status]} Alert {change.status}: {what}: {alert.message}"
    if change.status == "cleared":
        text += f" (held since {_iso(alert.since)})"
    link = alerts_url(dashboard_url)
    text = _slack_escape(text)
    return f"{text} <{link}|Open the dashboard>" if link else text


def payload(change: AlertChange, dashboard_url: str | None, sent_at: float) -> dict[str, Any]:
    """The JSON a webhook is sent: Slack's `text`, plus the structured facts."""
    alert = change.alert
    return {
        "text": slack_text(change, dashboard_url),
        "event": change.status,
        "kind": alert.kind,
        "key": alert.key,
        "queue": alert.queue,
        "task": alert.task,
        "depth": alert.depth,
        "message": alert.message,
        "since": alert.since,
        "since_iso": _iso(alert.since),
        "raised_at": alert.raised_at,
        "cleared_at": alert.cleared_at,
        "dashboard_url": alerts_url(dashboard_url),
        "sent_at": sent_at,
    }


def encode(body: Mapping[str, Any]) -> bytes:
    """The payload as the bytes that are signed and sent."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 of "<timestamp>.<body>" with the webhook's secret (the timestamp is signed too,
    so a receiver can refuse a replayed old delivery)."""
    digest = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def request_headers(spec: WebhookSpec, body: bytes, now: float) -> dict[str, str]:
    """Content type, the configured headers, and the signature headers when the webhook has a secret."""
    headers = {"Content-Type": "application/json", "User-Agent": "dispatch-dashboard-webhook"}
    headers.update(spec.headers)
    if spec.secret:
        timestamp = str(int(now))
        headers[TIMESTAMP_HEADER] = timestamp
        headers[SIGNATURE_HEADER] = signature(spec.secret, timestamp, body)
    return headers


# -- acknowledgements and silences ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Acknowledgement:
    """Someone took an alert in hand. It belongs to the occurrence that was active when it was made and is
    forgotten when that occurrence clears (`forgets`), so an alert raised again is not acknowledged; a replica
    that restarts while the alert still holds keeps showing it."""

    key: str
    by: str
    at: float

    def covers(self, alert: Alert) -> bool:
        """True when this acknowledges `alert`'s current occurrence."""
        return alert.key == self.key


    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (also how it is stored)."""
        return {"by": self.by, "at": self.at}


def forgets(change: AlertChange) -> bool:
    """True when `change` ends the occurrence an acknowledgement belongs to (it cleared)."""
    return change.status == "cleared"


@dataclass(frozen=True, slots=True)
class Silence:
    """No webhooks for an alert key until `until`, whatever its occurrences do meanwhile."""

    key: str
    by: str
    at: float
    until: float

    def active(self, now: float) -> bool:
        """True while the silence lasts."""
        return now < self.until

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (also how it is stored)."""
        return {"by": self.by, "at": self.at, "until": self.until}


class MarkInvalid(ValueError):
    """An acknowledgement or silence that cannot be made; the message says why."""


def silence_for(key: str, by: str, minutes: object, now: float) -> Silence:
    """A silence of `minutes` (a whole number from 1 to MAX_SILENCE_MINUTES) from `now`."""
    if isinstance(minutes, bool) or not isinstance(minutes, int) or not 1 <= minutes <= MAX_SILENCE_MINUTES:
        raise MarkInvalid(f"minutes: a whole number from 1 to {MAX_SILENCE_MINUTES} (7 days)")
    return Silence(key, by, now, now + minutes * 60.0)


def parse_mark(kind: str, key: str, raw: str) -> Acknowledgement | Silence | None:
    """A stored acknowledgement ("ack") or silence ("silence") from its JSON; None when it is not readable."""
    try:
        data = json.loads(raw)
        by, at = str(data["by"]), float(data["at"])
        return Acknowledgement(key, by, at) if kind == "ack" else Silence(key, by, at, float(data["until"]))
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True, slots=True)
class AlertMark:
    """What the pages and the API show beside an alert: who acknowledged it, who silenced it until when."""

    acknowledged_by: str | None = None
    acknowledged_at: float | None = None
    silenced_by: str | None = None
    silenced_until: float | None = None

    @property
    def silenced(self) -> bool:
        """True while a silence holds."""
        return self.silenced_until is not None

    @property
    def acknowledged(self) -> bool:
        """True when this occurrence was acknowledged."""
        return self.acknowledged_by is not None

    def to_dict(self) -> dict[str, Any]:
        """The four fields, null when not set."""
        return {"acknowledged_by": self.acknowledged_by, "acknowledged_at": self.acknowledged_at,
                "silenced_by": self.silenced_by, "silenced_until": self.silenced_until}


NO_MARK: Final = AlertMark()


def mark_of(alert: Alert, acks: Mapping[str, Acknowledgement], silences: Mapping[str, Silence],
            now: float) -> AlertMark:
    """The acknowledgement of `alert`'s occurrence and the silence of its key that hold at `now`."""
    ack = acks.get(alert.key)
    silence = silences.get(alert.key)
    if ack is not None and not ack.covers(alert):
        ack = None
    if silence is not None and not silence.active(now):
        silence = None
    if ack is None and silence is None:
        return NO_MARK
    return AlertMark(ack.by if ack else None, ack.at if ack else None,
                     silence.by if silence else None, silence.until if silence else None)
