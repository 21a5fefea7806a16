"""dashboard and worker_stub never import each other: task names are strings on the wire, nothing more.

A fresh interpreter builds the app, dispatches through it and imports every dashboard module, then reports
which `worker_stub` modules it holds (none may appear). A static scan of both packages backs that up.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = REPO_ROOT / "examples" / "dispatch.toml"
CHILD_TIMEOUT = 60.0
SUMMARY_PREFIX = "ISOLATION-SUMMARY "

# Runs in a fresh interpreter; argv: broker URL, backend URL, config file. Prints one JSON summary line.
CHILD = r"""
import importlib, importlib.util, json, pkgutil, sys

broker_url, backend_url, config_path = sys.argv[1:4]

def stub_modules():
    return sorted(n for n in sys.modules if n == "worker_stub" or n.startswith("worker_stub."))

# Where `import worker_stub` would come from, found without importing it (the repo is installed editable).
spec = importlib.util.find_spec("worker_stub")

import dashboard
from dashboard import create_app
from dashboard.config import load_config
from dashboard.web.context import services

config = load_config(config_path, {"CELERY_BROKER_URL": broker_url, "CELERY_RESULT_BACKEND": backend_url})
app = create_app(config)  # live, as served: the first request starts the event monitor too
client = app.test_client()
try:
    dispatched = client.post(
        "/api/dispatch", json={"name": "worker.tasks.link.unfurl", "kwargs": {"url": "https://example.com/x"}}
    )
    pages = {path: client.get(path).status_code for path in ("/api/catalog", "/", "/healthz")}
    after_dispatch = stub_modules()
    for info in pkgutil.walk_packages(dashboard.__path__, "dashboard."):
        importlib.import_module(info.name)
    after_all_imports = stub_modules()
finally:
    services(app).monitor.stop()
    services(app).client.close()

print("ISOLATION-SUMMARY " + json.dumps({
    "dispatch_status": dispatched.status_code,
    "dispatch_body": dispatched.get_json(silent=True),
    "pages": pages,
    "dashboard_file": dashboard.__file__,
    "worker_stub_importable_from": spec.origin if spec is not None else None,
    "worker_stub_after_dispatch": after_dispatch,
    "worker_stub_after_all_imports": after_all_imports,
    "dashboard_modules": sorted(n for n in sys.modules if n == "dashboard" or n.startswith("dashboard.")),
}))
"""


def _child_environment() -> dict[str, str]:
    """The parent's environment without anything that would steer the child's imports or config."""
    steering = ("PYTHONPATH", "PYTHONSTARTUP", "DASHBOARD_CONFIG", "DASHBOARD_CLIENT_APP", "WORKER_STUB_ROUTES")
    environ = {k: v for k, v in os.environ.items() if k not in steering and not k.startswith("CELERY_")}
    environ["PYTHONUNBUFFERED"] = "1"
    return environ


def test_app_dispatches_without_importing_worker_stub(broker_url: str, backend_url: str, tmp_path: Path) -> None:
    # cwd outside the checkout, so sys.path[0] is not the repo: worker_stub is reachable only as installed.
    result = subprocess.run(
        [sys.executable, "-c", CHILD, broker_url, backend_url, str(EXAMPLE_CONFIG)],
        cwd=tmp_path,
        env=_child_environment(),
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=False,
    )

    assert result.returncode == 0, f"child failed ({result.returncode}):\n{result.stderr[-4000:]}"
    lines = [line for line in result.stdout.splitlines() if line.startswith(SUMMARY_PREFIX)]
    assert len(lines) == 1, f"no summary line from the child:\n{result.stdout}\n{result.stderr[-2000:]}"
    summary: dict[str, Any] = json.loads(lines[0][len(SUMMARY_PREFIX) :])
    print(
        f"\nchild: dispatch {summary['dispatch_status']}, pages {summary['pages']}, "
        f"{len(summary['dashboard_modules'])} dashboard modules loaded; "
        f"`import worker_stub` would load {summary['worker_stub_importable_from']}"
    )

    assert Path(summary["dashboard_file"]).is_relative_to(REPO_ROOT), (
        f"the child imported dashboard from {summary['dashboard_file']}, not from this checkout"
    )
    assert summary["dispatch_status"] == 202, f"dispatch in the child: {summary['dispatch_body']}"
    assert summary["dispatch_body"]["queue"] == "default", summary["dispatch_body"]
    assert summary["pages"] == {"/api/catalog": 200, "/": 200, "/healthz": 200}, summary["pages"]
    assert summary["worker_stub_after_dispatch"] == [], (
        f"building the app and dispatching imported {summary['worker_stub_after_dispatch']}"
    )
    assert summary["worker_stub_after_all_imports"] == [], (
        f"importing every dashboard module imported {summary['worker_stub_after_all_imports']}"
    )


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports by statement, plus string literals passed to import_module/__import__."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("dashboard", "worker_stub"), ("worker_stub", "dashboard")],
    ids=["dashboard-never-imports-worker_stub", "worker_stub-never-imports-dashboard"],
)
def test_source_never_imports_the_other_package(package: str, forbidden: str) -> None:
    files = sorted((REPO_ROOT / package).rglob("*.py"))
    assert len(files) >= 3, f"found only {len(files)} files under {package}/; is REPO_ROOT right?"

    offenders = {
        str(path.relative_to(REPO_ROOT)): sorted(name for name in names if name.split(".")[0] == forbidden)
        for path in files
        if (names := _imported_modules(path))
    }
    offenders = {path: names for path, names in offenders.items() if names}

    assert offenders == {}, f"{package} imports {forbidden}: {offenders}"
