"""Where templates, static files and the sample config live: inside the package when installed from a
wheel, at the top of the checkout otherwise."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """The directory `name` (templates, static, examples), from an installed wheel or the checkout."""
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"dispatch-dashboard is missing its {name}/ directory (looked in {_PACKAGE})")


def sample_config() -> Path:
    """The sample routing config that mirrors worker_stub (used by `dispatch-dashboard demo`)."""
    return resource_dir("examples") / "dispatch.toml"


def stub_worker_root() -> Path | None:
    """The directory holding the demo's stub worker (worker_stub/), which ships with the source checkout only
    (never in the wheel or the dashboard's image); None when this is not a checkout."""
    root = _PACKAGE.parent
    return root if (root / "worker_stub" / "__init__.py").is_file() else None
