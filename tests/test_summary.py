"""The summaries of sql/schema/summary.sql: what the applier makes of the change log equals a rebuild
from the sales tables, however late, partial, repeated, interrupted or concurrent its runs; the
application's transactions wait for nothing new; and windows off the 15-minute grid (read from
the raw rows) agree with the reference."""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.conninfo import make_conninfo

from kpi_service.app import create_app
from kpi_service.config import Settings
from kpi_service.db.applier import MIN_BATCH, paced_batch
from kpi_service.db.connections import Database
from kpi_service.db.sql import APPLY_BATCH, in_applier_turn, in_one_snapshot
from kpi_service.serving.windows import Window
from tests.dataset import Dataset, Lead, Listing, Purchase, beside_a_rebuild, catch_up
from tests.helpers import APPLYING, apply_change, computed, expected, make_settings, wait_until
from tests.strategies import aged_days_choices, datasets, instants, windows

SUMS = "SELECT * FROM kpi.kpi_sums ORDER BY grain, bucket"
BUYERS = "SELECT buyer_id, bucket, prev_bucket FROM kpi.kpi_buyer_buckets ORDER BY 1, 2"
SALES = "SELECT * FROM kpi.kpi_sales ORDER BY listing_id"
LINKS = "SELECT * FROM kpi.kpi_buyer_days ORDER BY day, gap"


def summaries(conn: psycopg.Connection) -> tuple[list, ...]:
    return tuple(conn.execute(query).fetchall() for query in (SUMS, BUYERS, SALES, LINKS))


def applied_and_rebuilt(conn: psycopg.Connection) -> tuple[tuple, tuple]:
    """The summaries once the applier has taken in the log, and as kpi_rebuild() makes them from
    the sales tables (rolled back), in one snapshot that holds the applier's lock (a service's
    applier may be at work beside the test)."""
    catch_up(conn)
    return beside_a_rebuild(conn, summaries)


def pending(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM kpi.kpi_changes").fetchone()[0]


def blocked(conn: psycopg.Connection, session: psycopg.Connection) -> bool:
    waiting = "SELECT FROM pg_locks WHERE pid = %s AND NOT granted"
    return conn.execute(waiting, [session.info.backend_pid]).fetchone() is not None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_applier_keeps_what_a_rebuild_makes(conn: psycopg.Connection, data: st.DataObject) -> None:
    """Changes applied late (several batches at once), in parts, and twice: recomputing from the
    committed rows makes the order and the repetition irrelevant."""
    dataset = data.draw(datasets())
    dataset.insert(conn)
    for _ in range(data.draw(st.integers(1, 10))):
        apply_change(conn, dataset, data.draw)
        if data.draw(st.booleans()):
            # Part of the log only, as a batch limit leaves it.
            in_one_snapshot(conn, "SELECT kpi.kpi_apply_changes(max_rows => %s)", [data.draw(st.integers(1, 3))])
    applied, rebuilt = applied_and_rebuilt(conn)
    assert applied == rebuilt
    # Applying again, with the same rows logged again, changes nothing.
    conn.execute("UPDATE listings SET price = price")
    conn.execute("UPDATE leads SET buyer_id = buyer_id")
    conn.execute("UPDATE purchases SET sale_price = sale_price")
    assert applied_and_rebuilt(conn)[0] == applied


def test_active_buyers_across_the_edges_of_a_window_of_whole_days(database: Database, conn: psycopg.Connection) -> None:
    """A window longer than a day counts the links inside its whole UTC days from kpi_buyer_days
    and those from or to its partial days from kpi_buyer_buckets: a buyer's buckets placed in the
    head, the whole days, the tail, before and after a Berlin window (its edges are 23:00 UTC)."""
    utc = datetime(2026, 3, 9, 23, tzinfo=UTC)  # Berlin's 2026-03-10 00:00; the head is one hour
    hour, day = timedelta(hours=1), timedelta(days=1)
    places = {
        1: [utc + 10 * hour, utc + 3 * day - hour],  # whole day, then tail
        2: [utc + 15 * hour, utc + 2 * day, utc + 3 * day + hour],  # whole days, then after
        3: [utc - day, utc + timedelta(minutes=5)],  # before, then head
        4: [utc + 30 * timedelta(minutes=1), utc + 3 * day - 2 * hour],  # head, then tail
        5: [utc + 30 * timedelta(minutes=1), utc + 45 * timedelta(minutes=1)],  # head twice
        6: [utc + 3 * day - 3 * hour, utc + 3 * day - 2 * hour],  # tail twice
        7: [utc - 2 * day, utc + 5 * day],  # across the window, never in it
        8: [utc + day + hour, utc + day + 2 * hour, utc + 2 * day + hour],  # whole days, same and next
        # Back after the window: the leaving links outnumber the window's days, so that its
        # whole days are read from kpi_buyer_days rather than an index of kpi_buyer_buckets.
        **{b: [utc + day + b * hour, utc + 10 * day] for b in range(9, 19)},
    }
    leads = [Lead(i, buyer, at) for i, (buyer, at) in enumerate(((b, t) for b, ts in places.items() for t in ts), 1)]
    data = Dataset(buyers=list(places), leads=leads)
    data.insert(conn)
    shown = [
        Window.of_dates(date(2026, 3, 10), date(2026, 3, 12), "Europe/Berlin"),
        Window.of_dates(date(2026, 3, 10), date(2026, 3, 12), "UTC"),
        Window.of_dates(date(2026, 3, 10), date(2026, 3, 11), "America/New_York"),
        Window.of_dates(date(2026, 3, 1), date(2026, 3, 31), "Asia/Kolkata"),
    ]
    now = datetime(2026, 4, 1, tzinfo=UTC)
    assert computed(database, shown, 60, now) == expected(data, shown, 60, now)
    assert [m["active_buyers"] for m in computed(database, shown[:1], 60, now)] == [17]


def test_an_applier_that_dies_half_way_loses_nothing(database_url: str, conn: psycopg.Connection) -> None:
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    Dataset([1], [Listing(1, Decimal("100.00"), "active", at)], [Lead(1, 1, at)], []).insert(conn)
    conn.execute("UPDATE listings SET price = 120")
    conn.execute(
        "INSERT INTO leads (id, buyer_id, created_at, status) VALUES (2, 1, %s, 'open')", [at + timedelta(days=1)]
    )
    logged = pending(conn)
    with psycopg.connect(database_url, autocommit=True) as applier:
        applier.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        assert applier.execute("SELECT kpi.kpi_apply_changes()").fetchone() == (logged,)
        # Killed before its commit: its work and its taking of the log roll back together.
        conn.execute("SELECT pg_terminate_backend(%s)", [applier.info.backend_pid])
        with pytest.raises(psycopg.OperationalError):
            applier.execute("COMMIT")
    assert pending(conn) == logged
    applied, rebuilt = applied_and_rebuilt(conn)
    assert applied == rebuilt
    assert conn.execute("SELECT sum(price_sum) FROM kpi.kpi_sums WHERE grain = 900").fetchone() == (Decimal("120.00"),)


def test_one_applier_at_a_time(database_url: str, conn: psycopg.Connection) -> None:
    """Two instances' appliers at once: the second finds the lock taken and leaves the log to the
    first (None), or, told to wait, applies what the first left after it commits."""
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    Dataset([1], [Listing(1, Decimal("100.00"), "active", at)], [], []).insert(conn)
    conn.execute("UPDATE listings SET price = 130")
    second = Database(make_settings(database_url))
    try:
        with psycopg.connect(database_url, autocommit=True) as first:
            first.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            assert first.execute("SELECT kpi.kpi_apply_changes()").fetchone() == (2,)
            assert second.apply_changes() is None
            conn.execute("UPDATE listings SET price = 140")  # committed while the first still applies
            result: list[int | None] = []
            waiter = threading.Thread(target=lambda: result.append(second.apply_changes(wait=True)))
            waiter.start()
            waiter.join(timeout=0.5)
            assert waiter.is_alive()  # trying again, not given up
            first.execute("COMMIT")
            waiter.join(timeout=10)
        assert result == [2]  # the UPDATE's old and new rows, left by the first
    finally:
        second.close()
    applied, rebuilt = applied_and_rebuilt(conn)
    assert applied == rebuilt
    assert conn.execute("SELECT price_sum FROM kpi.kpi_sums WHERE grain = 900").fetchone() == (Decimal("140.00"),)


def test_no_stranger_can_take_the_appliers_turn(database_url: str, conn: psycopg.Connection) -> None:
    """Issue 33, item 10: the lock is a row of the summaries' owner, not an advisory lock that any
    login can take (the one earlier versions used, taken here by a stranger and kept)."""
    stranger = f"kpi_test_stranger_{uuid.uuid4().hex[:8]}"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(stranger)))
    try:
        with psycopg.connect(make_conninfo(database_url, user=stranger), autocommit=True) as other:
            other.execute("SELECT pg_advisory_lock(4946157313062342)")
            with pytest.raises(psycopg.errors.InsufficientPrivilege), other.transaction():
                other.execute("SELECT FROM kpi.kpi_applier_rest FOR UPDATE")
            conn.execute("INSERT INTO listings (price, status, listed_at) VALUES (1, 'active', now())")
            db = Database(make_settings(database_url))
            try:
                assert db.apply_changes(wait=True) == 1
            finally:
                db.close()
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(stranger)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(stranger)))


def test_the_applier_rests_while_the_application_works(database_url: str, conn: psycopg.Connection) -> None:
    """KPI_APPLY_BUSY_PERCENT: a batch that found the application's sessions at work is followed
    by a rest, for every instance's applier; none when the application is idle, none at 100%."""
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    Dataset([1], [Listing(1, Decimal("100.00"), "active", at)], [], []).insert(conn)
    db = Database(make_settings(database_url))
    tiny = 0.0001  # rests 9,999 times the batch's duration: still resting at the next call
    try:
        with psycopg.connect(database_url, autocommit=True, application_name="dealership") as app:

            def work() -> None:
                with contextlib.suppress(psycopg.errors.QueryCanceled):
                    app.execute("SELECT pg_sleep(60)")

            working = threading.Thread(target=work, daemon=True)
            working.start()
            try:
                wait_until(
                    lambda: (
                        conn.execute(
                            "SELECT FROM pg_stat_activity WHERE pid = %s AND state = 'active'", [app.info.backend_pid]
                        ).fetchone()
                        is not None
                    )
                )
                conn.execute("UPDATE listings SET price = 120")
                assert db.apply_changes(busy_share=tiny) == 2
                conn.execute("UPDATE listings SET price = 130")
                assert db.apply_changes(busy_share=tiny) is None  # resting, as if another applied
                assert pending(conn) == 2
                assert db.apply_changes() == 2  # at 100%: no rest
                conn.execute("UPDATE listings SET price = 135")
                assert db.apply_changes(busy_share=tiny) == 2  # and a rest again after this one
            finally:
                conn.execute("SELECT pg_cancel_backend(%s)", [app.info.backend_pid])
                working.join(timeout=10)
        # Still within the rest, but the application is idle now: the rest ends early.
        assert conn.execute("SELECT until > now() FROM kpi.kpi_applier_rest").fetchone() == (True,)
        conn.execute("UPDATE listings SET price = 140")
        assert db.apply_changes(busy_share=tiny) == 2  # and no rest after it either
        conn.execute("UPDATE listings SET price = 150")
        assert db.apply_changes(busy_share=tiny) == 2
    finally:
        db.close()
    applied, rebuilt = applied_and_rebuilt(conn)
    assert applied == rebuilt


def test_a_paced_batch_is_short_enough_for_its_rest() -> None:
    """A rest is at most 5 s, so a paced batch must be short for the applier to keep to its share:
    the next batch is sized to last PACED_BATCH_S at the last one's rate."""
    assert paced_batch(30_000, 3.0) == 2_500  # 10,000 rows/s: a quarter of a second
    assert paced_batch(100_000, 0.1) == APPLY_BATCH  # no more than an unpaced batch
    assert paced_batch(100, 10.0) == MIN_BATCH  # a slow server still makes progress


def test_a_truncate_stops_the_summaries_until_they_are_built_anew(conn: psycopg.Connection) -> None:
    """Issue 33, item 9: the batch that takes a TRUNCATE does not rebuild (at ten million listings
    a rebuild outlasts any batch, and was retried for ever); the KPIs are read from the rows until
    the service builds the summaries anew, without a statement timeout."""
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    Dataset(
        [1], [Listing(1, Decimal("100.00"), "sold", at)], [Lead(1, 1, at)], [Purchase(1, 1, 1, Decimal("90"), at, 1)]
    ).insert(conn)
    assert conn.execute("SELECT count(*) FROM kpi.kpi_buyer_buckets").fetchone() == (1,)
    conn.execute("TRUNCATE purchases, leads, listings, buyers")
    assert in_applier_turn(conn, "SELECT kpi.kpi_apply_changes()") == 3
    assert conn.execute("SELECT kpi.kpi_source(), count(*) FROM kpi.kpi_buyer_buckets").fetchone() == ("raw", 1)
    assert in_applier_turn(conn, "SELECT kpi.kpi_rebuild_if_needed(60)") is True
    assert conn.execute("SELECT kpi.kpi_source()").fetchone() == ("summaries",)
    assert summaries(conn) == ([], [], [], [])


def test_a_truncate_of_an_empty_table_changes_nothing(conn: psycopg.Connection) -> None:
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    Dataset([1], [Listing(1, Decimal("100.00"), "active", at)], [Lead(1, 1, at)], []).insert(conn)
    kept = summaries(conn)
    conn.execute("TRUNCATE purchases")
    conn.execute(
        "INSERT INTO leads (id, buyer_id, created_at, status) VALUES (2, 1, %s, 'open')", [at + timedelta(days=1)]
    )
    assert in_applier_turn(conn, "SELECT kpi.kpi_apply_changes()") == 2  # the TRUNCATE and the insert
    assert conn.execute("SELECT kpi.kpi_source()").fetchone() == ("summaries",)
    applied, rebuilt = applied_and_rebuilt(conn)
    assert applied == rebuilt != kept


def test_the_service_builds_the_summaries_anew_after_a_truncate(
    make_app: Callable[..., Flask], conn: psycopg.Connection, auth: dict[str, str]
) -> None:
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    Dataset([1], [Listing(1, Decimal("100.00"), "active", at)], [Lead(1, 1, at)], []).insert(conn)
    app = make_app(apply_interval=APPLYING)
    app.extensions["kpi"].db.mode_every = 0.2
    conn.execute("TRUNCATE purchases, leads")
    wait_until(lambda: conn.execute("SELECT kpi.kpi_source()").fetchone() == ("raw",))
    # Once every instance has noticed (its mode looked up again, here every 0.2 s) and 5 s more.
    wait_until(lambda: conn.execute("SELECT kpi.kpi_source()").fetchone() == ("summaries",), seconds=60)
    applied, rebuilt = applied_and_rebuilt(conn)
    assert applied == rebuilt
    body = app.test_client().get("/api/kpi?from=2026-03-01&to=2026-03-01", headers=auth).get_json()
    assert (body["metrics"]["total_listings"], body["metrics"]["active_buyers"]) == (1, 0)


def test_one_statement_that_changes_two_tables(conn: psycopg.Connection) -> None:
    """A purchase and its lead deleted together (or by a cascade)."""
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    Dataset(
        [1],
        [Listing(1, Decimal("100.00"), "sold", at, Decimal("50.00"), sold_at=at)],
        [Lead(1, 1, at - timedelta(days=1))],
        [Purchase(1, 1, 1, Decimal("90.00"), at, lead_id=1)],
    ).insert(conn)
    conn.execute(
        "WITH p AS (DELETE FROM purchases WHERE id = 1 RETURNING lead_id)"
        " DELETE FROM leads WHERE id IN (SELECT lead_id FROM p)"
    )
    conn.execute("DELETE FROM listings WHERE id = 1")
    applied, rebuilt = applied_and_rebuilt(conn)
    assert applied == rebuilt == ([], [], [], [])


def test_the_application_waits_for_nothing_new(database_url: str, conn: psycopg.Connection) -> None:
    """Two transactions adding leads for the same two buyers in opposite orders, and a sale, all
    open at once while the applier runs: without the service none of them waits for another, and
    with it none does either (the triggers only append to the log; the applier takes no lock
    a writer needs)."""
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    Dataset([1, 2], [Listing(1, Decimal("100.00"), "active", at, Decimal("60.00"))], [Lead(1, 1, at)], []).insert(conn)
    lead = "INSERT INTO leads (id, buyer_id, created_at, status) VALUES (%s, %s, %s, 'open')"
    with (
        psycopg.connect(database_url) as first,
        psycopg.connect(database_url) as second,
        psycopg.connect(database_url) as third,
        psycopg.connect(database_url) as applier,
    ):
        first.execute(lead, [2, 1, at])
        second.execute(lead, [3, 2, at])
        first.execute(lead, [4, 2, at])
        second.execute(lead, [5, 1, at])
        third.execute("UPDATE listings SET status = 'sold', sold_at = %s, acquisition_cost = 55 WHERE id = 1", [at])
        third.execute(
            "INSERT INTO purchases (listing_id, buyer_id, lead_id, sale_price, purchased_at) VALUES (1, 1, 1, 90, %s)",
            [at],
        )
        applier.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        applier.execute("SELECT kpi.kpi_apply_changes()")  # sees none of their rows, and waits for none
        for session in (first, second, third, applier):
            assert not blocked(conn, session)
        for session in (first, second, third, applier):
            session.commit()
    applied, rebuilt = applied_and_rebuilt(conn)
    assert applied == rebuilt
    assert conn.execute("SELECT sum(leads), sum(converted) FROM kpi.kpi_sums WHERE grain = 900").fetchone() == (5, 1)


def test_the_service_applies_changes_by_itself(
    make_app: Callable[..., Flask], auth: dict[str, str], conn: psycopg.Connection
) -> None:
    """The app's own applier (KPI_APPLY_INTERVAL_MS, 500 ms by default) takes in a write that no
    one applied, and the next cache miss shows it."""
    client = make_app(apply_interval=Settings.apply_interval).test_client()
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    Dataset([1], [Listing(1, Decimal("100.00"), "active", at)], [], []).insert(conn)
    conn.execute("UPDATE listings SET price = 120")
    assert pending(conn) == 2
    wait_until(lambda: pending(conn) == 0)
    response = client.get("/api/kpi", headers=auth)
    assert response.json["metrics"]["total_value"] == 120.0


@st.composite
def off_grid_windows(draw: st.DrawFn) -> Window:
    """A window with an edge off the 15-minute grid, often a microsecond from an event."""
    lo, hi = sorted([draw(instants()), draw(instants())])
    return Window(draw(st.one_of(st.none(), st.just(lo))), hi + timedelta(microseconds=1))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), aged_days=aged_days_choices, now=instants())
def test_windows_off_the_grid_read_the_raw_rows_and_agree(
    database: Database, conn: psycopg.Connection, data: st.DataObject, aged_days: int, now: datetime
) -> None:
    dataset = data.draw(datasets())
    dataset.insert(conn)
    # Mixed with windows on the grid, as one statement would get them.
    shown = data.draw(st.lists(st.one_of(off_grid_windows(), windows()), min_size=1, max_size=5))
    assert computed(database, shown, aged_days, now) == expected(dataset, shown, aged_days, now)


def build_for(conn: psycopg.Connection, aged_days: int) -> None:
    """What init-db does with KPI_AGED_DAYS = aged_days (kpi_build)."""
    in_applier_turn(conn, "SELECT true FROM kpi.kpi_build(%s)", [aged_days])


def test_a_daily_history_counts_aged_inventory_exactly_at_its_edges(
    database: Database, conn: psycopg.Connection
) -> None:
    """aged_inventory of a daily history across a DST day, with the aged_days the summaries count
    long sales for (60: from buckets alone) and with another (7: from the sales), each day with
    listings a microsecond either side of T - aged_days and of a long sale's edge: sold exactly at
    T, and sold exactly aged_days after listing. Then again after init-db with KPI_AGED_DAYS = 7
    counts the long sales anew for 7, and after changes the applier takes in."""
    zone = "Europe/Berlin"  # 2026-03-29 has 23 hours
    shown = [Window.of_dates(date(2026, 3, 24) + timedelta(days=k), date(2026, 3, 24) + timedelta(days=k), zone)
             for k in range(10)]  # fmt: skip
    now = datetime(2026, 4, 2, 9, 7, 5, 123456, tzinfo=UTC)  # inside the last day: its T is now, off the grid
    us = timedelta(microseconds=1)
    edges = []  # (listed_at, sold_at or None)
    for at in [w.as_of(now) for w in shown]:
        for days in (60, 7):
            span = timedelta(days=days)
            before = at - span
            edges += [
                (before, None), (before - us, None), (before + us, None),  # listed at the edge
                (before - us, at), (before - us, at + us), (before - us, at - us),  # sold at T, just after, before
                (before, at),  # sold exactly aged_days after listing, at T
                (before - timedelta(hours=5), at - timedelta(hours=5)),  # exactly aged_days: short, before T
                (before - timedelta(hours=5), at - timedelta(hours=5) + us),  # a microsecond longer: long
                (before + timedelta(hours=3), at + timedelta(hours=3)),  # exactly aged_days, after T
            ]  # fmt: skip
    listings = [
        Listing(i, Decimal("10.00"), "sold" if sold else ("withdrawn" if i % 13 == 0 else "active"), listed, None, sold)
        for i, (listed, sold) in enumerate(edges, 1)
    ]
    data = Dataset([1], listings, [], [])
    data.insert(conn)
    try:
        for recorded in (60, 7):
            if recorded != 60:
                build_for(conn, recorded)
            assert conn.execute("SELECT aged_days FROM kpi.kpi_summary_state").fetchone() == (recorded,)
            for aged_days in (60, 7):
                assert computed(database, shown, aged_days, now) == expected(data, shown, aged_days, now)
        # Sales moved by a microsecond across the edges, and unsold: the applier's differences.
        for listing in data.listings[::3]:
            if listing.sold_at is not None:
                listing.sold_at += us
                conn.execute("UPDATE listings SET sold_at = %s WHERE id = %s", [listing.sold_at, listing.id])
        for listing in data.listings[1::7]:
            listing.status, listing.sold_at = "active", None
            conn.execute("UPDATE listings SET status = 'active', sold_at = NULL WHERE id = %s", [listing.id])
        for aged_days in (60, 7):
            assert computed(database, shown, aged_days, now) == expected(data, shown, aged_days, now)
        assert [m["aged_inventory"] for m in computed(database, shown, 7, now)] != [0] * len(shown)
    finally:
        build_for(conn, 60)


def test_a_day_in_local_mean_time(database: Database, conn: psycopg.Connection) -> None:
    # Liberia kept -0:44:30 until 1972: its midnights are off the grid.
    day = Window.of_dates(date(1930, 6, 1), date(1930, 6, 1), "Africa/Monrovia")
    assert day.start is not None and day.start.minute == 44
    listed = [day.start - timedelta(microseconds=1), day.start, day.start + timedelta(hours=23, minutes=59)]
    data = Dataset([1], [Listing(i, Decimal("10.00"), "active", at) for i, at in enumerate(listed, 1)], [], [])
    data.insert(conn)
    now = datetime(2026, 11, 25, tzinfo=UTC)
    assert computed(database, [day], 60, now) == expected(data, [day], 60, now)
    assert computed(database, [day], 60, now)[0]["total_listings"] == 2


@pytest.fixture(scope="module")
def raw_database(raw_database_url: str) -> Iterator[Database]:
    db = Database(make_settings(raw_database_url))
    yield db
    db.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), aged_days=aged_days_choices, now=instants())
def test_without_summaries_the_raw_rows_give_the_same_numbers(
    raw_database: Database, raw_database_url: str, data: st.DataObject, aged_days: int, now: datetime
) -> None:
    assert raw_database.mode() == "raw"
    dataset = data.draw(datasets())
    with psycopg.connect(raw_database_url, autocommit=True) as conn:
        dataset.insert(conn)
    shown = data.draw(st.lists(st.one_of(off_grid_windows(), windows()), min_size=1, max_size=4))
    assert computed(raw_database, shown, aged_days, now) == expected(dataset, shown, aged_days, now)


def test_readiness_says_where_the_numbers_come_from(raw_database_url: str) -> None:
    app = create_app(make_settings(raw_database_url))
    try:
        body = app.test_client().get("/readyz").get_json()
    finally:
        app.extensions["kpi"].close()
    assert body["status"] == "ready" and body["checks"]["kpi_source"] == "raw"
    assert "pending_changes" not in body["checks"]


def test_a_disabled_trigger_switches_to_the_raw_rows(database: Database, conn: psycopg.Connection) -> None:
    """The log would miss that table's changes: the summaries cannot be trusted any more."""
    assert database.mode(refresh=True) == "summaries"
    conn.execute("ALTER TABLE leads DISABLE TRIGGER kpi_leads_insert")
    try:
        assert database.mode(refresh=True) == "raw"
        at = datetime(2026, 3, 1, 12, tzinfo=UTC)
        conn.execute("INSERT INTO buyers (id, name) VALUES (1, 'b')")
        conn.execute("INSERT INTO leads (buyer_id, created_at, status) VALUES (1, %s, 'open')", [at])
        rows, *_ = database.kpi_rows([(None, None, at + timedelta(days=1))], 60)
        assert rows[0]["active_buyers"] == 1
    finally:
        conn.execute("ALTER TABLE leads ENABLE ALWAYS TRIGGER kpi_leads_insert")
        with conn.transaction():  # what an operator does after re-enabling it
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            conn.execute("SELECT kpi.kpi_rebuild()")
    assert database.mode(refresh=True) == "summaries"


def test_a_rescore_and_a_delete_in_one_batch_remove_the_sale(conn: psycopg.Connection) -> None:
    """Logged as old and new image of one value, then the old again: the batch must still see
    that the listing went (found by the test above)."""
    conn.execute(
        "INSERT INTO listings (id, price, status, listed_at, sold_at) VALUES (1, 1, 'sold', %s, %s)",
        [datetime(2026, 2, 28, 18, 30, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC)],
    )
    catch_up(conn)
    assert conn.execute(SALES).fetchall() != []
    conn.execute("UPDATE listings SET score = 5 WHERE id = 1")
    conn.execute("DELETE FROM listings WHERE id = 1")
    applied, rebuilt = applied_and_rebuilt(conn)
    assert applied == rebuilt and applied[2] == []


def test_a_sale_looked_up_by_a_partial_batch_then_deleted_is_removed(conn: psycopg.Connection) -> None:
    """A batch cut short looks the sale up (the listing is sold by then) while the sale's new
    image stays in the log; deleted afterwards, the rows left cancel out: still removed."""
    conn.execute(
        "INSERT INTO listings (id, price, status, listed_at) VALUES (1, 1, 'active', %s)",
        [datetime(2026, 2, 28, 18, 30, tzinfo=UTC)],
    )
    catch_up(conn)
    conn.execute("UPDATE listings SET status = 'sold', sold_at = listed_at + interval '1 day' WHERE id = 1")
    in_one_snapshot(conn, "SELECT kpi.kpi_apply_changes(max_rows => 1)")
    conn.execute("DELETE FROM listings WHERE id = 1")
    applied, rebuilt = applied_and_rebuilt(conn)
    assert applied == rebuilt and applied[2] == []


@pytest.mark.parametrize("max_rows", [APPLY_BATCH, 1], ids=["one batch", "a row a batch"])
def test_a_lead_moved_or_a_cost_changed_reaches_the_purchase(conn: psycopg.Connection, max_rows: int) -> None:
    """The applier looks a purchase up again when a batch takes an old image of its listing or
    lead with another cost or instant, whether the new image comes in the same batch or not (an
    image taken alone with no old one is an insert, which has no purchase yet)."""
    conn.execute("INSERT INTO buyers (id, name) VALUES (1, 'b')")
    conn.execute(
        "INSERT INTO listings (id, price, acquisition_cost, status, listed_at, sold_at)"
        " VALUES (1, 100, 60, 'sold', '2026-02-01T10:00Z', '2026-03-01T10:00Z')"
    )
    conn.execute(
        "INSERT INTO leads (id, buyer_id, listing_id, created_at, status)"
        " VALUES (1, 1, 1, '2026-02-20T10:00Z', 'converted')"
    )
    conn.execute(
        "INSERT INTO purchases (id, listing_id, buyer_id, lead_id, sale_price, purchased_at)"
        " VALUES (1, 1, 1, 1, 90, '2026-03-01T10:00Z')"
    )
    catch_up(conn)
    for change in ("UPDATE leads SET created_at = '2026-02-10T10:00Z'", "UPDATE listings SET acquisition_cost = 50"):
        conn.execute(change + " WHERE id = 1")
        while pending(conn):
            in_one_snapshot(conn, "SELECT kpi.kpi_apply_changes(max_rows => %s)", [max_rows])
        applied, rebuilt = applied_and_rebuilt(conn)
        assert applied == rebuilt, change


def test_a_batch_names_the_whole_buckets_it_changed(conn: psycopg.Connection) -> None:
    """kpi.changed's from and to span the 15-minute buckets the batch added to, edge to edge: a
    window off the grid from 10:05 changes with a lead at 10:07 (and what a batch adds to a
    bucket may have come from a row at another instant: a purchase's, for its listing's cost)."""
    conn.execute("INSERT INTO buyers (id, name) VALUES (1, 'b')")
    conn.execute("INSERT INTO leads (id, buyer_id, created_at, status) VALUES (1, 1, '2026-03-05T10:07Z', 'open')")
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        conn.execute("SELECT kpi.kpi_apply_changes()")
        changed = json.loads(conn.execute("SELECT current_setting('kpi.changed', true)").fetchone()[0])
    assert (datetime.fromisoformat(changed["from"]), datetime.fromisoformat(changed["to"])) == (
        datetime(2026, 3, 5, 10, 0, tzinfo=UTC),
        datetime(2026, 3, 5, 10, 14, 59, 999999, tzinfo=UTC),
    )


def test_a_batch_names_stock_changes_only_for_listings_that_can_be_in_stock(conn: psycopg.Connection) -> None:
    """kpi.changed's stock_from (which windows' aged_inventory a batch can change, for the
    freshness of every reader): an active listing inserted counts; a rescore and a withdrawn
    listing inserted do not."""

    def stock_from(statement: str) -> str | None:
        conn.execute(statement)
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            conn.execute("SELECT kpi.kpi_apply_changes()")
            changed = conn.execute("SELECT current_setting('kpi.changed', true)").fetchone()[0]
        return json.loads(changed)["stock_from"]

    active = "INSERT INTO listings (id, price, status, listed_at) VALUES (1, 1, 'active', '2026-02-28T18:30Z')"
    assert stock_from(active).startswith("2026-02-28T18:30:00")
    assert stock_from("UPDATE listings SET score = 5 WHERE id = 1") is None
    withdrawn = "INSERT INTO listings (id, price, status, listed_at) VALUES (2, 1, 'withdrawn', '1990-01-01T00:00Z')"
    assert stock_from(withdrawn) is None
    assert stock_from("UPDATE listings SET status = 'active' WHERE id = 2").startswith("1990-01-01")
