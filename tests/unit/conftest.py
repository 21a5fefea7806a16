"""Fixtures shared by unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask

from dashboard import create_app
from dashboard.config import config_from_mapping
from dashboard.web.context import services


@pytest.fixture
def offline_app() -> Iterator[Flask]:
    """The app with a broker nobody listens on and no audit log; its monitor never started (pages and sessions
    rendered from a state the test feeds)."""
    config = config_from_mapping({"broker_url": "redis://127.0.0.1:1/0", "audit": {"path": ""}})
    built = create_app(config, live=False)
    yield built
    rt = services(built)
    rt.monitor.stop()
    rt.client.close()
