"""Pure request guards: redirect targets, Host allow-lists and the failed-login throttle."""

from __future__ import annotations

import pytest

from dashboard.model.auth import LOOPBACK_NAMES, host_allowed, host_name, safe_redirect_path
from dashboard.model.throttle import LoginThrottle, throttle_keys

HOME = "/"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        pytest.param("/tasks?state=FAILURE", "/tasks?state=FAILURE", id="local-path"),
        pytest.param("/ops/tasks", "/ops/tasks", id="prefixed-path"),
        pytest.param("", HOME, id="empty"),
        pytest.param("tasks", HOME, id="relative"),
        pytest.param("//evil.example", HOME, id="scheme-relative"),
        pytest.param("/\t/evil.example", HOME, id="tab-between-slashes"),
        pytest.param("/\n/evil.example", HOME, id="newline-between-slashes"),
        pytest.param("/\r\nSet-Cookie: x=1", HOME, id="header-injection"),
        pytest.param("/\\evil.example", HOME, id="backslash"),
        pytest.param("/ /evil.example", HOME, id="space"),
        pytest.param("/\x00/evil.example", HOME, id="nul"),
        pytest.param("https://evil.example/", HOME, id="absolute"),
        pytest.param("/" + "a" * 5000, HOME, id="too-long"),
    ],
)
def test_safe_redirect_path(target: str, expected: str) -> None:
    assert safe_redirect_path(target, HOME) == expected


@pytest.mark.parametrize(
    ("host", "allowed", "expected"),
    [
        pytest.param("127.0.0.1:5000", LOOPBACK_NAMES, True, id="loopback-with-port"),
        pytest.param("localhost", LOOPBACK_NAMES, True, id="localhost"),
        pytest.param("[::1]:5000", LOOPBACK_NAMES, True, id="ipv6-loopback"),
        pytest.param("rebind.evil.test:5000", LOOPBACK_NAMES, False, id="dns-rebinding"),
        pytest.param("localhost.evil.test", LOOPBACK_NAMES, False, id="suffix-trick"),
        pytest.param("", LOOPBACK_NAMES, False, id="empty"),
        pytest.param("Dash.Example.COM", ("dash.example.com",), True, id="case-insensitive"),
        pytest.param("dash.example.com.", ("dash.example.com",), True, id="trailing-dot"),
        pytest.param("a.dash.example.com", (".dash.example.com",), True, id="subdomain-entry"),
        pytest.param("dash.example.com", (".dash.example.com",), True, id="subdomain-entry-itself"),
        pytest.param("evildash.example.com", (".dash.example.com",), False, id="not-a-subdomain"),
        pytest.param("anything.example", ("*",), True, id="wildcard"),
    ],
)
def test_host_allowed(host: str, allowed: tuple[str, ...], expected: bool) -> None:
    assert host_allowed(host, allowed) is expected


def test_host_name_strips_the_port() -> None:
    assert host_name("Example.com:8080") == "example.com"
    assert host_name("[::1]:8080") == "[::1]"


def test_throttle_allows_a_few_failures_then_doubles_the_wait() -> None:
    throttle = LoginThrottle(free=3, base=1.0, ceiling=8.0, window=100.0)
    keys = throttle_keys("10.0.0.1", "op")
    for second in range(3):
        assert throttle.wait(keys, float(second)) == 0
        throttle.failed(keys, float(second))
    assert throttle.wait(keys, 2.0) == pytest.approx(1.0)  # the 3rd failure at t=2: wait 1 s
    throttle.failed(keys, 3.0)
    assert throttle.wait(keys, 3.0) == pytest.approx(2.0)
    for _ in range(10):
        throttle.failed(keys, 3.0)
    assert throttle.wait(keys, 3.0) == pytest.approx(8.0)  # capped


def test_throttle_counts_each_key_and_forgets_after_a_quiet_window() -> None:
    throttle = LoginThrottle(free=1, base=5.0, window=60.0)
    throttle.failed(throttle_keys("10.0.0.1", "op"), 0.0)
    throttle.failed(throttle_keys("10.0.0.2", "op"), 0.0)  # another address, the same user name
    assert throttle.wait(throttle_keys("10.0.0.3", "op"), 1.0) > 0  # the name is throttled from anywhere
    assert throttle.wait(throttle_keys("10.0.0.3", "viewer"), 1.0) == 0
    assert throttle.wait(throttle_keys("10.0.0.1", "op"), 61.0) == 0


def test_throttle_success_clears_and_memory_is_bounded() -> None:
    throttle = LoginThrottle(free=0, capacity=100)
    keys = throttle_keys("10.0.0.1", "op")
    throttle.failed(keys, 0.0)
    throttle.succeeded(keys)
    assert throttle.wait(keys, 0.0) == 0
    for number in range(1000):
        throttle.failed(throttle_keys(None, f"made-up-{number}"), 0.0)
    assert len(throttle) == 100


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "text",
    ["a" * 1_000_000, "x://" + "a:" * 300_000, "a://b:" * 100_000, "http://u:p@h " * 10 + "a" * 500_000],
    ids=["letters", "one-scheme-many-colons", "many-schemes", "urls-then-letters"],
)
def test_masking_is_linear_in_the_input(text: str) -> None:
    # Once quadratic: 30 000 letters took 5 s, a megabyte would take hours (pytest-timeout fails it).
    from dashboard.model.secrets import MASK, mask_text

    masked = mask_text(text)

    assert "u:p@" not in masked
    assert len(masked) >= len(text) - 100 or MASK in masked


@pytest.mark.parametrize(
    ("broker", "backend", "shared"),
    [
        ("redis://127.0.0.1:1/0", None, True),
        ("amqp://guest@127.0.0.1:1//", "redis://127.0.0.1:1/1", True),  # RabbitMQ with a Redis result backend
        ("amqp://guest@127.0.0.1:1//", "rpc://", False),
        ("amqp://guest@127.0.0.1:1//", None, False),
    ],
)
def test_logouts_are_shared_through_the_first_redis_every_replica_has(
    broker: str, backend: str | None, shared: bool
) -> None:
    from dashboard.services.sessions import SessionRevocations

    revocations = SessionRevocations(broker, backend)  # nothing connects until a session is checked
    try:
        assert revocations.shared is shared
    finally:
        revocations.close()
