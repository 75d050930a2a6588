"""GET /api/kpi/ws: the stream of GET /api/kpi/stream over a WebSocket (flask-sock, that is
simple-websocket, under gunicorn's gthread workers or werkzeug's threaded server).

Everything but the transport is the stream's (stream.open_subscription): the parameters, the
ticket or bearer token, Last-Event-ID, the payloads, the hub and its KPI_MAX_STREAMS cap. What
fails before the upgrade is answered as plain HTTP with the JSON envelope, as the stream does,
plus a 400 for a request that is no WebSocket handshake and a 403 for a browser page of another
origin (cross-site WebSocket hijacking: a browser sends a WebSocket's Origin but enforces no
same-origin rule on it). After the upgrade the server sends text frames, one JSON object each
(events.Event.frame, HEARTBEAT). The close codes and when each is sent: docs/api.md,
"GET /api/kpi/ws" (TOKEN_EXPIRED and GOING_AWAY here; 1008 and 1009 by simple-websocket). The
idle ping matters because a write to a peer gone without closing would succeed for minutes.

Client messages are otherwise read and dropped: the window is fixed per connection. Each
connection holds a server thread, like a stream, and simple-websocket's reader thread.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, current_app, g, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed, Server
from werkzeug.routing import WebsocketMismatch
from wsproto.utilities import LocalProtocolError

from kpi_service.config import ConfigError, Settings, canonical_origin
from kpi_service.live.events import Closed, Subscriber
from kpi_service.web.errors import ApiError, envelope
from kpi_service.web.stream import EXTENSION, StreamState, open_subscription

bp = Blueprint("websocket", __name__, url_prefix="/api/kpi")
sock = Sock()

HEARTBEAT = '{"event":"heartbeat"}'
TOKEN_EXPIRED = 1000
GOING_AWAY = 1001
WEBSOCKET_VERSION = "13"  # RFC 6455, the one version wsproto speaks
CLOSING_WAIT = 2.0  # seconds a client has to answer the server's close frame


class _Doorbell(threading.Event):
    """simple-websocket sets its connection's event when the client sends a message (and _Reader
    when the connection ends). The connection's thread waits on its subscriber, not on the
    socket: this event also wakes it there."""

    ring: Callable[[], None] | None = None

    def set(self) -> None:
        super().set()
        if self.ring is not None:
            self.ring()


class _Reader(threading.Thread):
    """simple-websocket's reader thread of a connection, which runs until the connection ends,
    whichever way: closed by the client, over the size cap (1009), a ping unanswered (1008), a
    socket error. Its last act rings the doorbell, once `connected` is false: simple-websocket
    sets its event on some of those paths before it clears `connected`, not after."""

    def __init__(self, *, target: Callable[[], None]) -> None:
        super().__init__(target=target, daemon=True)
        # The target is the connection's own method (simple_websocket.Base._thread).
        self._doorbell: threading.Event = target.__self__.event  # type: ignore[attr-defined]

    def run(self) -> None:
        try:
            super().run()
        finally:
            self._doorbell.set()


def init_app(app: Flask, settings: Settings) -> None:
    app.config["SOCK_SERVER_OPTIONS"] = {
        # simple-websocket closes with 1008 a client that has not answered the previous ping.
        "ping_interval": settings.ws_idle_timeout,
        "max_message_size": settings.ws_max_message,  # closed with 1009 beyond
        "event_class": _Doorbell,
        "thread_class": _Reader,
    }
    app.register_error_handler(WebsocketMismatch, _mismatch)
    app.register_blueprint(bp)


def _mismatch(error: WebsocketMismatch) -> Response:
    return envelope(400, "GET /api/kpi/ws takes a WebSocket handshake (Upgrade: websocket); no other route does.")


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether a page of `origin` may open the socket: its own server's (Origin's host is Host)
    or a listed one. No Origin at all is a client other than a browser: nothing to hijack."""
    if origin is None:
        return True
    try:
        given = canonical_origin(origin)
        own = canonical_origin(f"{urlsplit(given).scheme}://{host}") if host else None
    except ConfigError:  # "null" (a sandboxed page, a file) or a Host that is no host
        return False
    return given == own or given in allowed


@bp.before_request
def _admit() -> Response | None:
    """Everything that can fail, before the upgrade: answered as plain HTTP."""
    allowed = current_app.extensions["kpi"].settings.ws_allowed_origins
    if not origin_allowed(request.headers.get("Origin"), request.headers.get("Host"), allowed):
        raise ApiError(403, "WebSocket connections from this origin are not allowed (KPI_WS_ALLOWED_ORIGINS).")
    if request.headers.get("Sec-WebSocket-Version") != WEBSOCKET_VERSION or not request.headers.get(
        "Sec-WebSocket-Key"
    ):
        response = envelope(400, "Not a WebSocket handshake of version 13 (Sec-WebSocket-Version, Sec-WebSocket-Key).")
        response.headers["Sec-WebSocket-Version"] = WEBSOCKET_VERSION
        return response
    g.kpi_ws_subscriber = open_subscription()  # served by ws() once upgraded
    return None


@bp.teardown_request
def _release(error: BaseException | None) -> None:
    # Admitted but never served (the handshake itself failed): the slot is given back here.
    subscriber = g.pop("kpi_ws_subscriber", None)
    if subscriber is not None:
        _state().hub.unsubscribe(subscriber)


def _state() -> StreamState:
    return current_app.extensions[EXTENSION]


@sock.route("/ws", bp=bp)
def ws(connection: Server) -> None:
    state = _state()
    subscriber: Subscriber = g.pop("kpi_ws_subscriber")
    connection.event.ring = subscriber.wake
    try:
        _serve(connection, subscriber, state.heartbeat)
    except (ConnectionClosed, LocalProtocolError, OSError):
        pass  # the client went away while a frame was on its way
    finally:
        state.hub.unsubscribe(subscriber)
        _hang_up(connection)


def _hang_up(connection: Server) -> None:
    """The end of the TCP connection, by the server (RFC 6455 7.1.1), once the client has
    answered a close frame of ours (the reader thread ends on it) or CLOSING_WAIT has passed.
    Without it werkzeug would, before it closes the connection, read the client's close frame
    up to an end of stream that the client, waiting for the server's, never sends."""
    connection.thread.join(CLOSING_WAIT)
    with contextlib.suppress(OSError):  # closed already: gunicorn's socket, once its reader ends
        connection.sock.shutdown(socket.SHUT_RDWR)


def _serve(connection: Server, subscriber: Subscriber, heartbeat: float) -> None:
    last_sent = time.monotonic()
    while True:
        if not connection.connected:
            return  # closed by the client, or by simple-websocket (1009, 1008)
        while connection.receive(timeout=0) is not None:
            pass  # nothing a client says changes the stream; read so that it does not pile up
        remaining = subscriber.expires_at - time.time()
        if remaining <= 0:
            connection.close(TOKEN_EXPIRED, "The token expired: reconnect with a new ticket.")
            return
        quiet = time.monotonic() - last_sent
        if quiet >= heartbeat:
            connection.send(HEARTBEAT)
            last_sent = time.monotonic()
            continue
        try:
            event = subscriber.take(min(heartbeat - quiet, remaining))
        except Closed:
            connection.close(GOING_AWAY, "The server is shutting down.")
            return
        if event is not None:  # None: the time is up, or the doorbell rang
            connection.send(event.frame())
            last_sent = time.monotonic()
