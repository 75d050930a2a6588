"""GET /api/kpi/stream and POST /api/kpi/stream-ticket, over real sockets: tickets, pushes from
another instance through a real Redis, Last-Event-ID, heartbeats, the refresher and the cap."""

from __future__ import annotations

import hashlib
import logging
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
import redis

from tests.dataset import Dataset, Listing, catch_up
from tests.helpers import (
    APPLYING,
    SECRET,
    WINDOW,
    RedisServer,
    counted,
    post_ticket,
    ticket,
    token,
    two_listings,
    wait_until,
)
from tests.servers import start_gunicorn
from tests.sse import Sse, serving


def add_listing(conn: psycopg.Connection, listing_id: int, when: datetime) -> None:
    conn.execute(
        "INSERT INTO listings (id, price, status, listed_at) VALUES (%s, %s, 'active', %s)",
        (listing_id, Decimal("1000.00"), when),
    )
    catch_up(conn)


# --- tickets ---------------------------------------------------------------------------------


def test_a_ticket_opens_one_stream_only(make_app, conn: psycopg.Connection) -> None:
    two_listings(conn)
    app = make_app()
    with serving(app) as base:
        status, body = post_ticket(base, token())
        assert status == 200 and set(body) == {"ticket", "expires_in"} and body["expires_in"] == 30
        with Sse(f"{base}/api/kpi/stream?{WINDOW}&ticket={body['ticket']}") as stream:
            assert stream.status == 200 and stream.headers["Content-Type"].startswith("text/event-stream")
            event = stream.next_event()
            assert event.event == "kpi" and event.json()["metrics"]["total_listings"] == 2
        with Sse(f"{base}/api/kpi/stream?{WINDOW}&ticket={body['ticket']}") as again:
            assert again.status == 401
            assert again.body() == {
                "metrics": None,
                "success": False,
                "message": "Invalid, expired or already used stream ticket.",
            }


def test_a_ticket_is_single_use_across_instances(make_app, conn, redis_server: RedisServer) -> None:
    two_listings(conn)
    first, second = make_app(redis_url=redis_server.url), make_app(redis_url=redis_server.url)
    with serving(first) as one, serving(second) as two:
        value = ticket(one)
        with Sse(f"{two}/api/kpi/stream?ticket={value}") as stream:
            assert stream.status == 200
        with Sse(f"{one}/api/kpi/stream?ticket={value}") as stream:
            assert stream.status == 401
    # Redis holds the ticket's hash, not the ticket.
    keys = redis.Redis.from_url(redis_server.url).keys("kpi:v1:ticket:*")
    assert all(value.encode() not in key for key in keys)


def test_a_ticket_expires(make_app, conn, redis_server: RedisServer) -> None:
    app = make_app(redis_url=redis_server.url)
    app.extensions["kpi_stream"].tickets.ttl = 1
    client = redis.Redis.from_url(redis_server.url)
    with serving(app) as base:
        status, body = post_ticket(base, token())
        assert status == 200 and body["expires_in"] == 1
        key = "kpi:v1:ticket:" + hashlib.sha256(body["ticket"].encode()).hexdigest()
        assert client.ttl(key) == 1
        wait_until(lambda: not client.exists(key), seconds=5)  # Redis expired it
        with Sse(f"{base}/api/kpi/stream?ticket={body['ticket']}") as stream:
            assert stream.status == 401


def test_a_ticket_never_outlives_its_token(make_app, conn) -> None:
    app = make_app()
    with serving(app) as base:
        status, body = post_ticket(base, token(exp=datetime.now(UTC) + timedelta(seconds=10)))
    assert status == 200 and 8 <= body["expires_in"] <= 10


def test_401_without_ticket_or_token(make_app, conn) -> None:
    app = make_app()
    with serving(app) as base:
        for url in (f"{base}/api/kpi/stream", f"{base}/api/kpi/stream?ticket=", f"{base}/api/kpi/stream?ticket=nope"):
            with Sse(url) as stream:
                assert stream.status == 401 and stream.headers["WWW-Authenticate"] == 'Bearer realm="kpi"'
                assert stream.body()["success"] is False
        with Sse(f"{base}/api/kpi/stream", {"Authorization": "Bearer not.a.token"}) as stream:
            assert stream.status == 401
        assert post_ticket(base)[0] == 401
        assert post_ticket(base, "not.a.token")[0] == 401
        expired = token(exp=datetime.now(UTC) - timedelta(seconds=1))
        assert post_ticket(base, expired)[0] == 401
        # A ticket opens the stream and nothing else.
        value = ticket(base)
        with Sse(f"{base}/api/kpi?ticket={value}") as other:
            assert other.status == 401


def test_a_bearer_header_opens_the_stream_and_parameters_are_validated(make_app, conn) -> None:
    two_listings(conn)
    app = make_app()
    auth = {"Authorization": f"Bearer {token()}"}
    with serving(app) as base:
        with Sse(f"{base}/api/kpi/stream?from=2026-03-02&tz=utc", auth) as stream:
            assert stream.status == 200
            body = stream.next_event().json()
            assert body["metrics"]["total_listings"] == 1
            assert body["meta"]["window"] == {"from": "2026-03-02", "to": None, "tz": "UTC", "aged_days": 60}
        for query in ("from=2026-13-01", "bogus=1", "from=2026-03-02&to=2026-03-01", "tz=Mars/Olympus"):
            with Sse(f"{base}/api/kpi/stream?{query}", auth) as stream:
                assert stream.status == 400 and stream.body()["success"] is False
        with Sse(f"{base}/api/kpi/stream?{WINDOW}&ticket={ticket(base)}&ticket=x") as stream:
            assert stream.status == 401


def test_the_ticket_never_reaches_the_log(make_app, conn, caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(access_log="all")
    with caplog.at_level(logging.INFO), serving(app) as base:
        value = ticket(base)
        with Sse(f"{base}/api/kpi/stream?ticket={value}") as stream:
            assert stream.status == 200
    lines = [record for record in caplog.records if record.name == "kpi_service.request"]
    assert any(getattr(r, "path", None) == "/api/kpi/stream" for r in lines)
    assert value not in caplog.text


# --- events ----------------------------------------------------------------------------------


def test_an_event_arrives_when_another_instance_computes(make_app, conn, redis_server: RedisServer) -> None:
    two_listings(conn)
    watched, other = make_app(redis_url=redis_server.url), make_app(redis_url=redis_server.url)
    calls = counted(watched)
    with serving(watched) as base, Sse(f"{base}/api/kpi/stream?{WINDOW}&ticket={ticket(base)}") as stream:
        first = stream.next_event()
        assert first.json()["metrics"]["total_listings"] == 2 and calls[0] == 1
        # The value expires (gone from Redis) and the data changes; another instance computes it.
        add_listing(conn, 3, datetime(2026, 3, 3, tzinfo=UTC))
        redis.Redis.from_url(redis_server.url).delete(
            watched.extensions["kpi"].cache.keys.value("kpi:2026-03-01:2026-03-31:UTC:60")
        )
        response = other.test_client().get(f"/api/kpi?{WINDOW}", headers={"Authorization": f"Bearer {token()}"})
        assert response.status_code == 200 and response.get_json()["meta"]["cached"] is False
        pushed = stream.next_event()
        assert pushed.event == "kpi" and pushed.id == response.get_json()["meta"]["computed_at"] > first.id
        assert pushed.json()["metrics"] == response.get_json()["metrics"]
        assert pushed.json()["metrics"]["total_listings"] == 3
        assert calls[0] == 1  # the watching instance did not compute it again


def test_last_event_id_resumes(make_app, conn) -> None:
    two_listings(conn)
    app = make_app(stream_heartbeat=1)
    with serving(app) as base:
        with Sse(f"{base}/api/kpi/stream?{WINDOW}&ticket={ticket(base)}") as stream:
            current = stream.next_event()
            assert current.id == current.json()["meta"]["computed_at"]
        # The client has the current value: nothing until there is a new one, only heartbeats.
        headers = {"Last-Event-ID": current.id}
        with Sse(f"{base}/api/kpi/stream?{WINDOW}&ticket={ticket(base)}", headers) as stream:
            assert stream.next().retry == 3000
            assert stream.next().comment == "heartbeat"
        with Sse(f"{base}/api/kpi/stream?{WINDOW}&ticket={ticket(base)}&last_event_id={current.id}") as stream:
            assert stream.next().retry == 3000
            assert stream.next().comment == "heartbeat"
        # An older id (or one that is not an id): the current value at once.
        for given in ("2026-01-01T00:00:00.000Z", "garbage"):
            with Sse(f"{base}/api/kpi/stream?{WINDOW}&ticket={ticket(base)}", {"Last-Event-ID": given}) as stream:
                assert stream.next().retry == 3000
                assert stream.next().id == current.id


def test_heartbeat_while_nothing_changes(make_app, conn) -> None:
    app = make_app(stream_heartbeat=1)
    with serving(app) as base, Sse(f"{base}/api/kpi/stream?ticket={ticket(base)}") as stream:
        assert stream.next().retry == 3000
        assert stream.next().event == "kpi"
        started = time.monotonic()
        assert stream.next().comment == "heartbeat"
        assert stream.next().comment == "heartbeat"
        assert 1.5 < time.monotonic() - started < 5


@pytest.fixture
def raw_conn(raw_database_url: str) -> Iterator[psycopg.Connection]:
    """A writable connection on the empty tables of the database without summaries."""
    with psycopg.connect(raw_database_url, autocommit=True) as connection:
        connection.execute("TRUNCATE purchases, leads, listings, buyers RESTART IDENTITY CASCADE")
        yield connection


def test_without_summaries_a_window_refreshes_itself_once_per_ttl_for_all_its_subscribers(
    make_app, raw_database_url: str, raw_conn: psycopg.Connection
) -> None:
    # Raw mode: every write changes the numbers and nothing announces it, so streams follow the
    # TTL (with the summaries they follow the applier's announcements: tests/test_live.py).
    conn = raw_conn
    two_listings(conn)
    app = make_app(cache_ttl=1, stream_heartbeat=1, database_url=raw_database_url)
    calls = counted(app)
    with serving(app) as base:
        streams = [Sse(f"{base}/api/kpi/stream?{WINDOW}&ticket={ticket(base)}") for _ in range(4)]
        try:
            # One computation for all four subscribers.
            assert len({stream.next_event().id for stream in streams}) == 1
            # Refreshed every TTL though nobody polls, and the unchanged numbers are not sent again.
            assert streams[0].heartbeats(3) == []
            assert calls[0] >= 2
            add_listing(conn, 3, datetime(2026, 3, 3, tzinfo=UTC))
            # The new listing arrives within a TTL or two, one computation for all of them.
            updates = [stream.until(lambda body: body["metrics"]["total_listings"] == 3) for stream in streams]
            assert len({body["meta"]["computed_at"] for body in updates}) == 1
        finally:
            for stream in streams:
                stream.close()


# --- the cap, disconnects and the end of a stream --------------------------------------------


def test_streams_beyond_the_cap_get_a_503(make_app, conn) -> None:
    app = make_app(max_streams=2, stream_heartbeat=1)
    hub = app.extensions["kpi_stream"].hub
    with serving(app) as base:
        first = Sse(f"{base}/api/kpi/stream?ticket={ticket(base)}")
        second = Sse(f"{base}/api/kpi/stream?from=2026-01-01&ticket={ticket(base)}")
        try:
            assert first.status == second.status == 200
            with Sse(f"{base}/api/kpi/stream?ticket={ticket(base)}") as third:
                assert third.status == 503 and third.headers["Retry-After"] == "10"
                assert third.body()["message"].startswith("Too many streams")
            # Ordinary requests still get through.
            with urllib.request.urlopen(f"{base}/healthz", timeout=5) as response:
                assert response.status == 200
            first.close()  # the server notices at its next write, a heartbeat at the latest
            wait_until(lambda: hub.streams == 1, seconds=10)
            with Sse(f"{base}/api/kpi/stream?ticket={ticket(base)}") as third:
                assert third.status == 200
        finally:
            first.close()
            second.close()
    wait_until(lambda: hub.streams == 0, seconds=10)  # each notices at its next heartbeat


def test_a_stream_ends_when_its_token_expires(make_app, conn) -> None:
    app = make_app(stream_heartbeat=1)
    bearer = token(exp=datetime.now(UTC) + timedelta(seconds=2))
    with serving(app) as base, Sse(f"{base}/api/kpi/stream", {"Authorization": f"Bearer {bearer}"}) as stream:
        assert stream.next_event().event == "kpi"
        started = time.monotonic()
        while stream.next() is not None:
            pass
        assert time.monotonic() - started < 5
    assert app.extensions["kpi_stream"].hub.streams == 0


def test_closing_the_hub_ends_its_streams(make_app, conn) -> None:
    app = make_app()  # heartbeat 15 s: the end must not wait for it
    hub = app.extensions["kpi_stream"].hub
    with serving(app) as base, Sse(f"{base}/api/kpi/stream?ticket={ticket(base)}") as stream:
        assert stream.next_event().event == "kpi"
        started = time.monotonic()
        hub.close()
        while stream.next() is not None:
            pass
        assert time.monotonic() - started < 5
        wait_until(lambda: hub.streams == 0)
        with Sse(f"{base}/api/kpi/stream?ticket={ticket(base)}") as refused:
            assert refused.status == 503


def test_the_database_down_with_nothing_cached_is_a_503(make_app) -> None:
    app = make_app(database_url="postgresql://postgres@127.0.0.1:1/none", db_pool_timeout=0.5)
    with serving(app) as base, Sse(f"{base}/api/kpi/stream", {"Authorization": f"Bearer {token()}"}) as stream:
        assert stream.status == 503 and stream.body()["success"] is False
    assert app.extensions["kpi_stream"].hub.streams == 0


def test_stale_values_are_pushed_as_stale(make_app, conn) -> None:
    Dataset(listings=[Listing(1, Decimal("5.00"), "active", datetime(2026, 3, 1, tzinfo=UTC))]).insert(conn)
    app = make_app(cache_ttl=1, apply_interval=APPLYING)
    with serving(app) as base, Sse(f"{base}/api/kpi/stream?{WINDOW}&ticket={ticket(base)}") as stream:
        first = stream.next_event()
        assert first.json()["meta"]["stale"] is False

        from kpi_service.db.errors import DatabaseUnavailable

        def down(*args: object, **kwargs: object):
            raise DatabaseUnavailable("down")

        app.extensions["kpi"].db.kpi_rows = down
        # A change in the window, applied and announced by the service's applier, that the KPI
        # statement cannot take in: the value the stream has is now known to be behind.
        conn.execute("INSERT INTO listings (id, price, status, listed_at) VALUES (2, 7, 'active', '2026-03-02Z')")
        stale = stream.next_event()
        assert stale.id == first.id and stale.json()["meta"]["stale"] is True
        assert stale.json()["metrics"] == first.json()["metrics"]


@pytest.mark.slow
def test_gunicorn_ends_streams_when_a_worker_stops(database_url: str, conn: psycopg.Connection) -> None:
    env = {"DATABASE_URL": database_url, "JWT_SECRET_KEY": SECRET, "GUNICORN_WORKERS": "1"}
    server, base = start_gunicorn(env)
    try:
        with Sse(f"{base}/api/kpi/stream", {"Authorization": f"Bearer {token()}"}) as stream:
            assert stream.next_event().event == "kpi"
            started = time.monotonic()
            server.send_signal(signal.SIGTERM)
            while stream.next() is not None:  # heartbeats are 15 s apart: the end is the shutdown's
                pass
            assert time.monotonic() - started < 5
        assert server.wait(timeout=10) == 0
        assert time.monotonic() - started < 10  # well within the 20 s graceful timeout
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_the_openapi_document_describes_the_stream(make_app) -> None:
    document = make_app().test_client().get("/api/openapi.json").get_json()
    stream = document["paths"]["/api/kpi/stream"]["get"]
    assert stream["security"] == [{"bearerAuth": []}, {"streamTicket": []}]
    assert document["components"]["securitySchemes"]["streamTicket"]["in"] == "query"
    names = {p["name"] for p in stream["parameters"]}
    assert names == {"from", "to", "tz", "aged_days", "compare", "Last-Event-ID", "last_event_id"}
    assert "text/event-stream" in stream["responses"]["200"]["content"]
    ticket_op = document["paths"]["/api/kpi/stream-ticket"]["post"]
    assert ticket_op["security"] == [{"bearerAuth": []}]
    assert ticket_op["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/StreamTicket"
    }


def test_without_redis_the_stream_still_refreshes(make_app, conn, redis_server: RedisServer) -> None:
    two_listings(conn)
    app = make_app(redis_url=redis_server.url, cache_ttl=1)
    auth = {"Authorization": f"Bearer {token()}"}
    with serving(app) as base, Sse(f"{base}/api/kpi/stream?{WINDOW}", auth) as stream:
        assert stream.next_event().json()["metrics"]["total_listings"] == 2
        redis_server.stop()  # no announcements, no shared cache: the refresher alone keeps it live
        add_listing(conn, 3, datetime(2026, 3, 3, tzinfo=UTC))
        stream.until(lambda body: body["metrics"]["total_listings"] == 3, seconds=30)
