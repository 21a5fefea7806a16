"""Error translation at the HTTP boundary: JSON for /api, a page otherwise; never a traceback."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, InternalServerError

from ..exceptions import BrokerUnavailable, RoutingError
from ..model.secrets import mask_text

log = logging.getLogger(__name__)

_MESSAGES = {
    404: "Not found.",
    405: "Method not allowed.",
    413: "The request body is too large (at most 1 MiB).",
}


def wants_json() -> bool:
    """True for API and health paths, which always answer JSON."""
    return request.path.startswith("/api/") or request.path in ("/healthz", "/readyz")


def error_response(status: int, message: str) -> tuple[Response | str, int]:
    """The same error as JSON (for the API) or as a small page (for people)."""
    if wants_json():
        return jsonify(error=message), status
    return render_template("pages/error.html", status=status, message=message), status


def register(app: Flask) -> None:
    """Install the handlers on `app`."""

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response | str, int]:
        status = exc.code or 500
        if isinstance(exc, InternalServerError):
            return internal_error(exc)
        message = _MESSAGES.get(status) or exc.description or exc.name
        return error_response(status, message)

    @app.errorhandler(BrokerUnavailable)
    def broker_unavailable(exc: BrokerUnavailable) -> tuple[Response | str, int]:
        return error_response(503, mask_text(str(exc)))

    @app.errorhandler(RoutingError)
    def routing_error(exc: RoutingError) -> tuple[Response | str, int]:
        return error_response(400, mask_text(str(exc)))

    @app.errorhandler(Exception)
    def internal_error(exc: BaseException) -> tuple[Response | str, int]:
        log.exception("unhandled error on %s %s", request.method, request.path, exc_info=exc)
        return error_response(500, "Internal error; the server log has the details.")
