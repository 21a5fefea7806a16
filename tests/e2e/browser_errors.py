"""Record what went wrong inside the page: uncaught exceptions and console errors, to assert a clean run."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from playwright.sync_api import ConsoleMessage, Error, Page


def status_messages(status: int) -> tuple[str, ...]:
    """Regexes for the console errors an expected HTTP error response causes.

    Chromium logs "Failed to load resource: ... status of 422 (...)" for any 4xx/5xx. htmx adds "Response Status
    Error Code 503 from /dispatch" for the statuses base.html's responseHandling marks as errors; not for 409 and
    422, which the forms expect (a test allowing 422 fails if htmx logs it).
    """
    chromium = rf"Failed to load resource: .*status of {status}\b"
    return (chromium,) if status in (409, 422) else (chromium, rf"Response Status Error Code {status}\b")


@dataclass
class BrowserErrors:
    """Page errors (uncaught exceptions) and console errors seen by one page since it was attached."""

    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> BrowserErrors:
        """Start recording `page`'s errors."""
        page.on("pageerror", self._on_page_error)
        page.on("console", self._on_console)
        return self

    def _on_page_error(self, error: Error) -> None:
        self.page_errors.append(f"{error.name}: {error.message}\n{error.stack or ''}".strip())

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            where = message.location.get("url", "")
            self.console_errors.append(f"{message.text}" + (f" ({where})" if where else ""))

    def unexpected_console_errors(self, allow: Iterable[str] = ()) -> list[str]:
        """Console errors matching none of the `allow` regexes."""
        patterns = [re.compile(p) for p in allow]
        return [m for m in self.console_errors if not any(p.search(m) for p in patterns)]

    def assert_clean(self, *, allow_status: Iterable[int] = (), allow_console: Iterable[str] = ()) -> None:
        """Fail on any page error, and on console errors other than those of the expected HTTP statuses."""
        allowed = [*allow_console, *(p for status in allow_status for p in status_messages(status))]
        problems = [f"page error: {e}" for e in self.page_errors]
        problems += [f"console error: {e}" for e in self.unexpected_console_errors(allowed)]
        assert not problems, "JavaScript errors in the page:\n" + "\n".join(problems)
