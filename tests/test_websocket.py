"""GET /api/kpi/ws over real sockets, with a real WebSocket client (websockets): the stream's
tickets, parameters, payloads and cap, what is refused before the upgrade, and how the server
closes (1000 token expired, 1001 shutting down, 1008 ping unanswered, 1009 message too big)."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import psycopg
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Response
from websockets.sync.client import ClientConnection
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from kpi_service.live.events import Event
from kpi_service.serving.responses import Served
from kpi_service.web.websocket import origin_allowed
from tests.helpers import (
    APPLYING,
    HOUR,
    SECRET,
    WINDOW,
    insert_listing,
    open_ws,
    ticket,
    today_window,
    token,
    two_listings,
    wait_until,
    ws_url,
)
from tests.servers import start_gunicorn
from tests.sse import Sse, serving

BEARER = "Authorization"


def bearer(value: str | None = None) -> dict[str, str]:
    return {BEARER: f"Bearer {value or token()}"}


def refused(url: str, headers: dict[str, str] | None = None, origin: str | None = None) -> Response:
    """The plain HTTP answer to a handshake the server refuses before the upgrade."""
    with pytest.raises(InvalidStatus) as info:
        open_ws(url, headers, origin).close()
    return info.value.response


def envelope(response: Response) -> dict:
    assert response.headers["Content-Type"] == "application/json"
    body = json.loads(response.body)
    assert body["success"] is False and body["metrics"] is None and body["message"]
    return body


def frame(connection: ClientConnection, timeout: float = 10) -> dict:
    return json.loads(connection.recv(timeout=timeout))


def close_code(connection: ClientConnection, seconds: float) -> int:
    """The code of the close frame the server sends within `seconds`, frames before it skipped."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            connection.recv(timeout=max(0.01, deadline - time.monotonic()))
        except ConnectionClosed as closed:
            assert closed.rcvd is not None, "closed without a close frame"
            return closed.rcvd.code


# --- before the upgrade: plain HTTP, the envelope ----------------------------------------------


def test_the_first_frame_is_the_body_of_get_api_kpi_and_a_ticket_opens_one_socket(make_app, conn) -> None:
    two_listings(conn)
    app = make_app()
    client = app.test_client()
    assert client.get(f"/api/kpi?{WINDOW}", headers=bearer()).status_code == 200  # computed: cached from now on
    with serving(app) as base:
        value = ticket(base)
        with open_ws(ws_url(base, f"{WINDOW}&ticket={value}")) as ws:
            first = frame(ws)
        polled = client.get(f"/api/kpi?{WINDOW}", headers=bearer()).get_json()
        assert set(first) == {"event", "id", "data"} and first["event"] == "kpi"
        assert first["data"] == polled and first["id"] == polled["meta"]["computed_at"]
        assert first["data"]["metrics"]["total_listings"] == 2
        with Sse(f"{base}/api/kpi/stream?{WINDOW}", bearer()) as stream:  # the same event as SSE sends
            event = stream.next_event()
            assert (event.id, event.json()) == (first["id"], first["data"])

        again = refused(ws_url(base, f"{WINDOW}&ticket={value}"))
        assert again.status_code == 401 and again.headers["WWW-Authenticate"] == 'Bearer realm="kpi"'
        assert envelope(again)["message"] == "Invalid, expired or already used stream ticket."
    wait_until(lambda: app.extensions["kpi_stream"].hub.streams == 0)


def test_a_bearer_header_opens_it_and_everything_else_is_refused_before_the_upgrade(make_app, conn) -> None:
    two_listings(conn)
    app = make_app()
    with serving(app) as base:
        with open_ws(ws_url(base, "from=2026-03-02&tz=utc"), bearer()) as ws:
            body = frame(ws)["data"]
            assert body["metrics"]["total_listings"] == 1
            assert body["meta"]["window"] == {"from": "2026-03-02", "to": None, "tz": "UTC", "aged_days": 60}
        for query in ("from=2026-13-01", "bogus=1", "from=2026-03-02&to=2026-03-01", "tz=Mars/Olympus", "to=1&to=2"):
            response = refused(ws_url(base, query), bearer())
            assert response.status_code == 400, query
            envelope(response)
        for headers in ({}, bearer("not.a.token"), bearer(token(exp=datetime.now(UTC) - timedelta(seconds=1)))):
            assert refused(ws_url(base), headers).status_code == 401
        assert refused(ws_url(base, "ticket=nope")).status_code == 401

        # No WebSocket handshake at all, or one that is not RFC 6455's: a 400 envelope.
        parts = urlsplit(base)
        for headers in (
            bearer(),
            {**bearer(), "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13"},
            {
                **bearer(),
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Key": "a2V5a2V5a2V5a2V5a2V5a2V5",
            },
        ):
            plain = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
            try:
                plain.request("GET", "/api/kpi/ws", headers=headers)
                response = plain.getresponse()
                assert response.status == 400, headers
                assert response.headers["Content-Type"] == "application/json"
                assert json.loads(response.read())["success"] is False
            finally:
                plain.close()
    assert app.extensions["kpi_stream"].hub.streams == 0


def test_only_its_own_origin_a_listed_one_or_none_may_open_it(make_app, conn) -> None:
    app = make_app(ws_allowed_origins=("https://dash.example.com",))
    with serving(app) as base:
        own = base  # the Origin a page served by this server sends
        value = ticket(base)
        for origin in ("http://evil.example", "null", "https://dash.example.com.evil.example", "http://127.0.0.1:1"):
            response = refused(ws_url(base, f"ticket={value}"), origin=origin)
            assert response.status_code == 403, origin
            assert "origin" in envelope(response)["message"]
        # A refused origin spends no ticket: the check comes first.
        for origin in (own, "https://dash.example.com", "HTTPS://Dash.Example.com:443", None):
            with open_ws(ws_url(base, f"ticket={value if origin == own else ticket(base)}"), origin=origin) as ws:
                assert frame(ws)["event"] == "kpi", origin


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "expected"),
    [
        (None, "kpi.example.com", (), True),  # not a browser
        ("https://kpi.example.com", "kpi.example.com", (), True),  # behind a proxy that ends TLS
        ("http://kpi.example.com:8000", "kpi.example.com:8000", (), True),
        ("http://kpi.example.com:8000", "kpi.example.com", (), False),
        ("https://other.example.com", "kpi.example.com", (), False),
        ("https://other.example.com", "kpi.example.com", ("https://other.example.com",), True),
        ("http://other.example.com", "kpi.example.com", ("https://other.example.com",), False),
        ("null", "kpi.example.com", (), False),
        ("https://kpi.example.com", None, (), False),
        ("https://kpi.example.com", "kpi.example.com/x", (), False),
    ],
)
def test_which_origins_are_allowed(origin: str | None, host: str | None, allowed: tuple, expected: bool) -> None:
    assert origin_allowed(origin, host, allowed) is expected


def test_the_cap_counts_server_sent_and_websocket_streams_together(make_app, conn) -> None:
    app = make_app(max_streams=2)
    hub = app.extensions["kpi_stream"].hub
    with serving(app) as base, Sse(f"{base}/api/kpi/stream", bearer()) as stream:
        assert stream.status == 200
        with open_ws(ws_url(base, "from=2026-01-01"), bearer()) as ws:
            assert frame(ws)["event"] == "kpi"
            response = refused(ws_url(base), bearer())
            assert response.status_code == 503 and response.headers["Retry-After"] == "10"
            assert envelope(response)["message"].startswith("Too many streams")
            with Sse(f"{base}/api/kpi/stream", bearer()) as third:
                assert third.status == 503
        # Its slot is free at once, not at the next heartbeat (15 s).
        wait_until(lambda: hub.streams == 1, seconds=5)
        with open_ws(ws_url(base), bearer()) as again:
            assert frame(again)["event"] == "kpi"


# --- after the upgrade: frames and closes ------------------------------------------------------


def test_heartbeats_while_nothing_changes_and_client_messages_are_ignored(make_app, conn) -> None:
    app = make_app(stream_heartbeat=1)
    with serving(app) as base, open_ws(ws_url(base), bearer()) as ws:
        assert frame(ws)["event"] == "kpi"
        started = time.monotonic()
        ws.send("hello")  # ignored: the window is fixed per connection
        assert frame(ws) == {"event": "heartbeat"}
        assert frame(ws) == {"event": "heartbeat"}
        assert 1.5 < time.monotonic() - started < 5


def test_last_event_id_says_the_client_has_the_value(make_app, conn) -> None:
    app = make_app(stream_heartbeat=1)
    with serving(app) as base:
        with open_ws(ws_url(base, WINDOW), bearer()) as ws:
            current = frame(ws)["id"]
        with open_ws(ws_url(base, f"{WINDOW}&last_event_id={current}"), bearer()) as ws:
            assert frame(ws) == {"event": "heartbeat"}
        with open_ws(ws_url(base, WINDOW), {**bearer(), "Last-Event-ID": "2026-01-01T00:00:00.000Z"}) as ws:
            assert frame(ws)["id"] == current


def test_a_new_listing_reaches_an_open_socket(make_app, conn) -> None:
    # The write is left to the app's own applier; no update can come from the cache's TTL.
    app = make_app(cache_ttl=HOUR, apply_interval=APPLYING)
    with serving(app) as base, open_ws(ws_url(base, f"{today_window()}&ticket={ticket(base)}")) as ws:
        assert frame(ws)["data"]["metrics"]["total_listings"] == 0
        insert_listing(conn, datetime.now(UTC))  # applied and announced by the app's own applier
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            pushed = frame(ws)
            if pushed["event"] == "kpi" and pushed["data"]["metrics"]["total_listings"] == 1:
                assert pushed["id"] == pushed["data"]["meta"]["computed_at"]
                break
        else:
            raise AssertionError("the new listing never arrived")


def test_closing_the_client_unsubscribes_at_once(make_app, conn) -> None:
    app = make_app()  # heartbeat 15 s: the end must not wait for a write to fail
    hub = app.extensions["kpi_stream"].hub
    with serving(app) as base:
        with open_ws(ws_url(base), bearer()) as ws:
            assert frame(ws)["event"] == "kpi" and hub.streams == 1
        wait_until(lambda: hub.streams == 0, seconds=3)


def test_a_message_over_the_cap_closes_with_1009(make_app, conn) -> None:
    app = make_app(ws_max_message=1024)
    hub = app.extensions["kpi_stream"].hub
    with serving(app) as base, open_ws(ws_url(base), bearer()) as ws:
        assert frame(ws)["event"] == "kpi"
        ws.send("x" * 1024)  # at the cap: ignored
        ws.send("x" * 1025)
        assert close_code(ws, seconds=5) == 1009
        wait_until(lambda: hub.streams == 0, seconds=3)


def test_the_token_expiring_closes_with_1000(make_app, conn) -> None:
    app = make_app(stream_heartbeat=1)
    expiring = token(exp=datetime.now(UTC) + timedelta(seconds=2))
    with serving(app) as base, open_ws(ws_url(base), bearer(expiring)) as ws:
        assert frame(ws)["event"] == "kpi"
        started = time.monotonic()
        assert close_code(ws, seconds=5) == 1000
        assert time.monotonic() - started < 5
    assert app.extensions["kpi_stream"].hub.streams == 0


def test_closing_the_hub_closes_with_1001(make_app, conn) -> None:
    app = make_app()
    hub = app.extensions["kpi_stream"].hub
    with serving(app) as base, open_ws(ws_url(base), bearer()) as ws:
        assert frame(ws)["event"] == "kpi"
        hub.close()
        assert close_code(ws, seconds=3) == 1001
        wait_until(lambda: hub.streams == 0)
        assert refused(ws_url(base), bearer()).status_code == 503


def test_a_client_that_answers_no_ping_is_closed_with_1008(make_app, conn) -> None:
    """wsproto as a bare client: it answers pings only when told to, and is never told."""
    app = make_app(ws_idle_timeout=1)
    hub = app.extensions["kpi_stream"].hub
    with serving(app) as base:
        parts = urlsplit(base)
        client = WSConnection(ConnectionType.CLIENT)
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as raw:
            auth = [(b"authorization", f"Bearer {token()}".encode())]
            raw.sendall(client.send(Request(host=parts.netloc, target="/api/kpi/ws", extra_headers=auth)))
            events: list = []
            started = time.monotonic()
            while not any(isinstance(e, CloseConnection) for e in events):
                data = raw.recv(65536)
                assert data, "the server dropped the connection without a close frame"
                client.receive_data(data)
                events.extend(client.events())
            assert isinstance(events[0], AcceptConnection) and isinstance(events[1], TextMessage)
            closing = next(e for e in events if isinstance(e, CloseConnection))
            assert closing.code == 1008 and 1.5 < time.monotonic() - started < 5
        wait_until(lambda: hub.streams == 0, seconds=3)


def test_frames_are_the_events_as_json() -> None:
    body = {
        "metrics": {"total_listings": 2},
        "success": True,
        "message": None,
        "meta": {"computed_at": "X", "stale": False},
    }
    served = Served(body, "miss", time.time() + 30)
    assert json.loads(Event.of(served).frame()) == {"event": "kpi", "id": "X", "data": body}
    unavailable = Event.unavailable("down", "X")
    assert json.loads(unavailable.frame()) == {
        "event": "unavailable",
        "data": {"metrics": None, "success": False, "message": "down"},
    }


@pytest.mark.slow
def test_under_gunicorn_gthread_workers(database_url: str, conn: psycopg.Connection) -> None:
    two_listings(conn)
    env = {"DATABASE_URL": database_url, "JWT_SECRET_KEY": SECRET, "GUNICORN_WORKERS": "1"}
    server, base = start_gunicorn(env)
    try:
        with open_ws(ws_url(base, WINDOW), bearer()) as ws:
            first = frame(ws)
            assert first["event"] == "kpi" and first["data"]["metrics"]["total_listings"] == 2
            server.send_signal(signal.SIGTERM)
            assert close_code(ws, seconds=5) == 1001  # the worker stopping, not its graceful timeout
        assert server.wait(timeout=10) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_the_openapi_document_describes_it(make_app) -> None:
    document = make_app().test_client().get("/api/openapi.json").get_json()
    operation = document["paths"]["/api/kpi/ws"]["get"]
    assert operation["security"] == [{"bearerAuth": []}, {"streamTicket": []}]
    names = {p["name"] for p in operation["parameters"]}
    assert names == {"from", "to", "tz", "aged_days", "compare", "Last-Event-ID", "last_event_id", "Origin"}
    assert {"101", "400", "401", "403", "503"} <= set(operation["responses"])
    assert "1009" in operation["responses"]["101"]["description"]
