"""The pure half of broker inspection: kombu's Redis key names, binding members, internal queues, URL parsing."""

from __future__ import annotations

import fnmatch
from typing import Any

import pytest
from kombu.transport import redis as kombu_redis

from dashboard.exceptions import ConfigError
from dashboard.model.kombu import (
    KOMBU_PRIORITY_STEPS,
    KOMBU_SEP,
    KOMBU_UNACKED_KEY,
    Binding,
    KombuRedisLayout,
    is_internal,
    user_queues,
)
from dashboard.services.broker import broker_inspector, broker_scheme, shown_url
from dashboard.services.broker.redis import RedisBrokerInspector, RedisTarget

SEP = "\x06\x16"
DEFAULT = KombuRedisLayout()
PREFIXED = KombuRedisLayout(prefix="pfx:")


def kombu_channel() -> Any:
    """A kombu Redis Channel with its class defaults and no connection, to call its pure key methods."""
    return kombu_redis.Channel.__new__(kombu_redis.Channel)


# --- key names ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "queue", "expected"),
    [
        (DEFAULT, "orphan-q", ("orphan-q", f"orphan-q{SEP}3", f"orphan-q{SEP}6", f"orphan-q{SEP}9")),
        (PREFIXED, "orphan-q", ("pfx:orphan-q", f"pfx:orphan-q{SEP}3", f"pfx:orphan-q{SEP}6", f"pfx:orphan-q{SEP}9")),
        (KombuRedisLayout(priority_steps=(0, 5)), "q", ("q", f"q{SEP}5")),
        (KombuRedisLayout(sep="|", priority_steps=(0, 1, 2)), "q", ("q", "q|1", "q|2")),
        (KombuRedisLayout(priority_steps=(4, 8)), "q", (f"q{SEP}4", f"q{SEP}8")),  # no step 0: no bare list
    ],
    ids=["default", "prefixed", "custom-steps", "custom-sep", "no-step-zero"],
)
def test_queue_keys(layout: KombuRedisLayout, queue: str, expected: tuple[str, ...]) -> None:
    assert layout.queue_keys(queue) == expected


def test_defaults_agree_with_kombu() -> None:
    channel = kombu_channel()
    assert channel.sep == KOMBU_SEP
    assert tuple(channel.priority_steps) == KOMBU_PRIORITY_STEPS
    assert channel.unacked_key == KOMBU_UNACKED_KEY
    assert channel.keyprefix_queue % ("ex",) == "_kombu.binding.ex"
    for queue in ("celery", "orphan-q", "a.b:c"):
        kombu_keys = tuple(channel._q_for_pri(queue, step) for step in channel.priority_steps)
        assert DEFAULT.queue_keys(queue) == kombu_keys


def test_prefix_agrees_with_kombus_prefixed_client() -> None:
    # kombu prefixes the first argument of LLEN, SMEMBERS, HLEN, ... in its GlobalKeyPrefixMixin.
    client = kombu_redis.PrefixedStrictRedis.__new__(kombu_redis.PrefixedStrictRedis)
    client.global_keyprefix = "pfx:"
    for command in ("LLEN", "SMEMBERS", "HLEN", "LPUSH", "SADD"):
        assert command in client.PREFIXED_SIMPLE_COMMANDS
    prefix_args: Any = client._prefix_args  # kombu's own, untyped
    assert prefix_args(("LLEN", "orphan-q")) == ["LLEN", PREFIXED.queue_keys("orphan-q")[0]]
    assert prefix_args(("SMEMBERS", "_kombu.binding.ex")) == ["SMEMBERS", "pfx:_kombu.binding.ex"]
    assert prefix_args(("HLEN", "unacked")) == ["HLEN", PREFIXED.unacked]


def test_unacked_key() -> None:
    assert DEFAULT.unacked == "unacked"
    assert PREFIXED.unacked == "pfx:unacked"
    assert KombuRedisLayout.from_transport_options({"unacked_key": "ua"}).unacked == "ua"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, KombuRedisLayout()),
        ({"global_keyprefix": "pfx:"}, KombuRedisLayout(prefix="pfx:")),
        ({"global_keyprefix": None, "visibility_timeout": 60}, KombuRedisLayout()),
        ({"priority_steps": [9, 0, 3]}, KombuRedisLayout(priority_steps=(0, 3, 9))),
        ({"priority_steps": list(range(10))}, KombuRedisLayout(priority_steps=tuple(range(10)))),
        ({"sep": ":", "unacked_key": "ua"}, KombuRedisLayout(sep=":", unacked_key="ua")),
    ],
    ids=["empty", "prefix", "ignored-options", "steps-sorted", "ten-steps", "sep-unacked"],
)
def test_layout_from_transport_options(options: dict[str, Any], expected: KombuRedisLayout) -> None:
    assert KombuRedisLayout.from_transport_options(options) == expected


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"global_keyprefix": 5}, "global_keyprefix must be a string"),
        ({"priority_steps": "abc"}, "priority_steps must be a list of integers"),
        ({"priority_steps": 3}, "priority_steps must be a list of integers"),
        ({"priority_steps": []}, "priority_steps must list integers >= 0"),
        ({"priority_steps": [0, -1]}, "priority_steps must list integers >= 0"),
    ],
)
def test_layout_rejects_malformed_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        KombuRedisLayout.from_transport_options(options)


# --- binding sets -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "key", "matches"),
    [
        (DEFAULT, "_kombu.binding.orphan-q", True),
        (DEFAULT, "_kombu.binding.celery.pidbox", True),
        (DEFAULT, "_kombu.binding_permanent.orphan-q", False),  # kombu 5.7's mirror of non-expiring bindings
        (DEFAULT, "_kombu.binding_deadlines", False),
        (DEFAULT, "pfx:_kombu.binding.orphan-q", False),
        (DEFAULT, "orphan-q", False),
        (PREFIXED, "pfx:_kombu.binding.orphan-q", True),
        (PREFIXED, "_kombu.binding.orphan-q", False),
        (PREFIXED, "pfx:_kombu.binding_permanent.orphan-q", False),
    ],
)
def test_binding_pattern(layout: KombuRedisLayout, key: str, matches: bool) -> None:
    # fnmatchcase reads `*` and literal characters as Redis's glob does.
    assert fnmatch.fnmatchcase(key, layout.binding_pattern) is matches


def test_binding_pattern_escapes_glob_characters_of_the_prefix() -> None:
    assert DEFAULT.binding_pattern == "_kombu.binding.*"
    assert KombuRedisLayout(prefix="a*b?[c]\\:").binding_pattern == "a\\*b\\?\\[c\\]\\\\:_kombu.binding.*"


@pytest.mark.parametrize(
    ("layout", "key", "exchange"),
    [
        (DEFAULT, "_kombu.binding.celery", "celery"),
        (DEFAULT, "_kombu.binding.reply.celery.pidbox", "reply.celery.pidbox"),
        (DEFAULT, "_kombu.binding.", None),
        (DEFAULT, "_kombu.binding_permanent.celery", None),
        (DEFAULT, "pfx:_kombu.binding.celery", None),
        (PREFIXED, "pfx:_kombu.binding.celery", "celery"),
        (PREFIXED, "_kombu.binding.celery", None),
    ],
)
def test_exchange_of(layout: KombuRedisLayout, key: str, exchange: str | None) -> None:
    assert layout.exchange_of(key) == exchange


@pytest.mark.parametrize(
    ("member", "expected"),
    [
        # What kombu 5.7 wrote in a test Redis: a send_task queue, the event receiver's, a pidbox node's.
        (f"orphan-q{SEP}{SEP}orphan-q", Binding("ex", "orphan-q", "", "orphan-q")),
        (f"#{SEP}{SEP}celeryev.ca53", Binding("ex", "#", "", "celeryev.ca53")),
        (f"{SEP}{SEP}stub@vm.celery.pidbox", Binding("ex", "", "", "stub@vm.celery.pidbox")),
        (f"a.*{SEP}a\\..*{SEP}topic-q", Binding("ex", "a.*", "a\\..*", "topic-q")),
        ("no separator", None),
        (f"rk{SEP}queue-without-pattern", None),
        (f"rk{SEP}{SEP}", None),  # no queue name
    ],
    ids=["direct", "event-receiver", "pidbox", "topic", "malformed", "two-parts", "empty-queue"],
)
def test_parse_member(member: str, expected: Binding | None) -> None:
    assert DEFAULT.parse_member("ex", member) == expected


def test_parse_member_with_custom_sep() -> None:
    assert KombuRedisLayout(sep="|").parse_member("ex", "rk||q") == Binding("ex", "rk", "", "q")


# --- internal queues -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exchange", "queue", "internal"),
    [
        ("celeryev", "celeryev.ca5304cc-d648-49a2-93b8-87ab0714fcbf", True),
        ("celery.pidbox", "stub@vm.celery.pidbox", True),
        ("reply.celery.pidbox", "80eec097-5f86.reply.celery.pidbox", True),
        ("reply.celery.pidbox", "80eec097-5f86", True),  # the exchange alone says so
        ("myapp.pidbox", "w1@host.myapp.pidbox", True),  # a renamed control_exchange
        ("celeryev", "anything", True),
        ("other", "celeryev.x", True),
        ("celery", "celery", False),
        ("orphan-q", "orphan-q", False),
        ("stt", "stt", False),
        ("celeryevents", "celeryevents", False),
        ("pidbox", "pidbox", False),
        ("x", "my.pidbox.queue", False),
    ],
)
def test_is_internal(exchange: str, queue: str, internal: bool) -> None:
    assert is_internal(Binding(exchange, queue, "", queue)) is internal


def test_user_queues_leaves_out_internal_ones_and_merges_duplicates() -> None:
    bindings = [
        Binding("celeryev", "#", "", "celeryev.1"),
        Binding("celery.pidbox", "", "", "w@h.celery.pidbox"),
        Binding("stt", "stt", "", "stt"),
        Binding("fan", "", "", "stt"),  # one queue bound to two exchanges
        Binding("orphan-q", "orphan-q", "", "orphan-q"),
    ]
    assert user_queues(bindings) == {"stt", "orphan-q"}


# --- URLs -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://localhost:6379/0", RedisTarget("redis", 0, host="localhost", port=6379)),
        ("redis://h", RedisTarget("redis", 0, host="h", port=6379)),
        ("redis://h/", RedisTarget("redis", 0, host="h", port=6379)),
        ("redis://h//", RedisTarget("redis", 0, host="h", port=6379)),
        ("redis://", RedisTarget("redis", 0, host="127.0.0.1", port=6379)),
        ("redis://:s3cret@h:6380/3", RedisTarget("redis", 3, host="h", port=6380, password="s3cret")),
        ("redis://user:p%40ss@h/2", RedisTarget("redis", 2, host="h", port=6379, username="user", password="p@ss")),
        ("REDIS://[::1]:7000/1", RedisTarget("redis", 1, host="::1", port=7000)),
        ("redis://a:1/4;redis://b:2/0", RedisTarget("redis", 4, host="a", port=1)),
        ("rediss://h:6380/1", RedisTarget("rediss", 1, host="h", port=6380, ssl={})),
        (
            "rediss://h/0?ssl_cert_reqs=CERT_REQUIRED&ssl_ca_certs=/ca.pem&ssl_check_hostname=true",
            RedisTarget(
                "rediss",
                0,
                host="h",
                port=6379,
                ssl={"ssl_cert_reqs": "required", "ssl_ca_certs": "/ca.pem", "ssl_check_hostname": True},
            ),
        ),
        (
            "rediss://h/0?ssl_cert_reqs=none",
            RedisTarget("rediss", 0, host="h", port=6379, ssl={"ssl_cert_reqs": "none"}),
        ),
        ("redis+socket:///run/redis/redis.sock", RedisTarget("redis+socket", 0, path="/run/redis/redis.sock")),
        ("redis+socket:///tmp/r.sock?virtual_host=2", RedisTarget("redis+socket", 2, path="/tmp/r.sock")),
        ("redis+socket://:pw@/tmp/r.sock?db=5", RedisTarget("redis+socket", 5, path="/tmp/r.sock", password="pw")),
    ],
)
def test_redis_target_from_url(url: str, expected: RedisTarget) -> None:
    target = RedisTarget.from_url(url)
    assert target == expected
    assert target.password == expected.password  # not part of repr, so check it on its own


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://:topsecret@h/abc", "database must be a number"),
        ("redis://:topsecret@h/-1", "database must be >= 0"),
        ("redis://:topsecret@h:port/0", "malformed port"),
        ("redis+socket://:topsecret@host/x.sock", "absolute path"),
        ("redis+socket://", "absolute path"),
        ("rediss://:topsecret@h/0?ssl_cert_reqs=maybe", "ssl_cert_reqs must be"),
        ("amqp://:topsecret@h//", "not a Redis URL"),
    ],
)
def test_redis_target_rejects_malformed_urls_without_showing_the_password(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        RedisTarget.from_url(url)
    assert "topsecret" not in str(caught.value)


def test_pool_kwargs_bound_every_socket_operation_and_never_retry() -> None:
    kwargs = RedisTarget.from_url("redis://:pw@h:1/2").pool_kwargs(1.5)
    assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 1.5
    assert kwargs["retry"].get_retries() == 0
    assert kwargs["health_check_interval"] > 0
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == ("h", 1, 2, "pw")
    assert "connection_class" not in kwargs


def test_pool_kwargs_pick_the_connection_class() -> None:
    import redis

    unix = RedisTarget.from_url("redis+socket:///tmp/r.sock").pool_kwargs(1.0)
    assert unix["connection_class"] is redis.UnixDomainSocketConnection
    assert unix["path"] == "/tmp/r.sock"
    assert "host" not in unix
    tls = RedisTarget.from_url("rediss://h/0?ssl_cert_reqs=optional").pool_kwargs(1.0)
    assert tls["connection_class"] is redis.SSLConnection
    assert tls["ssl_cert_reqs"] == "optional"


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("redis://h", "redis"),
        ("RedisS://h", "rediss"),
        ("redis+socket:///x", "redis+socket"),
        ("amqp://h//", "amqp"),
        ("sqs://;redis://h", "sqs"),
    ],
)
def test_broker_scheme(url: str, scheme: str) -> None:
    assert broker_scheme(url) == scheme


@pytest.mark.parametrize("url", ["", "localhost:6379", "://h", ":topsecret@h"])
def test_broker_scheme_rejects_urls_without_one(url: str) -> None:
    with pytest.raises(ConfigError, match="has no scheme") as caught:
        broker_scheme(url)
    assert "topsecret" not in str(caught.value)


# --- the factory (builds a pool; a pool connects only on first use, so no socket is opened here) -----------


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:1/0", "rediss://127.0.0.1:1/0", "redis+socket:///nonexistent/redis.sock"]
)
def test_factory_builds_a_redis_inspector(url: str) -> None:
    inspector = broker_inspector(url, {"global_keyprefix": "pfx:"}, 1.0)
    try:
        assert isinstance(inspector, RedisBrokerInspector)
        assert inspector.layout.prefix == "pfx:"
        assert inspector.timeout == 1.0
    finally:
        inspector.close()


@pytest.mark.parametrize("url", ["amqp://guest:topsecret@rabbit:5672//", "pyamqp://h//", "amqps://h//"])
def test_factory_gives_the_amqp_inspector_without_connecting(url: str) -> None:
    from dashboard.services.broker.amqp import AmqpBrokerInspector

    inspector = broker_inspector(url, {}, 1.0)
    try:
        assert isinstance(inspector, AmqpBrokerInspector)
        assert "topsecret" not in repr(inspector)
    finally:
        inspector.close()


@pytest.mark.parametrize(
    ("url", "scheme"), [("sqs://k:topsecret@", "sqs"), ("sentinel://h:26379", "sentinel"), ("memory://", "memory")]
)
def test_factory_rejects_other_transports(url: str, scheme: str) -> None:
    with pytest.raises(ConfigError, match=f"cannot inspect queues on a '{scheme}' broker") as caught:
        broker_inspector(url, {}, 1.0)
    assert "supported: redis://, rediss://, redis+socket://, amqp:// and amqps://" in str(caught.value)
    assert "topsecret" not in str(caught.value)


@pytest.mark.parametrize("timeout", [0, -1.0])
def test_factory_rejects_a_timeout_that_is_not_positive(timeout: float) -> None:
    with pytest.raises(ConfigError, match="timeout must be > 0"):
        broker_inspector("redis://h", {}, timeout)


def test_factory_rejects_malformed_transport_options() -> None:
    with pytest.raises(ConfigError, match="priority_steps"):
        broker_inspector("redis://h", {"priority_steps": "0,3"}, 1.0)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:topsecret@h:6379/0", "redis://:********@h:6379/0"),
        ("redis://:topsecret@h:port/0", "redis://:********@h:port/0"),  # mask_url's urlsplit rejects the port
        ("redis://h/0;redis://:topsecret@b/0", "redis://h/0"),
        ("user:topsecret@h:6379", "********@h:6379"),
        ("redis+socket://:topsecret@/tmp/r.sock", "redis+socket://:********@/tmp/r.sock"),
    ],
)
def test_shown_url_masks_the_password(url: str, shown: str) -> None:
    assert shown_url(url) == shown


def test_the_workers_a_redis_broker_knows_come_from_their_remote_control_bindings() -> None:
    from dashboard.model.kombu import pidbox_hosts

    bindings = [
        Binding("celery.pidbox", "", "", "celery@a.celery.pidbox"),
        Binding("celery.pidbox", "", "", "stub@b.example.celery.pidbox"),
        Binding("reply.celery.pidbox", "x", "", "1c2d.reply.celery.pidbox"),  # a client's reply queue
        Binding("llm", "llm", "", "llm"),
        Binding("celery.pidbox", "", "", ".celery.pidbox"),  # malformed: no hostname
    ]

    assert pidbox_hosts(bindings) == {"celery@a", "stub@b.example"}
    assert pidbox_hosts(bindings, control_exchange="other") == set()
