"""`celery -A your.app dashboard`: the entry point Celery discovers, serving with the user's own send-only app."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from dashboard.services.processes import free_port, log_tail

APP_MODULE = '''
from celery import Celery

celery_app = Celery("api", broker="{broker}")
celery_app.conf.task_routes = {{"worker.tasks.llm.*": "llm", "worker.tasks.stt.*": {{"queue": "stt"}}}}
celery_app.conf.task_default_queue = "default"
'''


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 - a local test server
        return response.status, response.read()


def test_celery_dashboard_serves_with_the_apps_routes(broker_url: str, stub_worker: object, tmp_path: Path) -> None:
    (tmp_path / "api_client.py").write_text(APP_MODULE.format(broker=broker_url), encoding="utf-8")
    port = free_port()
    log_path = tmp_path / "celery-dashboard.log"
    celery = Path(sys.executable).with_name("celery")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DASHBOARD_"))}
    env["DASHBOARD_AUDIT_PATH"] = str(tmp_path / "audit.sqlite3")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(celery), "-A", "api_client:celery_app", "dashboard", "--port", str(port), "--server", "werkzeug"],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                status, _ = _get(f"{base}/healthz")
                break
            except OSError:
                assert process.poll() is None, f"celery dashboard exited:\n{log_tail(log_path)}"
                assert time.monotonic() < deadline, f"celery dashboard did not answer:\n{log_tail(log_path)}"
                time.sleep(0.2)
        assert status == 200
        # The API side is the -A app: its routes resolve the queue, and the routing comparison uses them.
        request = urllib.request.Request(
            f"{base}/api/dispatch", data=json.dumps({"name": "worker.tasks.stt.transcribe", "force": True,
                                                     "kwargs": {"audio_url": "a.wav"}}).encode(),
            headers={"Content-Type": "application/json"}, method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            body = json.loads(response.read())
        assert response.status == 202 and body["queue"] == "stt"
        assert body["route"]["pattern"] == "worker.tasks.stt.*"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def test_celery_dashboard_without_an_app_warns(tmp_path: Path) -> None:
    # Once it started against Celery's default app without a word. A taken port makes it stop right after.
    celery = Path(sys.executable).with_name("celery")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DASHBOARD_"))}
    env["DASHBOARD_AUDIT_PATH"] = ""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        result = subprocess.run([str(celery), "dashboard", "--port", str(taken.getsockname()[1])], cwd=tmp_path,
                                env=env, capture_output=True, text=True, timeout=60, check=False)
    assert "WARNING: no app given (-A your.module)" in result.stderr, result.stderr
    assert result.returncode != 0
