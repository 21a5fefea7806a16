"""Browser tests: the `e2e` marker, Debian's Chromium for pytest-playwright, live dashboard servers.

Every test here gets the `e2e` marker. Redis, the stub worker and the URLs come from tests/conftest.py.

Fixtures for reuse:
  dashboard_server                 session: `dispatch-dashboard serve` with examples/dispatch.toml on the test Redis
  start_dashboard(config, ...)     module: start more servers with a custom config (mapping or TOML text)
  dashboard_config_for(**over)     session: examples/dispatch.toml as a dict, pointed at the test Redis
  browser_errors                   function: page errors and console errors of `page`; `.assert_clean()`
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

from tests.e2e.browser_errors import BrowserErrors
from tests.support.live_server import (
    ConfigFactory,
    DashboardStarter,
    LiveServer,
    LiveServerError,
    StartDashboard,
    dashboard_config,
    start_live_server,
)

E2E_DIR = Path(__file__).resolve().parent
ENV_CHROMIUM = "DASHBOARD_CHROMIUM"
DEBIAN_CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ACTION_TIMEOUT_MS = 5_000  # page actions (click, fill) and navigations; expect() calls pass their own


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test collected from this directory as `e2e`."""
    for item in items:
        if item.path.is_relative_to(E2E_DIR):
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Attach the log tail of every dashboard server a failed browser test used."""
    report = yield
    if report.failed and item.path.is_relative_to(E2E_DIR):
        for value in getattr(item, "funcargs", {}).values():
            servers = value.servers if isinstance(value, DashboardStarter) else [value]
            for server in servers:
                if isinstance(server, LiveServer):
                    report.sections.append((f"dashboard log {server.log_path}", server.log_tail()))
    return report


def chromium_executable(environ: Mapping[str, str] = os.environ) -> str:
    """$DASHBOARD_CHROMIUM if set, else Debian's /usr/bin/chromium; fail with how to get one."""
    chosen = environ.get(ENV_CHROMIUM, "").strip()
    if chosen:
        path = Path(chosen)
        if not (path.is_file() and os.access(path, os.X_OK)):
            pytest.fail(f"{ENV_CHROMIUM}={chosen} is not an executable file", pytrace=False)
        return str(path)
    if DEBIAN_CHROMIUM.is_file() and os.access(DEBIAN_CHROMIUM, os.X_OK):
        return str(DEBIAN_CHROMIUM)
    pytest.fail(
        f"no Chromium for the browser tests: {DEBIAN_CHROMIUM} is missing and {ENV_CHROMIUM} is not set. "
        f"Run `make system-deps` (installs Debian's chromium as root), or set {ENV_CHROMIUM} to a "
        "Chromium/Chrome binary. (`playwright install` cannot download browsers on these machines.)",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """pytest-playwright's launch options, with our Chromium binary, always headless, and quiet flags."""
    return {
        **browser_type_launch_args,
        "executable_path": chromium_executable(),
        "headless": True,
        "args": list(CHROMIUM_ARGS),
    }


@pytest.fixture
def page(page: Page) -> Page:
    """pytest-playwright's page, with bounded action and navigation timeouts."""
    page.set_default_timeout(ACTION_TIMEOUT_MS)
    page.set_default_navigation_timeout(ACTION_TIMEOUT_MS)
    return page


@pytest.fixture
def browser_errors(page: Page) -> BrowserErrors:
    """Uncaught exceptions and console errors of `page`; call `.assert_clean()` at the end of a test."""
    return BrowserErrors().attach(page)


@pytest.fixture(scope="session")
def dashboard_config_for(broker_url: str, backend_url: str) -> ConfigFactory:
    """`dashboard_config_for(routes={...})`: examples/dispatch.toml as a dict on the test Redis, low intervals."""

    def make(**overrides: Any) -> dict[str, Any]:
        return dashboard_config(broker_url, backend_url, **overrides)

    return make


@pytest.fixture(scope="session")
def dashboard_server(
    dashboard_config_for: ConfigFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """One `dispatch-dashboard serve` subprocess with the sample config, for the whole session."""
    try:
        server = start_live_server(dashboard_config_for(), tmp_path_factory.mktemp("dashboard"))
    except LiveServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def start_dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartDashboard]:
    """`start_dashboard(config, name=None, env=None) -> LiveServer`: config is a mapping or TOML text.

    Build the mapping with `dashboard_config_for(...)` so it points at the test Redis. Servers live until
    the end of the test module.
    """
    starter = DashboardStarter(tmp_path_factory.mktemp("dashboards"))
    try:
        yield starter
    finally:
        starter.stop_all()
