"""Authentication, roles and CSRF at the HTTP boundary.

- No users or tokens configured: the dashboard runs open (everyone is an operator) and every page says so; the
  CLI refuses to serve that way on a non-loopback address unless told `--insecure-no-auth`.
- Browsers log in through /login (a signed session cookie: HttpOnly, SameSite=Lax, Secure over https);
  API clients use HTTP Basic with the same users, or a bearer token from the config.
- viewer: everything read-only, the live streams included. operator: also dispatch and worker control.
- Every state-changing request from a browser must be same-origin, and when the browser authenticates by cookie
  (or runs open) it must carry the session's CSRF token (form field `csrf_token` or header `X-CSRF-Token`).
  Websockets check the Origin header the same way (no cross-site websocket hijacking).
"""

from __future__ import annotations

import base64
import functools
import hmac
import secrets
import threading
import time
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from werkzeug.security import check_password_hash, generate_password_hash
from werkzeug.wrappers.response import Response as BaseResponse

from ..model.auth import (
    ANONYMOUS,
    LOOPBACK_NAMES,
    AuthSettings,
    CredentialCache,
    Identity,
    Role,
    host_allowed,
    role_allows,
    safe_redirect_path,
    same_origin,
)
from ..model.throttle import LoginThrottle, throttle_keys
from .context import services

bp = Blueprint("auth", __name__)

PUBLIC_ENDPOINTS = frozenset({"auth.login", "static", "api.healthz", "api.readyz", "openapi.openapi_json"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
_CACHE_KEY = "dispatch_dashboard_credentials"
_GATE_KEY = "dispatch_dashboard_login_gate"
HASHES_AT_ONCE = 2  # password hashes (scrypt: ~32 MiB each) computed at once per process
HASH_WAIT_SECONDS = 2.0  # how long a login waits for a hashing slot before it is told to retry


class LoginGate:
    """What stands between a password guess and the password hash: a throttle per client address and user
    name, and a bound on how many hashes run at once (each costs memory and CPU)."""

    def __init__(self) -> None:
        self.throttle = LoginThrottle()
        self.hashing = threading.BoundedSemaphore(HASHES_AT_ONCE)


class TooManyAttempts(Exception):
    """A login was throttled; `retry_after` says when to try again."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many failed logins: try again in {max(1, round(retry_after))} s")
        self.retry_after = max(1, round(retry_after))


class _SessionInterface(SecureCookieSessionInterface):
    """The signed cookie, marked Secure whenever the request itself came over https."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config.get("SESSION_COOKIE_SECURE")) or request.is_secure


def install(app: Flask, settings: AuthSettings, secret_key: str | None) -> None:
    """Configure sessions and register the guard and the login blueprint."""
    app.secret_key = secret_key or secrets.token_hex(32)  # random: sessions end when the server restarts
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
                      SESSION_COOKIE_NAME="dispatch_dashboard_session",
                      PERMANENT_SESSION_LIFETIME=int(settings.session_hours * 3600))
    app.session_interface = _SessionInterface()
    app.extensions[_CACHE_KEY] = CredentialCache(secrets.token_bytes(32))
    app.extensions[_GATE_KEY] = LoginGate()
    app.register_blueprint(bp)
    app.before_request(_guard)

    @app.context_processor
    def _auth_context() -> dict[str, Any]:
        return {"csrf_token": csrf_token, "identity": g.get("identity"), "auth_enabled": settings.enabled}


def csrf_token() -> str:
    """The session's CSRF token (created on first use)."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def _settings() -> AuthSettings:
    return services().config.auth


def identify() -> Identity | None | bool:
    """The requester: an Identity, None when anonymous, False when the credentials presented are wrong."""
    settings = _settings()
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "basic" and value:
        return _basic(settings, value.strip()) or False
    if scheme.lower() == "bearer" and value:
        token = settings.token(value.strip())
        return Identity(token.name, token.role, "bearer") if token else False
    if not settings.enabled:
        return Identity(ANONYMOUS, "operator", "open")
    name, started, sid = session.get("user"), session.get("since"), session.get("sid")
    if isinstance(name, str) and isinstance(started, (int, float)) and isinstance(sid, str):
        user = settings.user(name)
        if user is not None and time.time() - started < settings.session_hours * 3600 \
                and not services().revocations.revoked(sid):
            return Identity(user.name, user.role, "session")
    return None


def _gate() -> LoginGate:
    gate: LoginGate = current_app.extensions[_GATE_KEY]
    return gate


def check_password(name: str, password: str) -> Identity | None:
    """The user `name` if `password` is theirs; throttled per client address and name (TooManyAttempts), and
    at most HASHES_AT_ONCE hashes at a time. Unknown names cost a hash too: timing must not reveal names."""
    gate = _gate()
    keys = throttle_keys(request.remote_addr, name)
    wait = gate.throttle.wait(keys, time.monotonic())
    if wait > 0:
        raise TooManyAttempts(wait)
    if not gate.hashing.acquire(timeout=HASH_WAIT_SECONDS):
        raise TooManyAttempts(HASH_WAIT_SECONDS)
    try:
        user = _settings().user(name)
        if user is None:
            _spend_a_hash(password)
            ok = False
        else:
            ok = check_password_hash(user.password_hash, password)
    finally:
        gate.hashing.release()
    if not ok or user is None:
        gate.throttle.failed(keys, time.monotonic())
        return None
    gate.throttle.succeeded(keys)
    return Identity(user.name, user.role, "session")


def _basic(settings: AuthSettings, encoded: str) -> Identity | None:
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    name, sep, password = decoded.partition(":")
    if not sep or len(name) > 128 or len(password) > 1024:
        return None
    cache: CredentialCache = current_app.extensions[_CACHE_KEY]
    digest = cache.digest(name, password)
    role = cache.get(digest)
    if role is None:
        checked = check_password(name, password)
        if checked is None:
            return None
        role = checked.role
        cache.put(digest, role)
    return Identity(name, role, "basic")


def _wants_json() -> bool:
    return request.path.startswith("/api/") or request.path in ("/metrics", "/healthz", "/readyz")


def _deny(status: int, message: str) -> BaseResponse | tuple[Response | str, int]:
    from .errors import error_response

    if status == 401:
        if _wants_json() or request.headers.get("Authorization") or request.environ.get("HTTP_UPGRADE"):
            response = jsonify(error=message)
            response.status_code = 401
            response.headers["WWW-Authenticate"] = 'Basic realm="dispatch-dashboard", charset="UTF-8"'
            return response
        return redirect(url_for("auth.login", next=request.script_root + request.full_path.rstrip("?")))
    return error_response(status, message)


VIEWER_ACTIONS = frozenset({"auth.logout"})  # state changes any logged-in user may make


def _needs(endpoint: str | None, method: str) -> Role:
    return "viewer" if method in SAFE_METHODS or endpoint in VIEWER_ACTIONS else "operator"


def _guard() -> Any:
    """Runs before every request: host, origin, identity, role, CSRF."""
    endpoint = request.endpoint
    unsafe = request.method not in SAFE_METHODS
    is_websocket = request.environ.get("HTTP_UPGRADE", "").lower() == "websocket"
    if not host_allowed(request.host, allowed_hosts()):
        return _deny(400, "this dashboard does not answer to that host name: add it to [server] allowed_hosts")
    if (unsafe or is_websocket) and not _same_origin():
        return _deny(403, "cross-site request refused: open the dashboard itself and try again")
    if endpoint in PUBLIC_ENDPOINTS:
        if unsafe and endpoint == "auth.login" and not _csrf_ok():
            return _deny(403, "the form expired (CSRF token missing or wrong): reload the page and try again")
        return None
    try:
        who = identify()
    except TooManyAttempts as exc:
        return _throttled(exc)
    if isinstance(who, Identity) and endpoint is None:
        # A path or method that does not exist: its 404 or 405, now that the requester is known, with the pages'
        # usual chrome (the live indicator, the alert banner, the open-mode notice).
        g.identity = who
        return None
    if who is False:
        return _deny(401, "wrong user name, password or token")
    if who is None:
        return _deny(401, "log in first")
    assert isinstance(who, Identity)
    g.identity = who
    if not role_allows(who.role, _needs(endpoint, request.method)):
        return _deny(403, f"{who.name} is a viewer: dispatching and worker control need the operator role")
    if unsafe and who.cookie_based and _from_browser() and not _csrf_ok():
        return _deny(403, "the form expired (CSRF token missing or wrong): reload the page and try again")
    return None


def allowed_hosts() -> tuple[str, ...]:
    """[server] allowed_hosts, else the loopback names."""
    configured = services().config.server.allowed_hosts
    return configured if configured is not None else LOOPBACK_NAMES


def _throttled(exc: TooManyAttempts) -> BaseResponse:
    response = current_app.make_response(_deny(429, str(exc)))
    response.headers["Retry-After"] = str(exc.retry_after)
    return response


def _same_origin() -> bool:
    """Browsers say where a request comes from; anything but this origin is refused."""
    return same_origin(request.headers.get("Origin"), request.host_url, request.headers.get("Sec-Fetch-Site"))


def _from_browser() -> bool:
    """A browser sends our cookie or its fetch metadata; scripts and curl send neither, and (authenticating
    by header, or talking to an open dashboard) cannot be forged into acting by another site."""
    cookie = current_app.config["SESSION_COOKIE_NAME"]
    return cookie in request.cookies or "Origin" in request.headers or "Sec-Fetch-Site" in request.headers


def _csrf_ok() -> bool:
    expected = session.get("csrf")
    given = request.headers.get(CSRF_HEADER) or (request.form.get(CSRF_FIELD) if request.form else None)
    return isinstance(expected, str) and isinstance(given, str) and hmac.compare_digest(expected, given)


@functools.cache
def _dummy_hash() -> str:
    return generate_password_hash(secrets.token_hex(16))


def _spend_a_hash(password: str) -> None:
    check_password_hash(_dummy_hash(), password)


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    """The login form; on success, a fresh session (new CSRF token) and a redirect to where the user was going."""
    settings = _settings()
    target = _safe_next(request.values.get("next", ""))
    if not settings.enabled:
        return redirect(target)
    error = None
    status = 200
    retry_after = None
    if request.method == "POST":
        name = request.form.get("name", "")[:128]
        password = request.form.get("password", "")[:1024]
        try:
            who = check_password(name, password)
        except TooManyAttempts as exc:
            who, retry_after = None, exc.retry_after
            error, status = f"Too many failed logins: try again in {exc.retry_after} s.", 429
        else:
            error, status = "Wrong user name or password.", 401
        if who is not None:
            session.clear()
            session.permanent = True
            session["user"] = who.name
            session["since"] = time.time()
            session["sid"] = secrets.token_urlsafe(18)
            csrf_token()
            return redirect(target)
    response = current_app.make_response((render_template("pages/login.html", error=error, next=target), status))
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


@bp.post("/logout")
def logout() -> BaseResponse:
    """End the session, here and on every replica (the session id is refused from now on)."""
    sid, started = session.get("sid"), session.get("since")
    if isinstance(sid, str) and isinstance(started, (int, float)):
        services().revocations.revoke(sid, started + _settings().session_hours * 3600)
    session.clear()
    return redirect(url_for("auth.login"))


def _safe_next(target: str) -> str:
    """Only local paths: never redirect to another site after login."""
    return safe_redirect_path(target, url_for("pages.index"))
