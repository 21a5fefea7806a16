"""Config parsing: the TOML contract, environment overrides, and one-line errors naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from dashboard.config import Config, config_from_mapping, load_config
from dashboard.exceptions import ConfigError
from dashboard.resources import sample_config

CONTRACT_EXAMPLE = """
broker_url = "redis://127.0.0.1:6379/0"        # env CELERY_BROKER_URL overrides
result_backend = "redis://127.0.0.1:6379/1"    # optional; env CELERY_RESULT_BACKEND overrides

[routes]                 # the API's mirrored task_routes: exact name or glob -> queue
"worker.tasks.stt.*" = "stt"
"worker.tasks.llm.*" = "llm"
"worker.tasks.link.*" = { queue = "default" }   # a table form is accepted too, as in Celery

[tasks."worker.tasks.llm.summarize_note"]      # the task catalog: names as constants, typed params
description = "Summarize a note"
params = [ { name = "note_id", type = "str", required = true },
           { name = "max_words", type = "int", default = 120 } ]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dispatch.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_contract_example_parses(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, CONTRACT_EXAMPLE), {})
    assert config.broker_url == "redis://127.0.0.1:6379/0"
    assert config.result_backend == "redis://127.0.0.1:6379/1"
    assert list(config.routes) == ["worker.tasks.stt.*", "worker.tasks.llm.*", "worker.tasks.link.*"]
    assert config.routes["worker.tasks.stt.*"] == {"queue": "stt"}
    assert config.routes["worker.tasks.link.*"] == {"queue": "default"}
    spec = config.catalog.get("worker.tasks.llm.summarize_note")
    assert spec is not None and spec.description == "Summarize a note"
    assert [(p.name, p.type, p.required, p.default) for p in spec.params][1] == ("max_words", "int", False, 120)
    assert config.task_default_queue == "celery"
    assert config.source == str(tmp_path / "dispatch.toml")


def test_environment_overrides_broker_and_backend(tmp_path: Path) -> None:
    env = {"CELERY_BROKER_URL": "redis://other:1/2", "CELERY_RESULT_BACKEND": "redis://other:1/3"}
    config = load_config(write(tmp_path, CONTRACT_EXAMPLE), env)
    assert (config.broker_url, config.result_backend) == ("redis://other:1/2", "redis://other:1/3")


def test_dashboard_config_env_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, CONTRACT_EXAMPLE)
    assert load_config(None, {"DASHBOARD_CONFIG": str(path)}).source == str(path)


def test_sample_config_loads() -> None:
    config = load_config(sample_config(), {})
    assert len(config.catalog) == 6  # the five stub tasks and the deliberately misrouted translate
    assert config.task_default_queue == "default"


def test_no_config_at_all_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="--config FILE"):
        load_config(None, {})


def test_client_app_alone_needs_no_file() -> None:
    config = load_config(None, {}, client_app="api.celery_client:celery_app")
    assert config.client_app == "api.celery_client:celery_app" and len(config.catalog) == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("broker_url = [", "invalid TOML"),
        ("broker_url = 3", "broker_url must be a string"),
        ("brokr_url = 'x'", "unknown key(s) brokr_url"),
        ("[routes]\n'a.*' = 3", "route 'a.*': must be a queue name"),
        ("[routes]\n'a.*' = ''", "queue name is empty"),
        ("[routes]\n'a.*' = { routing_key = 'x' }", "needs queue"),
        ("[routes]\n'a.*' = { queue = 'q', colour = 'red' }", "unknown key(s) colour"),
        ("[tasks.'has space']\n", "no spaces"),
        ("[tasks.'a.b']\nparams = [{ name = 'x', type = 'date' }]", "type must be one of"),
        ("[tasks.'a.b']\nparams = [{ name = '1x' }]", "name must be a Python identifier"),
        ("[tasks.'a.b']\nparams = [{ name = 'x', type = 'int', default = 'one' }]", "default must be a whole number"),
        ("[tasks.'a.b']\nparams = [{ name = 'x', required = true, default = 1, type = 'int' }]",
         "cannot have a default"),
        ("[tasks.'a.b']\nparams = [{ name = 'x' }, { name = 'x' }]", "appears twice"),
        ("[tasks.'a.b']\ncolour = 1", "unknown key(s) colour"),
        ("[monitor]\ninspect_interval = -1", "inspect_interval must be"),
        ("[monitor]\nmax_tasks = 0", "max_tasks must be"),
        ("broker_timeout = 0", "broker_timeout must be"),
        ("trusted_proxies = -1", "trusted_proxies must be"),
        ("[audit]\nretention_days = -1", "retention_days must be"),
        ("[audit]\nretention_days = 'a week'", "retention_days must be"),
        ("[audit]\nkeep = 1", "unknown key(s) keep"),
        ("trusted_proxies = 6", "trusted_proxies must be"),
        ("trusted_proxies = true", "trusted_proxies must be"),
        ("trusted_proxies = '1'", "trusted_proxies must be"),
    ],
)
def test_malformed_file_is_one_line_naming_file_and_problem(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_audit_retention_is_off_unless_set(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, ""), {}).audit_retention_days is None
    assert load_config(write(tmp_path, "[audit]\nretention_days = 0"), {}).audit_retention_days is None
    assert load_config(write(tmp_path, "[audit]\nretention_days = 90"), {}).audit_retention_days == 90.0


def test_trusted_proxies_default_to_none_and_are_read(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, ""), {}).trusted_proxies == 0
    assert load_config(write(tmp_path, "trusted_proxies = 2"), {}).trusted_proxies == 2


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.toml: file not found"):
        load_config(tmp_path / "nope.toml", {})


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path, {})


def test_monitor_settings() -> None:
    config = config_from_mapping({"monitor": {"inspect_interval": 1, "alert_grace": 0, "max_tasks": 50}})
    assert (config.monitor.inspect_interval, config.monitor.alert_grace, config.monitor.max_tasks) == (1.0, 0.0, 50)
    assert Config().monitor.max_tasks == 100_000


def test_the_server_table_and_its_environment_override() -> None:
    config = config_from_mapping({"server": {"allowed_hosts": ["Dash.Example.com", ".ops.example"],
                                             "max_websockets": 200, "max_websockets_per_client": 5,
                                             "request_timeout": 4}})
    assert config.server.allowed_hosts == ("dash.example.com", ".ops.example")
    assert (config.server.max_websockets, config.server.max_websockets_per_client) == (200, 5)
    assert config.server.request_timeout == 4.0
    assert config_from_mapping({}).server.allowed_hosts is None  # the default: loopback (+ the served address)

    overridden = config_from_mapping({"server": {"allowed_hosts": ["a.example"]}},
                                     {"DASHBOARD_ALLOWED_HOSTS": " b.example, c.example ,"})
    assert overridden.server.allowed_hosts == ("b.example", "c.example")


@pytest.mark.parametrize(
    ("server", "problem"),
    [
        ({"allowed_hosts": "dash.example"}, "allowed_hosts must be a list"),
        ({"allowed_hosts": [""]}, "allowed_hosts must be a list"),
        ({"max_websockets": 0}, "max_websockets must be a whole number"),
        ({"max_websockets_per_client": True}, "max_websockets_per_client must be a whole number"),
        ({"request_timeout": 0.1}, "request_timeout must be a number"),
        ({"threads": 4}, "unknown key(s) threads"),
    ],
)
def test_bad_server_tables_are_clear_errors(server: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        config_from_mapping({"server": server})


def test_serve_allows_its_own_address_by_default() -> None:
    from dashboard.cli import with_default_hosts

    config = with_default_hosts(config_from_mapping({}), "10.1.2.3")
    assert config.server.allowed_hosts is not None
    assert {"localhost", "127.0.0.1", "10.1.2.3"} <= set(config.server.allowed_hosts)
    kept = with_default_hosts(config_from_mapping({"server": {"allowed_hosts": ["x.example"]}}), "10.1.2.3")
    assert kept.server.allowed_hosts == ("x.example",)
