"""dispatch-dashboard: dispatch Celery tasks by name and watch where they go. Nothing starts at import.

The package root stays light (`dashboard.model` must import without Flask or Celery): `create_app` is imported
from the composition root, dashboard/app.py, on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module 'dashboard' has no attribute {name!r}")
