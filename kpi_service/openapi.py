"""The OpenAPI 3 document of the service, generated from its marshmallow schemas with apispec."""

from __future__ import annotations

from importlib import metadata
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response, jsonify

from kpi_service.config import Settings
from kpi_service.schemas import (
    ErrorSchema,
    HistoryQuerySchema,
    HistoryResponseSchema,
    KpiQuerySchema,
    KpiResponseSchema,
)

OPENAPI_VERSION = "3.0.3"
BEARER = "bearerAuth"

_ERRORS = {
    "400": ("BadRequest", "Bad parameters: unknown, repeated or malformed, `from` after `to`, unknown zone."),
    "401": ("Unauthorized", "Missing, malformed, expired or badly signed token."),
    "404": ("NotFound", "Unknown route."),
    "500": ("InternalError", "Unexpected failure; never a stack trace."),
    "503": (
        "Unavailable",
        "The database is unavailable and no earlier result for the window is cached "
        "(the dashboard then falls back to its own calculation).",
    ),
}

_HEADERS = {
    "Server-Timing": {
        "description": "`db;dur=<ms>` when the SQL ran, `cache;desc=hit|miss|stale`, `app;dur=<ms>`.",
        "schema": {"type": "string"},
    },
    "X-Request-ID": {
        "description": "The caller's X-Request-ID when it is 1-64 of `A-Za-z0-9._:-`, else a generated one.",
        "schema": {"type": "string"},
    },
}


def _version() -> str:
    try:
        return metadata.version("kpi-service")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def build_spec(settings: Settings) -> dict[str, Any]:
    """The document as a dict; parameter defaults are this deployment's settings."""
    spec = APISpec(
        title="kpi-service",
        version=_version(),
        openapi_version=OPENAPI_VERSION,
        plugins=[MarshmallowPlugin()],
        info={"description": "Dashboard KPIs of the used-vehicle dealership application."},
    )
    spec.components.security_scheme(BEARER, {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"})
    spec.components.schema("Error", schema=ErrorSchema)
    spec.components.schema("KpiResponse", schema=KpiResponseSchema)
    spec.components.schema("HistoryResponse", schema=HistoryResponseSchema)
    error_content = {"application/json": {"schema": "Error"}}
    for _status, (name, description) in _ERRORS.items():
        spec.components.response(name, {"description": description, "content": error_content})

    def operation(summary: str, query: type, body: str) -> dict[str, Any]:
        return {
            "summary": summary,
            "security": [{BEARER: []}],
            "parameters": [{"in": "query", "schema": query}],
            "responses": {
                "200": {
                    "description": "The KPIs.",
                    "headers": _HEADERS,
                    "content": {"application/json": {"schema": body}},
                },
                **{status: name for status, (name, _) in _ERRORS.items()},
            },
        }

    spec.path(
        path="/api/kpi", operations={"get": operation("The ten KPIs of one window.", KpiQuerySchema, "KpiResponse")}
    )
    spec.path(
        path="/api/kpi/history",
        operations={
            "get": operation(
                "The ten KPIs of each calendar bucket of a window; a bucket equals /api/kpi for its days.",
                HistoryQuerySchema,
                "HistoryResponse",
            )
        },
    )
    document = spec.to_dict()
    _apply_defaults(document, {"tz": settings.timezone, "aged_days": settings.aged_days})
    return document


def _apply_defaults(document: dict[str, Any], defaults: dict[str, Any]) -> None:
    # The query schemas load a missing parameter as None and fill in the configured default
    # afterwards, so apispec writes `default: null, nullable: true`. A query parameter is never
    # null: it is absent (documented by `required: false`) or has the configured default.
    for path in document["paths"].values():
        for parameter in path["get"]["parameters"]:
            schema = parameter["schema"]
            if "default" in schema and schema["default"] is None:
                del schema["default"]
                schema.pop("nullable", None)
            if parameter["name"] in defaults:
                schema["default"] = defaults[parameter["name"]]


def blueprint(settings: Settings) -> Blueprint:
    """GET /api/openapi.json, without a token: the document describes, it discloses nothing."""
    bp = Blueprint("openapi", __name__)
    document = build_spec(settings)

    @bp.get("/api/openapi.json")
    def openapi_json() -> Response:
        return jsonify(document)

    return bp
