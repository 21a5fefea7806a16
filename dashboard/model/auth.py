"""Who may do what (pure): users and tokens from the config, roles, and the request checks that need no I/O."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal
from urllib.parse import urlsplit

from .values import number_in

Role = Literal["viewer", "operator"]
ROLES: Final[tuple[Role, ...]] = ("viewer", "operator")
ANONYMOUS: Final = "anonymous"


@dataclass(frozen=True, slots=True)
class User:
    """A configured user: name, password hash (werkzeug's format), role."""

    name: str
    password_hash: str
    role: Role


@dataclass(frozen=True, slots=True)
class Token:
    """A configured API bearer token, stored as the hex SHA-256 of the token."""

    name: str
    token_sha256: str
    role: Role


@dataclass(frozen=True)
class AuthSettings:
    """The [auth] table: users, tokens, and whether requests over https only get Secure cookies."""

    users: tuple[User, ...] = ()
    tokens: tuple[Token, ...] = ()
    session_hours: float = 12.0

    @property
    def enabled(self) -> bool:
        """True when anyone is configured; otherwise the dashboard runs open (loopback only)."""
        return bool(self.users or self.tokens)

    def user(self, name: str) -> User | None:
        """The user called `name` (exact match: no prefix or partial matching, unlike CVE-2022-30034)."""
        wanted = name.encode("utf-8", "surrogatepass")
        return next((user for user in self.users if hmac.compare_digest(user.name.encode("utf-8"), wanted)), None)

    def token(self, presented: str) -> Token | None:
        """The token whose hash matches the presented bearer token, compared in constant time."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).hexdigest()
        found = None
        for token in self.tokens:
            if hmac.compare_digest(token.token_sha256, digest):
                found = token
        return found


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is asking, and how they proved it."""

    name: str
    role: Role
    via: Literal["session", "basic", "bearer", "open"]

    @property
    def can_operate(self) -> bool:
        """Operators may dispatch and control workers."""
        return self.role == "operator"

    @property
    def cookie_based(self) -> bool:
        """Browsers send cookies by themselves: such requests need CSRF protection."""
        return self.via in ("session", "open")


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def same_origin(origin: str | None, host_url: str, fetch_site: str | None = None) -> bool:
    """True when the Origin header is absent (not a browser) or names this very scheme, host and port.

    "null" is what a browser sends for a plain form POST when the page's referrer policy withholds the origin
    (Chromium does so under `no-referrer`), and also from sandboxed frames and data: URLs: it passes only when
    the browser's own fetch metadata says the request is same-origin (`Sec-Fetch-Site`, which no page can set).
    """
    if fetch_site in ("cross-site", "same-site"):
        return False
    if origin is None:
        return True
    if origin == "null":
        return fetch_site == "same-origin"
    got, want = urlsplit(origin), urlsplit(host_url)
    ws_schemes = {"ws": "http", "wss": "https"}
    want_scheme = ws_schemes.get(want.scheme, want.scheme)
    return (got.scheme, got.netloc.lower()) == (want_scheme, want.netloc.lower())


def safe_redirect_path(target: str, fallback: str) -> str:
    """`target` when it is a path on this site, else `fallback` (no open redirect after login).

    Browsers drop tabs and newlines from URLs and read a backslash as a slash, so a tab between two slashes or
    a leading slash-backslash would leave the site: any control character, whitespace or backslash refuses the target.
    """
    if len(target) > 2048 or not target.startswith("/") or target.startswith("//"):
        return fallback
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F or ch == "\\" for ch in target):
        return fallback
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return fallback
    return target


LOOPBACK_NAMES: Final[tuple[str, ...]] = ("localhost", "127.0.0.1", "[::1]", "::1", "ip6-localhost")


def host_name(host: str) -> str:
    """The name part of a Host header, lower-cased, without the port (IPv6 literals keep their brackets)."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    name, _, _port = host.partition(":")
    return name.rstrip(".")


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """True when the request's Host names this dashboard: an exact name of `allowed`, a `.suffix` entry's
    subdomain, or anything for "*". Refusing other names stops DNS rebinding (a foreign name resolving here)."""
    name = host_name(host)
    if not name:
        return False
    for entry in allowed:
        entry = entry.lower()
        if entry == "*" or entry == name or (entry.startswith(".") and (name.endswith(entry) or name == entry[1:])):
            return True
    return False


def role_allows(role: Role, needs: Role) -> bool:
    """Operators can do everything viewers can."""
    return role == "operator" or needs == "viewer"


@dataclass
class CredentialCache:
    """Remembers recently verified Basic credentials by a keyed digest, so a password hash (deliberately slow)
    is computed once per user and password, not once per request. Bounded; never holds a password."""

    key: bytes
    capacity: int = 256
    _seen: dict[str, Role] = field(default_factory=dict)

    def digest(self, name: str, password: str) -> str:
        """A keyed digest of the pair."""
        return hmac.new(self.key, f"{name}\0{password}".encode("utf-8", "surrogatepass"), "sha256").hexdigest()

    def get(self, digest: str) -> Role | None:
        """The role of a pair verified before, if any."""
        return self._seen.get(digest)

    def put(self, digest: str, role: Role) -> None:
        """Remember a verified pair."""
        if len(self._seen) >= self.capacity:
            self._seen.pop(next(iter(self._seen)))
        self._seen[digest] = role


def parse_auth(raw: object, make: Callable[[str], Exception]) -> AuthSettings:
    """Check the decoded [auth] table; `make(problem)` returns the exception to raise."""
    if not isinstance(raw, Mapping):
        raise make("[auth] must be a table")
    unknown = sorted(set(raw) - {"users", "tokens", "session_hours"})
    if unknown:
        raise make(f"[auth]: unknown key(s) {', '.join(unknown)}; use users, tokens, session_hours")
    users: list[User] = []
    for index, item in enumerate(raw.get("users", []) or []):
        where = f"[[auth.users]] #{index + 1}"
        if not isinstance(item, Mapping) or set(item) - {"name", "password_hash", "role"}:
            raise make(f"{where}: expected name, password_hash and role")
        name, hashed, role = item.get("name"), item.get("password_hash"), item.get("role", "viewer")
        if not isinstance(name, str) or not name.strip() or len(name) > 128:
            raise make(f"{where}: name must be a non-empty string")
        if not isinstance(hashed, str) or "$" not in hashed:
            raise make(f"{where} ({name}): password_hash must be the output of `dispatch-dashboard hash-password`")
        if role not in ROLES:
            raise make(f"{where} ({name}): role must be viewer or operator")
        if any(user.name == name for user in users):
            raise make(f"{where}: user {name!r} appears twice")
        users.append(User(name, hashed, role))
    tokens: list[Token] = []
    for index, item in enumerate(raw.get("tokens", []) or []):
        where = f"[[auth.tokens]] #{index + 1}"
        if not isinstance(item, Mapping) or set(item) - {"name", "token_sha256", "role"}:
            raise make(f"{where}: expected name, token_sha256 and role")
        name, digest, role = item.get("name"), item.get("token_sha256"), item.get("role", "viewer")
        if not isinstance(name, str) or not name.strip():
            raise make(f"{where}: name must be a non-empty string")
        if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise make(f"{where} ({name}): token_sha256 must be 64 lowercase hex digits (sha256sum of the token)")
        if role not in ROLES:
            raise make(f"{where} ({name}): role must be viewer or operator")
        tokens.append(Token(name, digest, role))
    hours = raw.get("session_hours", 12.0)
    if not number_in(hours, 0.05, 24 * 30):
        raise make("[auth] session_hours must be a number from 0.05 to 720")
    return AuthSettings(tuple(users), tuple(tokens), float(hours))
