"""Response headers every answer carries: a strict CSP without inline script, no framing, no sniffing."""

from __future__ import annotations

from flask import Flask, Response

#: htmx runs with allowEval false and without its injected indicator styles (see base.html), and our own
#: script is a static file: nothing inline is needed. 'self' covers the same-origin ws:// and wss:// sockets.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # same-origin form POSTs carry their Origin; nothing leaks off-site
    "Cross-Origin-Opener-Policy": "same-origin",
}


def register(app: Flask) -> None:
    """Add the headers to every response (not overriding one a view set on purpose)."""

    @app.after_request
    def _security_headers(response: Response) -> Response:
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        if response.mimetype == "text/html":
            response.headers.setdefault("Cache-Control", "no-store")
        return response
