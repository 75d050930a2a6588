"""GET /api/kpi/stream (server-sent events), POST /api/kpi/stream-ticket, and what opening a
stream is whatever its transport (open_subscription; the WebSocket is kpi_service/web/websocket.py).

A stream holds one server thread for as long as it is open (gunicorn's gthread workers, see
gunicorn.conf.py), so each process serves at most KPI_MAX_STREAMS of them, server-sent and
WebSocket together, and answers a 503 with Retry-After beyond that: the remaining threads stay
free for ordinary requests. A stream ends when the client goes away (the next write fails, at
the latest at the next heartbeat), when the token it was opened with expires, and when the
worker is told to stop.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from marshmallow import ValidationError

from kpi_service.config import Settings
from kpi_service.live.events import Closed, Subscriber, format_event_id
from kpi_service.live.hub import Full, Hub
from kpi_service.live.tickets import Grant, TicketStore, TicketsUnavailable
from kpi_service.serving.query import repeated
from kpi_service.serving.responses import Served
from kpi_service.web.auth import verified_claims
from kpi_service.web.errors import ApiError

bp = Blueprint("stream", __name__, url_prefix="/api/kpi")

EXTENSION = "kpi_stream"
# Query parameters of the stream that are not window parameters.
TICKET_PARAM = "ticket"
LAST_EVENT_PARAM = "last_event_id"  # EventSource cannot set Last-Event-ID on a new connection
BAD_TICKET = "Invalid, expired or already used stream ticket."
# How long a client told "too many streams" should wait before trying again (or polling).
RETRY_AFTER_FULL = 10
# The browser's reconnection delay after a dropped connection.
RECONNECT_MS = 3000


@dataclass
class StreamState:
    hub: Hub
    tickets: TicketStore
    heartbeat: float


def init_app(app: Flask, settings: Settings) -> StreamState:
    kpi = app.extensions["kpi"]
    state = StreamState(
        hub=Hub(kpi.service, kpi.cache, kpi.redis, settings.max_streams),
        tickets=TicketStore(kpi.redis),
        heartbeat=settings.stream_heartbeat,
    )
    app.extensions[EXTENSION] = state
    kpi.service.listen = state.hub.listen  # polled windows hear the applier's batches through it too
    app.register_blueprint(bp)
    return state


def _state() -> StreamState:
    return current_app.extensions[EXTENSION]


def _bearer_grant() -> Grant:
    """The verified Authorization header's subject and expiry; 401 through flask-jwt-extended."""
    claims = verified_claims()
    return Grant(subject=str(claims.get("sub")), expires_at=float(claims["exp"]))


def _no_tickets() -> ApiError:
    return ApiError(503, "Stream tickets are unavailable (Redis is down); poll GET /api/kpi instead.", retry_after=30)


@bp.post("/stream-ticket")
def stream_ticket() -> Response:
    """A single-use ticket for one GET /api/kpi/stream, valid 30 s (never past the token)."""
    grant = _bearer_grant()
    try:
        ticket = _state().tickets.issue(grant)
    except TicketsUnavailable:
        raise _no_tickets() from None
    response = jsonify(ticket=ticket.value, expires_in=ticket.expires_in)
    response.headers["Cache-Control"] = "no-store"
    return response


def open_subscription() -> Subscriber:
    """What opening a stream is, whatever its transport, before its first byte: who may (a
    ticket, else the Authorization header), which window (validated as GET /api/kpi does),
    what the client has (Last-Event-ID), and a subscriber of that window holding the current
    value. Raises what the error handlers answer (401, 400, 503); the caller unsubscribes."""
    state = _state()
    args = request.args
    twice = repeated(args)
    if TICKET_PARAM in args:
        if TICKET_PARAM in twice:
            raise ApiError(401, BAD_TICKET)
        try:
            grant = state.tickets.redeem(args[TICKET_PARAM])
        except TicketsUnavailable:
            raise _no_tickets() from None
        if grant is None:
            raise ApiError(401, BAD_TICKET)
    else:
        grant = _bearer_grant()
    if twice:
        raise ValidationError(twice)
    window_args = {k: v for k, v in args.items() if k not in (TICKET_PARAM, LAST_EVENT_PARAM)}
    query = current_app.extensions["kpi"].kpi_schema.load(window_args)
    last_event_id = format_event_id(request.headers.get("Last-Event-ID") or args.get(LAST_EVENT_PARAM))

    try:
        # Subscribed before the current value is read: nothing computed in between is missed.
        subscriber = state.hub.subscribe(query, last_event_id, grant.expires_at)
    except Full:
        raise ApiError(
            503, "Too many streams on this server; retry later or poll GET /api/kpi.", retry_after=RETRY_AFTER_FULL
        ) from None
    except Closed:
        raise ApiError(503, "The server is shutting down.", retry_after=1) from None
    try:
        # The current value, as GET /api/kpi would answer (computing it if nobody has): sent at
        # once unless the client's Last-Event-ID says it has it already.
        served: Served = current_app.extensions["kpi"].service.current(query)
        state.hub.deliver(subscriber.key, served)
    except BaseException:
        state.hub.unsubscribe(subscriber)
        raise
    return subscriber


@bp.get("/stream")
def stream() -> Response:
    state = _state()
    subscriber = open_subscription()
    response = Response(_events(subscriber, state.heartbeat), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"  # a buffering proxy (nginx) would hold events back
    # Runs when the server closes the response: client gone, stream ended, or worker stopping.
    response.call_on_close(lambda: state.hub.unsubscribe(subscriber))
    return response


def _events(subscriber: Subscriber, heartbeat: float) -> Iterator[bytes]:
    yield f"retry: {RECONNECT_MS}\n\n".encode()
    while True:
        remaining = subscriber.expires_at - time.time()
        if remaining <= 0:
            return  # the token expired: the client needs a new one to go on
        try:
            event = subscriber.take(min(heartbeat, remaining))
        except Closed:
            return
        # A comment line keeps proxies from timing the connection out, and a write to a client
        # that went away fails: that is how a closed tab is noticed.
        yield event.encode() if event is not None else b": heartbeat\n\n"
