"""Unit tests for dashboard.model.auth: users, tokens, the [auth] table, origins and roles. No I/O, no Flask."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from dashboard.model.auth import (
    AuthSettings,
    CredentialCache,
    Identity,
    Token,
    User,
    is_loopback,
    parse_auth,
    role_allows,
    same_origin,
)

HASH = "pbkdf2:sha256:1000$salt$" + "0" * 64  # the shape parse_auth checks (a "$"); never verified here
OPS_TOKEN = "ops-token-3f9a"
VIEW_TOKEN = "view-token-77c1"


class Problem(Exception):
    """What parse_auth raises through its `make` callback in these tests."""


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


SETTINGS = AuthSettings(
    users=(User("ops", HASH, "operator"), User("viewer", HASH, "viewer"), User("Ops_Admin", HASH, "operator")),
    tokens=(Token("ci", sha(OPS_TOKEN), "operator"), Token("grafana", sha(VIEW_TOKEN), "viewer")),
)


# --- AuthSettings.user: exact names only ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ops", "ops"),
        ("viewer", "viewer"),
        ("Ops_Admin", "Ops_Admin"),
        ("ops2", None),  # a longer name that starts with a user's name
        ("op", None),  # a prefix of a user's name
        ("o", None),
        ("", None),
        ("OPS", None),  # case matters
        ("ops ", None),  # trailing space is not trimmed
        (" ops", None),
        ("ops\x00", None),
        ("view", None),
        ("viewers", None),
        ("Ops_Admin2", None),
        ("Ops", None),
        ("*", None),
        ("%", None),
        (".*", None),
    ],
)
def test_user_matches_the_exact_name_only(name: str, expected: str | None) -> None:
    found = SETTINGS.user(name)

    assert (found.name if found else None) == expected


@pytest.mark.parametrize("name", ["opé", "ops\u200b", "😀", "ops\udcff"])
def test_user_with_a_non_ascii_name_is_simply_not_found(name: str) -> None:
    # hmac.compare_digest(str, str) raises TypeError on non-ASCII text: the names must be compared as bytes.
    assert SETTINGS.user(name) is None


def test_a_configured_non_ascii_user_is_found_exactly() -> None:
    settings = AuthSettings(users=(User("josé", HASH, "viewer"), User("ops", HASH, "operator")))

    assert (found := settings.user("josé")) is not None and found.name == "josé"
    assert settings.user("jose") is None and settings.user("josé2") is None and settings.user("jos") is None
    assert settings.user("jose\u0301") is None, "no Unicode normalisation: the decomposed form is another name"
    assert settings.user("ops") is not None


def test_no_users_means_open() -> None:
    assert not AuthSettings().enabled
    assert AuthSettings().user("ops") is None
    assert AuthSettings(users=(User("a", HASH, "viewer"),)).enabled
    assert AuthSettings(tokens=(Token("t", sha("x"), "viewer"),)).enabled


# --- AuthSettings.token: by sha256 ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("presented", "expected"),
    [
        (OPS_TOKEN, ("ci", "operator")),
        (VIEW_TOKEN, ("grafana", "viewer")),
        (OPS_TOKEN[:-1], None),
        (OPS_TOKEN + "x", None),
        (OPS_TOKEN.upper(), None),
        ("", None),
        (sha(OPS_TOKEN), None),  # presenting the stored hash itself is not the token
        ("tökén-\udcff", None),  # non-ASCII and a lone surrogate hash without error
    ],
)
def test_token_is_found_by_the_sha256_of_what_is_presented(presented: str, expected: tuple[str, str] | None) -> None:
    found = SETTINGS.token(presented)

    assert ((found.name, found.role) if found else None) == expected


# --- parse_auth ---------------------------------------------------------------------------------------


def parse(raw: Any) -> AuthSettings:
    return parse_auth(raw, Problem)


def user(**fields: Any) -> dict[str, Any]:
    return {"name": "ops", "password_hash": HASH, "role": "operator", **fields}


def token(**fields: Any) -> dict[str, Any]:
    return {"name": "ci", "token_sha256": sha("t"), "role": "viewer", **fields}


def test_parse_auth_reads_users_tokens_and_hours() -> None:
    settings = parse(
        {"users": [user(), user(name="vi", role="viewer")], "tokens": [token()], "session_hours": 2}
    )

    assert [(u.name, u.role) for u in settings.users] == [("ops", "operator"), ("vi", "viewer")]
    assert [(t.name, t.token_sha256, t.role) for t in settings.tokens] == [("ci", sha("t"), "viewer")]
    assert settings.session_hours == 2.0 and isinstance(settings.session_hours, float)


def test_parse_auth_defaults() -> None:
    settings = parse({})

    assert settings == AuthSettings() and not settings.enabled and settings.session_hours == 12.0
    default_role = parse({"users": [{"name": "x", "password_hash": HASH}]})
    assert default_role.users[0].role == "viewer", "a user without a role is a viewer, never an operator"
    assert parse({"tokens": [{"name": "t", "token_sha256": sha("t")}]}).tokens[0].role == "viewer"


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        pytest.param(["users"], "must be a table", id="not-a-table"),
        pytest.param("users", "must be a table", id="string"),
        pytest.param({"user": []}, "unknown key(s) user", id="unknown-key"),
        pytest.param({"users": ["ops"]}, "#1: expected name, password_hash and role", id="user-not-a-table"),
        pytest.param({"users": [user(password="x")]}, "#1: expected name", id="user-extra-key"),
        pytest.param({"users": [user(name="")]}, "name must be a non-empty string", id="empty-name"),
        pytest.param({"users": [user(name="   ")]}, "name must be a non-empty string", id="blank-name"),
        pytest.param({"users": [user(name=7)]}, "name must be a non-empty string", id="name-not-str"),
        pytest.param({"users": [user(name="x" * 129)]}, "name must be a non-empty string", id="name-too-long"),
        pytest.param({"users": [user(password_hash="hunter2")]}, "hash-password", id="plain-password"),
        pytest.param({"users": [user(password_hash=None)]}, "hash-password", id="no-hash"),
        pytest.param({"users": [user(role="admin")]}, "role must be viewer or operator", id="bad-role"),
        pytest.param({"users": [user(role="Operator")]}, "role must be viewer or operator", id="role-case"),
        pytest.param({"users": [user(), user(role="viewer")]}, "'ops' appears twice", id="duplicate-user"),
        pytest.param({"users": [user(), user(name="b", role="x")]}, "#2 (b)", id="second-entry-numbered"),
        pytest.param({"tokens": ["t"]}, "expected name, token_sha256 and role", id="token-not-a-table"),
        pytest.param({"tokens": [token(token="t")]}, "expected name, token_sha256", id="token-extra-key"),
        pytest.param({"tokens": [token(name="")]}, "name must be a non-empty string", id="token-empty-name"),
        pytest.param({"tokens": [token(token_sha256="abc")]}, "64 lowercase hex", id="short-digest"),
        pytest.param({"tokens": [token(token_sha256=sha("t").upper())]}, "64 lowercase hex", id="upper-digest"),
        pytest.param({"tokens": [token(token_sha256="g" * 64)]}, "64 lowercase hex", id="non-hex-digest"),
        pytest.param({"tokens": [token(token_sha256=1)]}, "64 lowercase hex", id="digest-not-str"),
        pytest.param({"tokens": [token(role="root")]}, "role must be viewer or operator", id="token-bad-role"),
        pytest.param({"session_hours": True}, "session_hours must be a number", id="hours-bool"),
        pytest.param({"session_hours": "12"}, "session_hours must be a number", id="hours-str"),
        pytest.param({"session_hours": 0}, "session_hours must be a number", id="hours-zero"),
        pytest.param({"session_hours": 721}, "session_hours must be a number", id="hours-too-many"),
        pytest.param({"session_hours": float("nan")}, "session_hours must be a number", id="hours-nan"),
    ],
)
def test_parse_auth_refuses_with_a_message(raw: Any, says: str) -> None:
    with pytest.raises(Problem) as caught:
        parse(raw)

    assert says in str(caught.value), str(caught.value)


def test_parse_auth_error_never_echoes_a_password_hash() -> None:
    with pytest.raises(Problem) as caught:
        parse({"users": [user(password_hash="plain-secret-password")]})

    assert "plain-secret-password" not in str(caught.value)


# --- is_loopback --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("ip6-localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("[::]", False),
        ("10.0.0.5", False),
        ("192.168.1.10", False),
        ("example.com", False),
        ("localhost.example.com", False),
        ("127.0.0.1.nip.io", False),
        ("", False),
        ("not an address", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


# --- same_origin --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "host_url", "expected"),
    [
        pytest.param(None, "http://127.0.0.1:5000/", True, id="no-origin-is-not-a-browser"),
        pytest.param("http://127.0.0.1:5000", "http://127.0.0.1:5000/", True, id="same"),
        pytest.param("HTTP://Dash.Example.com", "http://dash.example.com/", True, id="case-insensitive"),
        pytest.param("https://dash.example.com", "https://dash.example.com/", True, id="https"),
        pytest.param("http://127.0.0.1:5000", "ws://127.0.0.1:5000/", True, id="ws-maps-to-http"),
        pytest.param("https://dash.example.com", "wss://dash.example.com/", True, id="wss-maps-to-https"),
        pytest.param("http://dash.example.com", "wss://dash.example.com/", False, id="wss-is-not-http"),
        pytest.param("https://dash.example.com", "ws://dash.example.com/", False, id="ws-is-not-https"),
        pytest.param("ws://127.0.0.1:5000", "http://127.0.0.1:5000/", False, id="origin-ws-scheme"),
        pytest.param("http://127.0.0.1:5001", "http://127.0.0.1:5000/", False, id="other-port"),
        pytest.param("http://127.0.0.1", "http://127.0.0.1:5000/", False, id="missing-port"),
        pytest.param("https://127.0.0.1:5000", "http://127.0.0.1:5000/", False, id="other-scheme"),
        pytest.param("http://localhost:5000", "http://127.0.0.1:5000/", False, id="other-host-name"),
        pytest.param("https://evil.example", "https://dash.example.com/", False, id="other-site"),
        pytest.param("https://dash.example.com.evil.example", "https://dash.example.com/", False, id="suffix"),
        pytest.param("https://evil.example/dash.example.com", "https://dash.example.com/", False, id="in-path"),
        pytest.param("null", "http://127.0.0.1:5000/", False, id="null"),
        pytest.param("", "http://127.0.0.1:5000/", False, id="empty"),
        pytest.param("garbage", "http://127.0.0.1:5000/", False, id="garbage"),
    ],
)
def test_same_origin(origin: str | None, host_url: str, expected: bool) -> None:
    assert same_origin(origin, host_url) is expected


@pytest.mark.parametrize(
    ("origin", "fetch_site", "expected"),
    [
        # Chromium's plain form POST under a no-referrer policy: Origin null, but the browser attests same-origin
        pytest.param("null", "same-origin", True, id="null-same-origin-form"),
        pytest.param("null", "cross-site", False, id="null-cross-site"),
        pytest.param("null", "same-site", False, id="null-same-site"),
        pytest.param("null", "none", False, id="null-typed-url"),
        pytest.param("null", None, False, id="null-no-metadata"),
        pytest.param(None, "cross-site", False, id="no-origin-but-cross-site"),
        pytest.param("http://127.0.0.1:5000", "same-origin", True, id="real-origin"),
        pytest.param("http://127.0.0.1:5000", "cross-site", False, id="metadata-wins"),
    ],
)
def test_same_origin_with_fetch_metadata(origin: str | None, fetch_site: str | None, expected: bool) -> None:
    assert same_origin(origin, "http://127.0.0.1:5000/", fetch_site) is expected


# --- roles and identities -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "needs", "expected"),
    [
        ("viewer", "viewer", True),
        ("viewer", "operator", False),
        ("operator", "viewer", True),
        ("operator", "operator", True),
    ],
)
def test_role_allows(role: Any, needs: Any, expected: bool) -> None:
    assert role_allows(role, needs) is expected


@pytest.mark.parametrize(
    ("via", "cookie_based"), [("session", True), ("open", True), ("basic", False), ("bearer", False)]
)
def test_identity_cookie_based_only_for_what_a_browser_sends_by_itself(via: Any, cookie_based: bool) -> None:
    assert Identity("x", "viewer", via).cookie_based is cookie_based


def test_identity_can_operate() -> None:
    assert Identity("x", "operator", "basic").can_operate
    assert not Identity("x", "viewer", "basic").can_operate


# --- CredentialCache -------------------------------------------------------------------------------------


def test_credential_cache_is_bounded_and_drops_the_oldest() -> None:
    cache = CredentialCache(b"k" * 32, capacity=3)
    digests = [cache.digest("ops", f"pw{i}") for i in range(5)]

    for digest in digests:
        cache.put(digest, "operator")

    assert len(cache._seen) == 3
    assert [cache.get(d) for d in digests] == [None, None, "operator", "operator", "operator"]


def test_credential_cache_stays_bounded_under_many_puts() -> None:
    cache = CredentialCache(b"k" * 32, capacity=16)

    for i in range(1000):
        cache.put(cache.digest("u", str(i)), "viewer")
        cache.put(cache.digest("u", str(i % 3)), "viewer")  # re-puts of an existing key too

    assert len(cache._seen) <= 16


def test_credential_cache_digest_is_keyed_and_never_holds_the_password() -> None:
    one, other = CredentialCache(b"a" * 32), CredentialCache(b"b" * 32)
    password = "correct horse battery staple"

    digest = one.digest("ops", password)
    one.put(digest, "operator")

    assert digest != other.digest("ops", password), "the digest must depend on the per-app key"
    assert digest == one.digest("ops", password)
    assert one.digest("ops", "x") != one.digest("ops2", "x")
    assert one.digest("a:b", "c") != one.digest("a", "b:c"), "name and password must be separated"
    assert password not in repr(one._seen) and password not in digest
    assert one.get(digest) == "operator" and one.get(one.digest("ops", "wrong")) is None
    assert len(one.digest("ü", "\udcff")) == 64  # non-ASCII and lone surrogates digest without error
