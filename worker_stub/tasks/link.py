"""Links: a fake unfurler routed to the `default` queue; it never touches the network."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from worker_stub.app import app

UNFURL = "worker.tasks.link.unfurl"


@app.task(name=UNFURL)  # type: ignore[untyped-decorator]  # celery ships no type hints
def unfurl(url: str) -> dict[str, Any]:
    """Return the URL's host and a title made from its last path segment (or its host)."""
    parts = urlsplit(url)
    host = parts.hostname
    if not parts.scheme or not host:
        raise ValueError(f"not an absolute URL with a host: {url!r}")
    last_segment = next((segment for segment in reversed(parts.path.split("/")) if segment), "")
    title = unquote(last_segment).replace("-", " ").replace("_", " ").strip().capitalize()
    return {"url": url, "host": host, "title": title or host}
