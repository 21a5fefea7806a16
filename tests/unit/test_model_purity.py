"""Every module under dashboard/model imports only the standard library (and dashboard itself)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "dashboard" / "model"


def model_modules() -> list[str]:
    """Dotted names of every module and package under dashboard/model, found on disk (nothing imported)."""
    names = []
    for path in sorted(MODEL_DIR.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


# Imported through the real `dashboard` package, as the app does: a heavy import in the package
# root would drag Flask or Celery into every model user, and this catches that too.
PROBE = """
import importlib, json, sys
before = set(sys.modules)
importlib.import_module(sys.argv[1])
loaded = {name.split(".")[0] for name in set(sys.modules) - before}
# sysconfig and multiprocessing add these stdlib modules, which stdlib_module_names does not list.
stdlib_extras = {n for n in loaded if n.startswith("_sysconfigdata_") or n == "__mp_main__"}
print(json.dumps(sorted(loaded - set(sys.stdlib_module_names) - stdlib_extras - {"dashboard"})))
"""


def test_all_model_modules_are_found() -> None:
    modules = model_modules()
    assert {"dashboard.model", "dashboard.model.routing", "dashboard.model.alerts"} <= set(modules)
    assert "dashboard.model.state" in modules


@pytest.mark.parametrize("module", model_modules())
def test_model_module_imports_only_the_standard_library(module: str) -> None:
    # A fresh interpreter per module: one already imported here would hide what it pulls in.
    result = subprocess.run(
        [sys.executable, "-c", PROBE, module],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [], f"{module} loads non-stdlib packages"
