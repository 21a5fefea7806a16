"""`dispatch-dashboard demo` as a person runs it: it comes up, keeps all its state in its own temporary directory
(another run's audit entries never show), and Ctrl-C stops everything cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from dashboard.services.processes import free_port
from tests.support.http import Reply, request
from tests.support.live_server import REPO_ROOT, SCRUBBED_ENV, dashboard_command
from tests.support.waits import wait_until

START_TIMEOUT = 60.0  # Redis, the stub worker and the dashboard
STOP_TIMEOUT = 15.0


class Demo:
    def __init__(self, url: str, log_path: Path) -> None:
        self.url = url
        self.log_path = log_path

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def test_the_demo_keeps_its_state_to_itself_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1")
    env.pop("XDG_STATE_HOME", None)
    port = free_port()
    log_path = tmp_path / "demo.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen([*dashboard_command(), "demo", "--port", str(port)], cwd=REPO_ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
    demo = Demo(f"http://127.0.0.1:{port}", log_path)
    try:
        def live() -> bool:
            assert proc.poll() is None, demo.log_tail()
            try:
                reply = request(demo, "GET", "/readyz", timeout=2)
            except OSError:
                return False
            return reply.status == 200

        wait_until(live, START_TIMEOUT, "the demo ready", demo)
        sent: Reply = request(demo, "POST", "/api/dispatch", {"name": "worker.tasks.llm.summarize_note",
                                                             "kwargs": {"note_id": "demo-1"}})
        assert sent.status == 202, sent.data
        audit = request(demo, "GET", "/api/audit").data
        assert audit["total"] == 1, audit  # this demo's dispatch only
        assert not (home / ".local" / "state" / "dispatch-dashboard").exists(), "state written outside the demo"
        worker_log = re.search(r"demo: worker_stub worker \S+ consuming \S+ \(log: (\S+)\)", demo.log_tail(80))
        assert worker_log and worker_log.group(1).startswith(tempfile.gettempdir()), demo.log_tail()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal reaches the whole foreground group
        try:
            code = proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
            pytest.fail(f"the demo did not stop within {STOP_TIMEOUT} s of Ctrl-C\n{demo.log_tail()}")
    output = log_path.read_text(errors="replace")
    assert "SIGKILL" not in output and "Traceback" not in output, output[-3000:]
    assert "demo: stopping worker and redis" in output
    assert code in (0, -signal.SIGINT, 130), (code, output[-2000:])
