"""Regenerate the README's screenshots from the demo setup: `make screenshots` (needs Chromium, like the tests).

Starts its own Redis and stub worker, serves the dashboard with examples/dispatch.toml (which carries one
deliberate routing mismatch), drives Chromium through Playwright and writes docs/screenshots/*.png.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

from dashboard.services.processes import CeleryWorker, RedisServer, free_port, log_tail

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "screenshots"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _post(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our own local server
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        return dict(json.loads(exc.read()))


def _wait(url: str, ok: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310
                if callable(ok) and ok(json.loads(response.read())):
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"screenshots: timed out waiting for {url}")


def _chain(broker_url: str, backend_url: str) -> str:
    """A three-step workflow (a slow step, then a group of two), sent as any Celery client would; the first id."""
    from celery import Celery, chain, group

    app = Celery("screenshots", broker=broker_url, backend=backend_url, set_as_current=False)
    app.conf.task_send_sent_event = True
    try:
        slow = app.signature("worker.tasks.demo.slow", kwargs={"seconds": 2, "steps": 2}, immutable=True,
                             queue="default")
        unfurls = group(app.signature("worker.tasks.link.unfurl", kwargs={"url": f"https://example.com/{n}"},
                                      immutable=True, queue="default") for n in ("a", "b"))
        result = chain(slow, unfurls).apply_async()
        first = result
        while getattr(first, "parent", None) is not None:
            first = first.parent
        return str(first.id)
    finally:
        app.close()


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    chromium = os.environ.get("DASHBOARD_CHROMIUM", "/usr/bin/chromium")
    with tempfile.TemporaryDirectory(prefix="dashboard-shots-") as tmp, \
            RedisServer(directory=Path(tmp)) as redis, \
            CeleryWorker(redis.url(0), backend_url=redis.url(1), queues=("stt", "llm", "default"), name="stub",
                         log_path=Path(tmp) / "worker.log", cwd=ROOT, pythonpath=[ROOT]) as worker:
        port = free_port()
        env = {**os.environ, "CELERY_BROKER_URL": redis.url(0), "CELERY_RESULT_BACKEND": redis.url(1),
               "DASHBOARD_AUDIT_PATH": str(Path(tmp) / "audit.sqlite3")}
        log_path = Path(tmp) / "dashboard.log"
        with log_path.open("wb") as log:
            server = subprocess.Popen(
                [str(Path(sys.executable).with_name("dispatch-dashboard")), "serve", "--config",
                 str(ROOT / "examples" / "dispatch.toml"), "--port", str(port)],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        base = f"http://127.0.0.1:{port}"
        try:
            _wait(f"{base}/api/routing", lambda body: body.get("inspected_at") is not None)
            for body in (
                {"name": "worker.tasks.llm.summarize_note", "kwargs": {"note_id": "n-42", "max_words": 40}},
                {"name": "worker.tasks.stt.transcribe", "kwargs": {"audio_url": "https://example.com/a.wav"}},
                {"name": "worker.tasks.link.unfurl", "kwargs": {"url": "https://example.com/post"}},
                {"name": "worker.tasks.demo.fail", "kwargs": {"message": "boom"}},
                {"name": "worker.tasks.demo.slow", "kwargs": {"seconds": 8, "steps": 8}},
                {"name": "worker.tasks.llm.translate", "kwargs": {"note_id": "n-42"}, "force": True},
                {"name": "worker.tasks.llm.sumarize_note", "kwargs": {"note_id": "n-43"},  # a typo, stranded
                 "options": {"queue": "llm-gpu"}, "force": True},
            ):
                _post(f"{base}/api/dispatch", body)
            _wait(f"{base}/api/alerts", lambda alerts: any(a["kind"] == "orphaned_queue" for a in alerts))
            workflow_id = _chain(redis.url(0), redis.url(1))
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
                page = browser.new_page(viewport={"width": 1440, "height": 900})
                page.goto(f"{base}/")
                form = page.locator("form.dispatch-form").nth(1)
                form.locator('input[name="arg.note_id"]').fill("n-42")
                form.locator("button[type=submit]").click()
                form = page.locator("form.dispatch-form").nth(1)
                form.locator(".sent").wait_for(timeout=10_000)
                form.screenshot(path=str(OUT / "dispatch-form.png"))
                page.goto(f"{base}/tasks")
                page.locator("tr.task").first.wait_for(timeout=10_000)
                page.wait_for_timeout(1500)
                page.screenshot(path=str(OUT / "tasks-live.png"), full_page=False)
                page.goto(f"{base}/routing")
                page.locator('#routing tr[data-status="unregistered"]').first.wait_for(timeout=15_000)
                page.wait_for_timeout(500)
                page.screenshot(path=str(OUT / "routing-mismatch.png"), full_page=True)
                page.locator("#alerts-panel").screenshot(path=str(OUT / "alert.png"))
                page.goto(f"{base}/queues/llm-gpu")
                page.locator("#queue-messages tr.message.unregistered").nth(1).wait_for(timeout=15_000)
                page.screenshot(path=str(OUT / "queue-browser.png"), full_page=True)
                page.goto(f"{base}/tasks/{workflow_id}")
                page.locator("#task-family .node").nth(2).wait_for(timeout=20_000)
                page.wait_for_timeout(500)
                page.screenshot(path=str(OUT / "workflow.png"), full_page=True)
                dark = browser.new_page(viewport={"width": 1440, "height": 900}, color_scheme="dark")
                dark.goto(f"{base}/tasks")
                dark.locator("tr.task").first.wait_for(timeout=10_000)
                dark.wait_for_timeout(1500)
                dark.screenshot(path=str(OUT / "tasks-dark.png"), full_page=False)
                browser.close()
        except BaseException:
            print(log_tail(log_path), file=sys.stderr)
            print(log_tail(worker.log_path), file=sys.stderr)
            raise
        finally:
            server.terminate()
            server.wait(10)
    print(f"screenshots: wrote {', '.join(sorted(p.name for p in OUT.glob('*.png')))} to {OUT}")


if __name__ == "__main__":
    main()
