"""The error envelope, for every failure the service can answer with."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, json
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from kpi_service.serving.errors import InvalidKpis, WindowUnavailable

log = logging.getLogger(__name__)

# Sent with every 401 (RFC 9110 requires a challenge): the scheme the service takes.
WWW_AUTHENTICATE = 'Bearer realm="kpi"'


class ApiError(Exception):
    """An answer other than 200, raised anywhere below a view."""

    def __init__(
        self, status: int, message: str, errors: dict[str, list[str]] | None = None, *, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors
        self.retry_after = retry_after  # seconds, sent as Retry-After


def envelope(
    status: int, message: str, errors: dict[str, Any] | None = None, *, extra: dict[str, Any] | None = None
) -> Response:
    """The error body; `extra` adds keys after the envelope's own (the readiness probe's checks)."""
    body: dict[str, Any] = {"metrics": None, "success": False, "message": message}
    if errors:
        body["errors"] = errors
    if extra:
        body.update(extra)
    return Response(json.dumps(body), status=status, mimetype="application/json")


def _flatten(messages: Any) -> dict[str, list[str]]:
    # marshmallow nests schema-level messages under "_schema"; the envelope wants field -> [str].
    if isinstance(messages, list):
        return {"_schema": [str(m) for m in messages]}
    return {field: [str(m) for m in (msgs if isinstance(msgs, list) else [msgs])] for field, msgs in messages.items()}


def init_app(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(error: ApiError) -> Response:
        response = envelope(error.status, error.message, error.errors)
        if error.status == 401:
            response.headers["WWW-Authenticate"] = WWW_AUTHENTICATE
        if error.retry_after is not None:
            response.headers["Retry-After"] = str(error.retry_after)
        return response

    @app.errorhandler(WindowUnavailable)
    def _no_value(error: WindowUnavailable) -> Response:
        return _api_error(ApiError(503, error.message, retry_after=error.retry_after))

    @app.errorhandler(InvalidKpis)
    def _invalid_kpis(error: InvalidKpis) -> Response:
        return envelope(500, error.message)

    @app.errorhandler(ValidationError)
    def _invalid(error: ValidationError) -> Response:
        return envelope(400, "Invalid request parameters.", _flatten(error.messages))

    @app.errorhandler(HTTPException)
    def _http(error: HTTPException) -> Response:
        response = envelope(error.code or 500, error.description or error.name)
        if error.code == 405 and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error")
        return envelope(500, "Internal server error.")
