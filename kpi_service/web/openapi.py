"""The OpenAPI 3 document of the service, generated from its marshmallow schemas with apispec."""

from __future__ import annotations

from importlib import metadata
from typing import Any
from zoneinfo import available_timezones

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response, jsonify

from kpi_service.config import Settings
from kpi_service.serving.query import HistoryQuerySchema, KpiQuerySchema
from kpi_service.web.export import FORMATS
from kpi_service.web.openapi_live import stream_paths, websocket_path
from kpi_service.web.openapi_schemas import (
    BEARER,
    ERRORS,
    ErrorSchema,
    HistoryResponseSchema,
    KpiResponseSchema,
)

OPENAPI_VERSION = "3.0.3"
_HEADERS = {
    "Server-Timing": {
        "description": "`db;dur=<ms>` when the SQL ran, `cache;desc=hit|refresh|miss|stale` (the cache outcome, "
        "docs/clients.md), `app;dur=<ms>`.",
        "schema": {"type": "string"},
    },
    "X-Request-ID": {
        "description": "The caller's X-Request-ID when it is 1-64 of `A-Za-z0-9._:-`, else a generated one.",
        "schema": {"type": "string"},
    },
}


_FORMAT = {
    "in": "query",
    "name": "format",
    "required": False,
    "description": "`csv` for RFC 4180 CSV instead of JSON (as `Accept: text/csv` does); `json` by default.",
    "schema": {"type": "string", "enum": list(FORMATS)},
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
        info={
            "description": "Dashboard KPIs of the used-vehicle dealership application. What each of the ten "
            "numbers means (windows, time zones, rounding, empty sets): `docs/kpis.md` in the service's repository."
        },
    )
    spec.components.security_scheme(BEARER, {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"})
    spec.components.schema("Error", schema=ErrorSchema)
    spec.components.schema("KpiResponse", schema=KpiResponseSchema)
    spec.components.schema("HistoryResponse", schema=HistoryResponseSchema)
    error_content = {"application/json": {"schema": "Error"}}
    for status, (name, description) in ERRORS.items():
        response: dict[str, Any] = {"description": description, "content": error_content}
        if status == "503":
            response["headers"] = {"Retry-After": {"description": "Seconds; when busy.", "schema": {"type": "integer"}}}
        spec.components.response(name, response)

    def operation(summary: str, query: type, body: str, csv: str) -> dict[str, Any]:
        return {
            "summary": summary,
            "security": [{BEARER: []}],
            "parameters": [{"in": "query", "schema": query}, _FORMAT],
            "responses": {
                "200": {
                    "description": "The KPIs: JSON, or with `format=csv` (or an Accept preferring text/csv) "
                    f"RFC 4180 CSV, {csv}, as an attachment (`Content-Disposition` names the window). Errors are "
                    "JSON whatever was asked.",
                    "headers": _HEADERS,
                    "content": {"application/json": {"schema": body}, "text/csv": {"schema": {"type": "string"}}},
                },
                **{status: name for status, (name, _) in ERRORS.items()},
            },
        }

    spec.path(
        path="/api/kpi",
        operations={
            "get": operation(
                "The ten KPIs of one window.",
                KpiQuerySchema,
                "KpiResponse",
                "a header row and one row: the window, its KPIs, and with `compare` the compared window, "
                "its KPIs and each change",
            )
        },
    )
    spec.path(
        path="/api/kpi/history",
        operations={
            "get": operation(
                "The ten KPIs of each calendar bucket of a window; a bucket equals /api/kpi for its days.",
                HistoryQuerySchema,
                "HistoryResponse",
                "a header row and a row per bucket: its first and last day, its KPIs",
            )
        },
    )
    stream_paths(spec)
    websocket_path(spec)
    document = spec.to_dict()
    _apply_defaults(document, {"tz": settings.timezone, "aged_days": settings.aged_days})
    _zones_by_reference(document)
    _bucket_limit(document, settings.max_buckets)
    return document


def _apply_defaults(document: dict[str, Any], defaults: dict[str, Any]) -> None:
    # The query schemas load a missing parameter as None and fill in the configured default
    # afterwards, so apispec writes `default: null, nullable: true`. A query parameter is never
    # null: it is absent (documented by `required: false`) or has the configured default.
    for path in document["paths"].values():
        parameters = [p for operation in path.values() for p in operation.get("parameters", [])]
        for parameter in parameters:
            schema = parameter["schema"]
            if "default" in schema and schema["default"] is None:
                del schema["default"]
                schema.pop("nullable", None)
                if "enum" in schema:  # which apispec extends with the null it allowed
                    schema["enum"] = [value for value in schema["enum"] if value is not None]
            if parameter["name"] in defaults:
                schema["default"] = defaults[parameter["name"]]


def _zones_by_reference(document: dict[str, Any]) -> None:
    # The zones the service knows, listed once as a component rather than in every operation;
    # allOf, because OpenAPI 3.0 ignores a default beside a plain $ref.
    document["components"]["schemas"]["TimeZone"] = {
        "type": "string",
        "enum": sorted(available_timezones()),
        "description": "An IANA time zone name. Also accepted in any other letter case (`europe/berlin`).",
    }
    for path in document["paths"].values():
        for operation in path.values():
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "tz":
                    parameter["schema"] = {
                        "allOf": [{"$ref": "#/components/schemas/TimeZone"}],
                        "default": parameter["schema"]["default"],
                    }


def _bucket_limit(document: dict[str, Any], max_buckets: int) -> None:
    for parameter in document["paths"]["/api/kpi/history"]["get"]["parameters"]:
        if parameter["name"] == "interval":
            parameter["description"] += f" At most {max_buckets} buckets from `from` to `to`."


def blueprint(settings: Settings) -> Blueprint:
    """GET /api/openapi.json, without a token: the document describes, it discloses nothing."""
    bp = Blueprint("openapi", __name__)
    document = build_spec(settings)

    @bp.get("/api/openapi.json")
    def openapi_json() -> Response:
        return jsonify(document)

    return bp
