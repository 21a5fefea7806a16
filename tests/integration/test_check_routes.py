"""`dispatch-dashboard check-routes` as CI runs it: the venv's console script as a subprocess, a config file in tmp,
a redis-server and a stub `celery worker` of this module's own (so no other test's worker answers its pings).

Exit codes: 0 consistent, 1 mismatch, 2 broker or workers unreachable (and 2 for a usage error such as a missing
config file). Every run has a deadline; the unreachable cases print how long they took (run with `-s`).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dashboard.services.processes import CeleryWorker, ProcessError, RedisServer, free_port
from tests.support.hung_broker import HungBroker
from tests.support.live_server import EXAMPLE_CONFIG, REPO_ROOT, SCRUBBED_ENV, dashboard_command, toml_text
from tests.support.processes import started

TRANSLATE = "worker.tasks.llm.translate"  # the example config's deliberate mismatch: routed to "llm-gpu"
STUB_QUEUES = ("stt", "llm", "default")
CHECK_TIMEOUT = 1.0  # --timeout: on Redis the ping ends once every worker the broker knows has answered
UNREACHABLE_SLACK = 3.0  # interpreter start-up and imports on top of --timeout
RUN_DEADLINE = 30.0  # a hung CLI is killed and the test fails, whatever the case


@dataclass(frozen=True)
class Run:
    """One finished CLI run."""

    code: int
    stdout: str
    stderr: str
    seconds: float

    def json(self) -> dict[str, Any]:
        """Stdout as the --json document."""
        body: dict[str, Any] = json.loads(self.stdout)
        return body


def check_routes(config: Path, *args: str, deadline: float = RUN_DEADLINE) -> Run:
    """`dispatch-dashboard check-routes --config <config> [args]`, its environment free of config overrides."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    argv = [*dashboard_command(), "check-routes", "--config", str(config), *args]
    started = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=config.parent,
                              stdin=subprocess.DEVNULL, timeout=deadline)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(argv)} still running after {deadline:.0f} s (killed); stderr so far:\n"
                    f"{exc.stderr!r}", pytrace=False)
    return Run(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


def example_config() -> dict[str, Any]:
    """examples/dispatch.toml, decoded."""
    return tomllib.loads(EXAMPLE_CONFIG.read_text(encoding="utf-8"))


def write_config(directory: Path, name: str, broker_url: str, base: Mapping[str, Any], **overrides: Any) -> Path:
    """`base` pointed at `broker_url` (no result backend: check-routes never reads results), as TOML."""
    config = {**base, "broker_url": broker_url, **overrides}
    config.pop("result_backend", None)
    path = directory / f"{name}.toml"
    path.write_text(toml_text(config), encoding="utf-8")
    return path


def matching_config() -> dict[str, Any]:
    """examples/dispatch.toml without its deliberate mismatch: it then mirrors worker_stub exactly."""
    config = example_config()
    del config["routes"][TRANSLATE]
    del config["tasks"][TRANSLATE]
    return config


@dataclass(frozen=True)
class Cluster:
    """This module's Redis with one stub worker on it."""

    broker_url: str
    worker: CeleryWorker


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Own redis-server and one stub worker consuming stt, llm and default with the stub's own routes."""
    directory = tmp_path_factory.mktemp("check-routes")
    redis = RedisServer(directory=directory / "redis", log_path=directory / "redis.log")
    worker = CeleryWorker(redis.url(0), backend_url=redis.url(1), name="check-routes", queues=STUB_QUEUES,
                          log_path=directory / "worker.log", cwd=REPO_ROOT, pythonpath=[REPO_ROOT])
    try:
        redis.start()
        worker.start()
        yield Cluster(redis.url(0), worker)
    except ProcessError as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        worker.stop()
        redis.stop()


@pytest.fixture(scope="module")
def empty_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server that no worker uses."""
    directory = tmp_path_factory.mktemp("check-routes-empty")
    with started(RedisServer(directory=directory / "redis", log_path=directory / "redis.log")) as redis:
        yield redis


def test_config_mirroring_the_worker_is_consistent(cluster: Cluster, tmp_path: Path) -> None:
    config = write_config(tmp_path, "matching", cluster.broker_url, matching_config())
    run = check_routes(config, "--timeout", str(CHECK_TIMEOUT))
    print(f"\n[check-routes] consistent run: exit {run.code} in {run.seconds:.2f} s")
    assert run.code == 0, run
    lines = run.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("check-routes: consistent:"), run.stdout
    assert cluster.worker.hostname in lines[0] and str(config) in lines[0]
    assert "Traceback" not in run.stderr

    body = check_routes(config, "--json", "--timeout", str(CHECK_TIMEOUT)).json()
    assert (body["exit_code"], body["consistent"], body["workers"]) == (0, True, [cluster.worker.hostname])
    assert body["mismatches"] == {"tasks": [], "queues": []}
    assert body["report"]["consistent"] is True
    rows = {row["task"]: row for row in body["report"]["tasks"]}
    assert {name: row["api_queue"] for name, row in rows.items()} == {
        "worker.tasks.stt.transcribe": "stt",
        "worker.tasks.llm.summarize_note": "llm",
        "worker.tasks.link.unfurl": "default",
        "worker.tasks.demo.fail": "default",
        "worker.tasks.demo.slow": "default",
        "worker.tasks.demo.sleep": "default",
    }
    assert all(row["registered_on"] == [cluster.worker.hostname] for row in rows.values())


def test_check_routes_stops_once_every_known_worker_answered(cluster: Cluster, tmp_path: Path) -> None:
    # Once it always waited its whole --timeout for pings, however quickly the workers answered.
    config = write_config(tmp_path, "quick", cluster.broker_url, matching_config())

    run = check_routes(config, "--timeout", "20")

    print(f"\n[check-routes] --timeout 20 with one known worker: exit {run.code} in {run.seconds:.2f} s")
    assert run.code == 0, run
    assert run.seconds < 10, "it waited for answers that could not come"


def test_example_config_mismatch_exits_1_in_plain_words(cluster: Cluster, tmp_path: Path) -> None:
    config = write_config(tmp_path, "example", cluster.broker_url, example_config())
    run = check_routes(config, "--timeout", str(CHECK_TIMEOUT))
    assert run.code == 1, run
    lines = run.stdout.splitlines()
    assert lines[0].startswith("check-routes: MISMATCH") and cluster.worker.hostname in lines[0], run.stdout
    assert f"  task {TRANSLATE} -> queue llm-gpu: unregistered" in lines
    assert f"No online worker registers {TRANSLATE!r}" in run.stdout
    assert "No online worker consumes queue 'llm-gpu'" in run.stdout
    assert "summarize_note" not in run.stdout  # only the mismatch is listed
    assert "Traceback" not in run.stderr

    json_run = check_routes(config, "--json", "--timeout", str(CHECK_TIMEOUT))
    assert json_run.code == 1
    body = json_run.json()
    assert (body["exit_code"], body["consistent"]) == (1, False)
    assert body["workers"] == [cluster.worker.hostname]
    tasks = body["mismatches"]["tasks"]
    assert [row["task"] for row in tasks] == [TRANSLATE]
    assert (tasks[0]["api_queue"], tasks[0]["api_pattern"], tasks[0]["status"]) == ("llm-gpu", TRANSLATE,
                                                                                    "unregistered")
    # The worker's own task_routes send it to "llm" by "worker.tasks.llm.*": the exact API route drifts too.
    assert tasks[0]["problems"] == ["unregistered", "orphaned", "drift"] and len(tasks[0]["explanations"]) == 3
    assert tasks[0]["drifting_workers"] == {"llm": [cluster.worker.hostname]}
    assert body["mismatches"]["queues"] == []  # llm-gpu is empty: a problem for the task, not an orphaned queue


def test_broker_where_nothing_listens_exits_2(tmp_path: Path) -> None:
    config = write_config(tmp_path, "refused", f"redis://127.0.0.1:{free_port()}/0", matching_config())
    bound = CHECK_TIMEOUT + UNREACHABLE_SLACK
    run = check_routes(config, "--timeout", str(CHECK_TIMEOUT), deadline=bound + 10)
    print(f"\n[check-routes] refused broker: exit {run.code} in {run.seconds:.2f} s (--timeout {CHECK_TIMEOUT:g})")
    assert run.code == 2, run
    assert run.seconds <= bound
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("check-routes: cannot check:") and "unreachable" in lines[0]

    body = check_routes(config, "--json", "--timeout", str(CHECK_TIMEOUT), deadline=bound + 10).json()
    assert (body["exit_code"], body["consistent"]) == (2, False)
    assert "unreachable" in body["error"] and "mismatches" not in body


@pytest.fixture
def silent_broker() -> Iterator[str]:
    """A redis:// URL whose port accepts TCP connections and never answers (a hung broker)."""
    with HungBroker() as hung:
        yield hung.url(0)


def test_hung_broker_exits_2_within_the_timeout(silent_broker: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, "hung", silent_broker, matching_config(), broker_timeout=8)
    bound = CHECK_TIMEOUT + UNREACHABLE_SLACK
    run = check_routes(config, "--timeout", str(CHECK_TIMEOUT), deadline=bound + 15)
    print(f"\n[check-routes] hung broker (broker_timeout 8): exit {run.code} in {run.seconds:.2f} s "
          f"(--timeout {CHECK_TIMEOUT:g})")
    assert run.code == 2, run
    assert run.seconds <= bound


def test_broker_up_without_workers_exits_2(empty_redis: RedisServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, "no-workers", empty_redis.url(0), matching_config())
    bound = CHECK_TIMEOUT + UNREACHABLE_SLACK
    run = check_routes(config, "--timeout", str(CHECK_TIMEOUT), deadline=bound + 10)
    print(f"\n[check-routes] no worker: exit {run.code} in {run.seconds:.2f} s (--timeout {CHECK_TIMEOUT:g})")
    assert run.code == 2, run
    assert run.seconds <= bound
    assert run.stdout == ""
    assert run.stderr.strip() == (f"check-routes: cannot check: no worker answered a ping on {empty_redis.url(0)} "
                                  f"within {CHECK_TIMEOUT:g}s")


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("missing.toml", None, "file not found"),
        ("invalid.toml", "broker_url = [unclosed\n", "invalid TOML"),
        ("unknown-key.toml", 'brokr_url = "redis://127.0.0.1:1/0"\n', "unknown key(s) brokr_url"),
    ],
)
def test_bad_config_file_is_one_line_error(tmp_path: Path, name: str, content: str | None, expected: str) -> None:
    config = tmp_path / name
    if content is not None:
        config.write_text(content, encoding="utf-8")
    run = check_routes(config, "--timeout", str(CHECK_TIMEOUT))
    assert run.code == 2, run
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("dispatch-dashboard: error:") and expected in lines[0], lines[0]
    assert "Traceback" not in run.stderr
