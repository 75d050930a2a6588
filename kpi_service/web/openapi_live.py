"""The OpenAPI paths of the pushed updates: GET /api/kpi/stream (server-sent events) and
GET /api/kpi/ws (WebSocket), whose bodies a JSON schema alone cannot describe (openapi.py)."""

from __future__ import annotations

from typing import Any

from apispec import APISpec

from kpi_service.serving.query import KpiQuerySchema
from kpi_service.web.openapi_schemas import BEARER, ERRORS, TICKET, StreamTicketSchema

_SSE_EVENT = {
    "type": "object",
    "description": "One server-sent event: `event: kpi` or `unavailable`, `data` the JSON body.",
    "properties": {
        "event": {"type": "string", "enum": ["kpi", "unavailable"]},
        "id": {"type": "string"},
        "data": {"type": "string", "description": "The /api/kpi body (kpi) or the error envelope (unavailable)."},
        "retry": {"type": "integer"},
    },
}


_STREAM_EVENTS = """Server-sent events, one per new result of the window:

    id: <meta.computed_at>
    event: kpi
    data: <the body GET /api/kpi answers, on one line>

The current value is sent at once, unless `Last-Event-ID` (or `last_event_id`) is not older than
it; `: heartbeat` comments fill silences, and `event: unavailable` carries an error envelope. When
the window is recomputed, and when the stream ends: docs/api.md, "GET /api/kpi/stream", in the
service's repository."""


# Any string: a browser sends back whatever id it last saw, and a stream must not fail for it.
_LAST_EVENT_ID = (
    "The id of the last event received (its `meta.computed_at`, an ISO 8601 instant): that value is "
    "not sent again. Any other value, the empty string included, is ignored."
)


def _stream_parameters() -> list[dict[str, Any]]:
    """Of both transports of the stream (a new list each time: apispec resolves it in place)."""
    return [
        {"in": "query", "schema": KpiQuerySchema},
        {
            "in": "header",
            "name": "Last-Event-ID",
            "required": False,
            "description": _LAST_EVENT_ID,
            "schema": {"type": "string"},
        },
        {
            "in": "query",
            "name": "last_event_id",
            "required": False,
            "description": "As Last-Event-ID, for a browser opening a new connection with a new ticket.",
            "schema": {"type": "string"},
        },
    ]


def _stream_unavailable() -> dict[str, Any]:
    return {
        "description": "Too many streams on this server (KPI_MAX_STREAMS, server-sent and WebSocket together; "
        "see Retry-After), tickets unavailable, the server shutting down, or the database unavailable with "
        "nothing cached.",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        "content": {"application/json": {"schema": "Error"}},
    }


def stream_paths(spec: APISpec) -> None:
    spec.components.security_scheme(
        TICKET,
        {
            "type": "apiKey",
            "in": "query",
            "name": "ticket",
            "description": "A single-use ticket from POST /api/kpi/stream-ticket, for EventSource (no headers).",
        },
    )
    spec.components.schema("StreamTicket", schema=StreamTicketSchema)
    spec.path(
        path="/api/kpi/stream-ticket",
        operations={
            "post": {
                "summary": "A single-use ticket, valid 30 s, that opens one stream without an Authorization header.",
                "security": [{BEARER: []}],
                "responses": {
                    "200": {"description": "The ticket.", "content": {"application/json": {"schema": "StreamTicket"}}},
                    "401": "Unauthorized",
                    "503": "Unavailable",
                },
            }
        },
    )
    spec.path(
        path="/api/kpi/stream",
        operations={
            "get": {
                "summary": "The ten KPIs of one window as server-sent events, pushed whenever they are recomputed.",
                "security": [{BEARER: []}, {TICKET: []}],
                "parameters": _stream_parameters(),
                "responses": {
                    "200": {
                        "description": _STREAM_EVENTS,
                        # The schema of one event, as SSE-aware tools (schemathesis) read the stream.
                        "content": {"text/event-stream": {"schema": _SSE_EVENT}},
                    },
                    **{status: name for status, (name, _) in ERRORS.items() if status != "503"},
                    "503": _stream_unavailable(),
                },
            }
        },
    )


_WS_FRAMES = """A WebSocket (RFC 6455) carrying the stream of /api/kpi/stream: the same parameters,
ticket or token, ids and payloads. The handshake needs `Upgrade: websocket`, `Connection: Upgrade`,
`Sec-WebSocket-Key` and `Sec-WebSocket-Version: 13`; anything refused before the upgrade is
answered as plain HTTP with the error envelope. After it the server sends text frames, each one
JSON object (schema `WebSocketFrame`):

    {"event": "kpi", "id": "<meta.computed_at>", "data": <the body GET /api/kpi answers>}
    {"event": "unavailable", "data": <an error envelope>}
    {"event": "heartbeat"}

The first frame is the current value, unless `Last-Event-ID` (or `last_event_id`) is not older
than it. Messages from the client are read and ignored: the window is fixed per connection. The
close codes (1000, 1001, 1008, 1009) and what a client does on each: docs/api.md,
"GET /api/kpi/ws", in the service's repository."""

# One variant per event, so that a generated client types `data` by `event` (a bare "object"
# gives it no fields at all).
_WS_FRAME = {
    "description": "One text frame of GET /api/kpi/ws.",
    "oneOf": [
        {
            "type": "object",
            "required": ["event", "id", "data"],
            "properties": {
                "event": {"type": "string", "enum": ["kpi"]},
                "id": {"type": "string", "description": "The body's meta.computed_at, as SSE's `id:`."},
                "data": {"$ref": "#/components/schemas/KpiResponse"},
            },
        },
        {
            "type": "object",
            "required": ["event", "data"],
            "properties": {
                "event": {"type": "string", "enum": ["unavailable"]},
                "data": {"$ref": "#/components/schemas/Error"},
            },
        },
        {
            "type": "object",
            "required": ["event"],
            "properties": {"event": {"type": "string", "enum": ["heartbeat"]}},
        },
    ],
}


def websocket_path(spec: APISpec) -> None:
    spec.components.schema("WebSocketFrame", _WS_FRAME)
    spec.path(
        path="/api/kpi/ws",
        operations={
            "get": {
                "summary": "The ten KPIs of one window over a WebSocket, pushed whenever they are recomputed.",
                "security": [{BEARER: []}, {TICKET: []}],
                "parameters": [
                    *_stream_parameters(),
                    {
                        "in": "header",
                        "name": "Origin",
                        "required": False,
                        "description": "Sent by browsers. A page may connect from the service's own origin "
                        "(Origin's host is the Host header) or one of KPI_WS_ALLOWED_ORIGINS; without Origin "
                        "(not a browser) any client may.",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "101": {"description": _WS_FRAMES},
                    "400": {
                        "description": "Not a WebSocket handshake (version 13), or bad parameters as for /api/kpi.",
                        "content": {"application/json": {"schema": "Error"}},
                    },
                    "401": "Unauthorized",
                    "403": {
                        "description": "A browser page of an origin that may not connect (cross-site "
                        "WebSocket hijacking).",
                        "content": {"application/json": {"schema": "Error"}},
                    },
                    "404": "NotFound",
                    "500": "InternalError",
                    "503": _stream_unavailable(),
                },
            }
        },
    )
