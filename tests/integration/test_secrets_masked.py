"""No secret in any output: a live dashboard on a Redis that needs a password, scanned page by page.

The broker and backend URLs carry the password. Every page, API answer, websocket snapshot and error body,
before and after Redis is killed, the server's own log, and check-routes' output must show it masked, never
in clear (nor percent- or JSON-encoded). The URL map of a fresh app lists the GET routes, so a new page is
scanned without anyone adding it here.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from dashboard import create_app
from dashboard.config import config_from_mapping
from dashboard.services.processes import CeleryWorker, ProcessError, RedisServer
from dashboard.web.context import services
from tests.support.http import WebSocketClient
from tests.support.live_server import (
    REPO_ROOT,
    SCRUBBED_ENV,
    LiveServer,
    LiveServerError,
    dashboard_command,
    dashboard_config,
    start_live_server,
    toml_text,
)
from tests.support.processes import started
from tests.support.waits import wait_until

PASSWORD = "S3cretPassw0rd"
WRONG_PASSWORD = "Wr0ngPassw0rdX"
SECRETS = (PASSWORD, WRONG_PASSWORD)
HTTP_TIMEOUT = 15.0
WAIT_SECONDS = 20.0
POLL = 0.1
SUMMARIZE = "worker.tasks.llm.summarize_note"
FAIL = "worker.tasks.demo.fail"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def encodings(secret: str) -> set[str]:
    """The secret as it could appear in text: plain, percent-encoded, JSON-escaped."""
    return {secret, urllib.parse.quote(secret, safe=""), json.dumps(secret)[1:-1]}


def leaks(text: str) -> list[str]:
    return [form for secret in SECRETS for form in encodings(secret) if form in text]


@dataclass
class Scan:
    """Everything fetched, by label, so a failure names where the secret showed up."""

    outputs: dict[str, str] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)

    def add(self, label: str, status: int, text: str) -> str:
        self.outputs[label] = text
        self.statuses[label] = status
        return text

    def assert_clean(self) -> None:
        found = {label: leaks(text) for label, text in self.outputs.items() if leaks(text)}
        assert not found, "the password leaked in: " + ", ".join(
            f"{label} ({text_around(self.outputs[label], found[label][0])})" for label in found
        )


def text_around(text: str, needle: str, width: int = 80) -> str:
    at = text.find(needle)
    return text[max(0, at - width): at + len(needle) + width].replace("\n", "⏎")


# --- servers -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secret_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this module's own that requires PASSWORD.

    RedisServer cannot be started with ["--requirepass", ...] in extra_args: its readiness probe PINGs without
    a password and times out. So start it open, then turn the password on before anything else connects.
    """
    directory = tmp_path_factory.mktemp("secret-redis")
    server = RedisServer(directory=directory, log_path=directory / "redis.log")
    try:
        server.start()
    except ProcessError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        admin = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2, socket_connect_timeout=2)
        admin.config_set("requirepass", PASSWORD)
        admin.close()
        check = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2)
        with pytest.raises(redis.AuthenticationError):
            check.ping()
        check.close()
        yield server
    finally:
        server.stop()


def secret_url(server: RedisServer, db: int, password: str = PASSWORD) -> str:
    return f"redis://:{password}@127.0.0.1:{server.port}/{db}"


@pytest.fixture(scope="module")
def secret_worker(secret_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CeleryWorker]:
    """A stub worker on the password Redis, so tasks run, fail, and workers show up."""
    with started(CeleryWorker(
        secret_url(secret_redis, 0), backend_url=secret_url(secret_redis, 1), name="secrets",
        queues=("stt", "llm", "default"), log_path=tmp_path_factory.mktemp("secret-worker") / "worker.log",
        cwd=REPO_ROOT, pythonpath=[REPO_ROOT],
    )) as worker:
        yield worker


@pytest.fixture(scope="module")
def server(
    secret_redis: RedisServer, secret_worker: CeleryWorker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    config = dashboard_config(secret_url(secret_redis, 0), secret_url(secret_redis, 1), audit={"path": ""})
    try:
        live = start_live_server(config, tmp_path_factory.mktemp("secret-dashboard"), name="secrets")
    except LiveServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield live
    finally:
        live.stop()


# --- HTTP ----------------------------------------------------------------------------------------------


def fetch(server: LiveServer, method: str, path: str, body: bytes | None = None,
          content_type: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(server.url + path, data=body, method=method)
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with NO_PROXY.open(request, timeout=HTTP_TIMEOUT) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def get_json(server: LiveServer, path: str) -> Any:
    status, text = fetch(server, "GET", path)
    assert status == 200, f"{path}: {status} {text[:300]}"
    return json.loads(text)


def post_json(server: LiveServer, scan: Scan, label: str, body: Any) -> tuple[int, Any]:
    status, text = fetch(server, "POST", "/api/dispatch", json.dumps(body).encode(), "application/json")
    scan.add(label, status, text)
    return status, json.loads(text)


def wait_on(what: str, check: Any, timeout: float = WAIT_SECONDS) -> Any:
    return wait_until(check, timeout, what, interval=POLL)


def get_routes(task_id: str) -> list[str]:
    """Every GET route of a fresh app (websockets and static files aside), with real sample values."""
    app = create_app(config_from_mapping({"broker_url": "redis://127.0.0.1:1/0", "audit": {"path": ""}}),
                     live=False)
    try:
        adapter = app.url_map.bind("localhost")
        samples = {"task_id": task_id, "queue": "llm", "filename": "app.css"}
        paths = []
        for rule in app.url_map.iter_rules():
            if rule.endpoint == "static" or rule.websocket or "GET" not in (rule.methods or ()):
                continue
            paths.append(adapter.build(rule.endpoint, {a: samples.get(a, "x") for a in rule.arguments}))
        return sorted(paths)
    finally:
        rt = services(app)
        rt.monitor.stop()
        rt.client.close()


EXTRA_GETS = [
    "/tasks?state=FAILURE",
    "/tasks?name=worker.tasks&limit=5",
    "/tasks?state=bogus",  # a 400 page
    f"/dispatch/preview?name={SUMMARIZE}",
    "/dispatch/preview?form_id=dispatch-raw&name=worker.tasks.x&opt.queue=elsewhere",
    "/api/tasks?limit=1000",
    "/api/tasks?state=nope",
    "/api/tasks/no-such-task",
    "/tasks/no-such-task",
    "/static/app.js",
    "/no-such-page",
]


def scan_everything(server: LiveServer, scan: Scan, prefix: str, task_ids: list[str]) -> None:
    paths = sorted(set(get_routes(task_ids[0]) + EXTRA_GETS + [f"/tasks/{t}" for t in task_ids]
                       + [f"/api/tasks/{t}" for t in task_ids]))
    for path in paths:
        status, text = fetch(server, "GET", path)
        scan.add(f"{prefix} GET {path}", status, text)
    for view in ("status", "tasks", "task", "workers", "routing"):
        message = first_ws_message(server, f"/ws/ui?view={view}&id={task_ids[0]}")
        scan.add(f"{prefix} ws /ws/ui?view={view}", 101, message)
    scan.add(f"{prefix} ws /ws/events", 101, first_ws_message(server, "/ws/events?tasks=1000"))
    form = urllib.parse.urlencode({"form_id": "dispatch-raw", "name": "worker.tasks.nobody.home",
                                   "args": "[1]", "opt.queue": f"nobody-{uuid.uuid4().hex[:6]}", "force": "1"})
    status, text = fetch(server, "POST", "/dispatch", form.encode(), "application/x-www-form-urlencoded")
    scan.add(f"{prefix} POST /dispatch", status, text)
    status, text = fetch(server, "POST", "/dispatch", b"form_id=dispatch-raw&name=has+space",
                         "application/x-www-form-urlencoded")
    scan.add(f"{prefix} POST /dispatch (invalid)", status, text)
    status, text = fetch(server, "POST", "/routing/add-consumer", b"queue=llm&worker=nobody@x&confirm=1",
                         "application/x-www-form-urlencoded")
    scan.add(f"{prefix} POST /routing/add-consumer", status, text)
    status, text = fetch(server, "POST", "/api/queues/llm/consumers", b'{"worker": "nobody@x"}', "application/json")
    scan.add(f"{prefix} POST /api/queues/llm/consumers", status, text)
    post_json(server, scan, f"{prefix} POST /api/dispatch (invalid)", {"name": SUMMARIZE, "options": {"eta": "x"}})


def first_ws_message(server: LiveServer, path: str) -> str:
    ws = WebSocketClient.connect(server.url.replace("http://", "ws://") + path)
    try:
        message = ws.receive(timeout=HTTP_TIMEOUT)
    finally:
        ws.close()
    assert message is not None, f"no first message on {path}"
    return message if isinstance(message, str) else message.decode("utf-8", "replace")


# --- the tests (in file order: the outage test kills Redis) ---------------------------------------------


@pytest.fixture(scope="module")
def task_ids(server: LiveServer, secret_worker: CeleryWorker) -> list[str]:
    """A task that succeeds and one that fails, both finished and seen by the dashboard."""
    # The event stream starts on the first request and subscribes lazily: events sent before are lost.
    wait_on("the event stream to be live", lambda: get_json(server, "/api/status").get("broker") == "live")
    scan = Scan()
    ids = []
    for label, body in (("ok", {"name": SUMMARIZE, "kwargs": {"note_id": "n1"}}),
                        ("fail", {"name": FAIL, "kwargs": {"message": "boom"}})):
        status, payload = post_json(server, scan, label, body)
        assert status == 202, payload
        ids.append(payload["task_id"])
    scan.assert_clean()
    for task_id, state in zip(ids, ("SUCCESS", "FAILURE"), strict=True):
        wait_on(f"{task_id} to reach {state} on the dashboard",
                 lambda t=task_id, s=state: task_state(server, t) == s)
    return ids


def task_state(server: LiveServer, task_id: str) -> str | None:
    status, text = fetch(server, "GET", f"/api/tasks/{task_id}")
    return json.loads(text).get("state") if status == 200 else None


def test_the_dashboard_works_on_the_password_redis(server: LiveServer, task_ids: list[str]) -> None:
    status = wait_on("the event stream to be live", lambda: get_json(server, "/api/status").get("broker") == "live")
    assert status
    workers = wait_on("the worker to show up", lambda: get_json(server, "/api/workers")["workers"])
    assert any(w.get("hostname", "").startswith("secrets@") for w in workers), workers
    page = fetch(server, "GET", "/")[1]
    assert ":********@127.0.0.1" in page, "the index shows the broker URL, masked"


def test_no_secret_in_any_page_api_or_websocket_while_redis_is_up(server: LiveServer, task_ids: list[str]) -> None:
    wait_on("a routing comparison", lambda: get_json(server, "/api/routing").get("compared_at"))
    scan = Scan()

    scan_everything(server, scan, "up", task_ids)

    scan.assert_clean()
    errors = {label: status for label, status in scan.statuses.items() if status >= 500}
    assert not errors, f"5xx while Redis is up: {errors}"
    assert scan.statuses["up POST /dispatch"] == 200, scan.outputs["up POST /dispatch"][:300]


def run_cli(args: list[str], tmp_path: Path, config: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    config_path = tmp_path / "check.toml"
    config_path.write_text(toml_text(config), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    return subprocess.run([*dashboard_command(), *args, "--config", str(config_path)], capture_output=True,
                          text=True, timeout=60, cwd=REPO_ROOT, env=env, check=False)


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_check_routes_with_a_wrong_password_masks_it(
    secret_redis: RedisServer, tmp_path: Path, as_json: bool
) -> None:
    config = dashboard_config(secret_url(secret_redis, 0, WRONG_PASSWORD), None, audit={"path": ""})

    result = run_cli(["check-routes", "--timeout", "2", *(["--json"] if as_json else [])], tmp_path, config)

    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert not leaks(output), output
    assert ":********@127.0.0.1" in output, output
    assert "Traceback" not in output, output


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_check_routes_with_the_right_password_masks_it(
    secret_redis: RedisServer, secret_worker: CeleryWorker, tmp_path: Path, as_json: bool
) -> None:
    config = dashboard_config(secret_url(secret_redis, 0), secret_url(secret_redis, 1), audit={"path": ""})

    result = run_cli(["check-routes", "--timeout", "3", *(["--json"] if as_json else [])], tmp_path, config)

    output = result.stdout + result.stderr
    assert result.returncode in (0, 1), output  # the sample config routes "translate" nowhere on purpose
    assert not leaks(output), output
    if as_json:
        assert json.loads(result.stdout)["broker"].startswith("redis://:********@127.0.0.1"), output


def test_no_secret_from_a_dashboard_with_the_wrong_password(
    secret_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Redis refuses the password: every error path (events, inspection, dispatch, results) must mask it."""
    config = dashboard_config(secret_url(secret_redis, 0, WRONG_PASSWORD), secret_url(secret_redis, 1, WRONG_PASSWORD),
                              audit={"path": ""})
    try:
        wrong = start_live_server(config, tmp_path_factory.mktemp("wrong-password"), name="wrong")
    except LiveServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        scan = Scan()
        status, payload = post_json(wrong, scan, "wrong POST /api/dispatch", {"name": SUMMARIZE,
                                                                              "kwargs": {"note_id": "x"}})
        assert status == 503, payload
        wait_on("the event stream to report the refusal",
                 lambda: get_json(wrong, "/api/status").get("broker") != "connecting")
        wait_on("the routing service to report the refusal",
                 lambda: (lambda r: r.get("broker_error") or r.get("inspect_error"))(get_json(wrong, "/api/routing")))
        scan_everything(wrong, scan, "wrong", [str(uuid.uuid4())])
        scan.add("wrong server log", 0, wrong.log_path.read_text(encoding="utf-8", errors="replace"))

        scan.assert_clean()
        server_errors = {label: s for label, s in scan.statuses.items() if s >= 500 and s != 503}
        assert not server_errors, f"5xx other than 503 with a refused password: {server_errors}"
    finally:
        wrong.stop()


def test_no_secret_anywhere_after_redis_dies(
    server: LiveServer, secret_redis: RedisServer, task_ids: list[str]
) -> None:
    scan = Scan()
    secret_redis.kill()

    started = time.monotonic()
    body = {"name": SUMMARIZE, "kwargs": {"note_id": "x"}}
    status, payload = post_json(server, scan, "down POST /api/dispatch", body)
    elapsed = time.monotonic() - started
    assert status == 503, payload
    assert "broker" in payload["error"] and ":********@" in payload["error"], payload
    assert elapsed < 8, f"503 took {elapsed:.1f} s"
    wait_on("the event stream to report the outage",
             lambda: get_json(server, "/api/status").get("broker") != "live")
    wait_on("the routing service to report the outage",
             lambda: (lambda r: r.get("broker_error") or r.get("inspect_error"))(get_json(server, "/api/routing")))
    form = urllib.parse.urlencode({"form_id": "dispatch-0", "arg.audio_url": "https://e.x/a.wav"}).encode()
    status, text = fetch(server, "POST", "/dispatch", form, "application/x-www-form-urlencoded")
    scan.add("down POST /dispatch (catalog form)", status, text)
    assert status == 503, text[:300]

    scan_everything(server, scan, "down", task_ids)

    scan.assert_clean()
    server_errors = {label: s for label, s in scan.statuses.items() if s >= 500 and s != 503}
    assert not server_errors, f"5xx other than 503 while Redis is down: {server_errors}"


def test_no_secret_in_the_server_log(server: LiveServer, task_ids: list[str]) -> None:
    log = server.log_path.read_text(encoding="utf-8", errors="replace")

    assert "serving on" in log, log[-2000:]
    assert not leaks(log), text_around(log, PASSWORD)
