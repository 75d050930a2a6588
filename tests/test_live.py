"""Live updates with the summaries: a stream's window is recomputed when the applier announces a
change that touches it, once across instances, and when a listing ages, never on a timer.

The writes here are committed and left to the service's own applier (no catch_up): its
announcement is what is tested. The cache TTL is an hour, so no update can come from it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import pytest
from flask import Flask

from kpi_service.serving.changes import affected
from kpi_service.serving.query import KpiQuery
from tests.helpers import APPLYING, HOUR, RedisServer, counted, insert_listing, ticket, today_window, wait_until
from tests.sse import Sse, serving


@pytest.fixture
def live_app(make_app: Callable[..., Flask]) -> Callable[..., Flask]:
    """make_app with the live tests' settings: no TTL in sight, a quick applier, 1 s heartbeats."""

    def make(**overrides: object) -> Flask:
        return make_app(**{"cache_ttl": HOUR, "apply_interval": APPLYING, "stream_heartbeat": 1, **overrides})

    return make


def test_a_new_listing_reaches_an_open_stream_without_a_poll_or_a_ttl(live_app, conn) -> None:
    app = live_app()
    with serving(app) as base, Sse(f"{base}/api/kpi/stream?{today_window()}&ticket={ticket(base)}") as stream:
        assert stream.next_event().json()["metrics"]["total_listings"] == 0
        insert_listing(conn, datetime.now(UTC))
        assert stream.until(lambda body: body["metrics"]["total_listings"] == 1)["metrics"]["total_value"] == 1000.0


def test_a_write_in_the_compared_window_alone_reaches_a_comparisons_stream(live_app, conn) -> None:
    """compare=previous_period: the window is today, the compared one yesterday. A listing of
    yesterday changes only the comparison, and that is news to the stream."""
    app = live_app()
    today = datetime.now(UTC).date()
    window = f"from={today}&to={today}&tz=UTC&compare=previous_period"
    with serving(app) as base, Sse(f"{base}/api/kpi/stream?{window}&ticket={ticket(base)}") as stream:
        first = stream.next_event().json()
        assert first["comparison"]["metrics"]["total_listings"] == 0
        insert_listing(conn, datetime.now(UTC) - timedelta(days=1) + timedelta(seconds=1))
        insert_listing(conn, datetime.combine(today, datetime.min.time(), tzinfo=UTC) - timedelta(hours=1))
        body = stream.until(lambda body: body["comparison"]["metrics"]["total_listings"] >= 1)
        assert body["metrics"] == first["metrics"]
        assert (
            body["comparison"]["change"]["total_listings"]["absolute"]
            == -body["comparison"]["metrics"]["total_listings"]
        )


def test_one_advance_per_batch_across_instances_and_no_event_for_a_window_it_does_not_touch(
    live_app, conn, redis_server: RedisServer
) -> None:
    first, second = live_app(redis_url=redis_server.url), live_app(redis_url=redis_server.url)
    calls = [counted(first), counted(second)]
    past = "from=2026-03-01&to=2026-03-31&tz=UTC"
    with serving(first) as one, serving(second) as two:
        streams = [Sse(f"{base}/api/kpi/stream?{today_window()}&ticket={ticket(base)}") for base in (one, two)]
        old = Sse(f"{one}/api/kpi/stream?{past}&ticket={ticket(one)}")
        try:
            for stream in (*streams, old):
                stream.next_event()
            old.heartbeats(1)  # its first live refresh (the aging look-up) is done
            before = calls[0][0] + calls[1][0]
            insert_listing(conn, datetime.now(UTC))
            for stream in streams:
                stream.until(lambda body: body["metrics"]["total_listings"] == 1)
            # The March window heard of the batch too, and let it pass: heartbeats only.
            assert old.heartbeats(2) == []
            # One advance across instances (serving/advancer.py): its probe and its check, not a
            # statement per window or per instance.
            assert calls[0][0] + calls[1][0] - before == 2
        finally:
            for stream in (*streams, old):
                stream.close()


def test_no_writes_no_statements_and_no_event_that_repeats_numbers(live_app, conn) -> None:
    listing = insert_listing(conn, datetime.now(UTC) - timedelta(hours=1))
    app = live_app()
    calls = counted(app)
    with serving(app) as base, Sse(f"{base}/api/kpi/stream?{today_window()}&ticket={ticket(base)}") as stream:
        stream.until(lambda body: body["metrics"]["total_listings"] == 1)
        # The listing's batch applied, and its advance (which ends with its check, after the value
        # it streamed) done, if the listener heard it.
        service = app.extensions["kpi"].service
        wait_until(lambda: service.db.pending_changes() == 0)
        stream.heartbeats(1)
        wait_until(lambda: service.advancer.idle)
        quiet = calls[0]
        assert stream.heartbeats(3) == [] and calls[0] == quiet
        # A write the KPIs do not read: the window is recomputed, and the stream stays silent.
        conn.execute("UPDATE listings SET make = 'Skoda' WHERE id = %s", [listing])
        assert stream.heartbeats(3) == []
        assert calls[0] > quiet


def test_aged_inventory_grows_the_moment_a_listing_ages(live_app, conn) -> None:
    # Listed one day ago less three seconds: aged (aged_days=1) three seconds from now, no write.
    ages_at = datetime.now(UTC) + timedelta(seconds=3)
    insert_listing(conn, ages_at - timedelta(days=1))
    app = live_app()
    with serving(app) as base, Sse(f"{base}/api/kpi/stream?aged_days=1&ticket={ticket(base)}") as stream:
        assert stream.until(lambda body: body["metrics"]["total_listings"] == 1)["metrics"]["aged_inventory"] == 0
        aged = stream.until(lambda body: body["metrics"]["aged_inventory"] == 1, seconds=30)
        assert aged["metrics"]["total_listings"] == 1
        assert datetime.fromisoformat(aged["meta"]["computed_at"].replace("Z", "+00:00")) > ages_at


MARCH = KpiQuery(date(2026, 3, 1), date(2026, 3, 31), "UTC", 30)
OPEN = KpiQuery(None, None, "Europe/Berlin", 30)
NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("query", "changed", "expected"),
    [
        (MARCH, {"from": "2026-03-01T00:00:00+00:00", "to": "2026-03-01T00:00:00+00:00"}, True),  # at start: in
        (MARCH, {"from": "2026-04-01T00:00:00+00:00", "to": "2026-04-02T00:00:00+00:00"}, False),  # at end: out
        (MARCH, {"from": "2026-02-01T00:00:00+00:00", "to": "2026-02-28T23:45:00+00:00"}, False),
        (MARCH, {"from": "2026-02-01T00:00:00+00:00", "to": "2026-05-01T00:00:00+00:00"}, True),  # spans it
        (MARCH, {"from": None, "to": None, "stock_from": "2026-02-28T00:00:00+00:00"}, True),  # aged by Mar 30
        (MARCH, {"from": None, "to": None, "stock_from": "2026-03-02T00:00:00+00:00"}, False),  # 30 days: not yet
        (MARCH, {"from": None, "to": None, "stock_from": None}, False),
        (OPEN, {"from": "1999-01-01T00:00:00+00:00", "to": "1999-01-01T00:00:00+00:00"}, True),
        (OPEN, {"from": None, "to": None, "stock_from": "2026-11-29T00:00:00+00:00"}, False),  # listed yesterday
        (MARCH, {"all": True}, True),
    ],
)
def test_which_windows_a_batch_touches(query: KpiQuery, changed: dict, expected: bool) -> None:
    assert affected(query, changed, NOW) is expected
