"""A stand-alone Celery worker with explicitly named fake tasks; never imports dashboard."""

from __future__ import annotations

from worker_stub.app import app

__all__ = ["app"]
