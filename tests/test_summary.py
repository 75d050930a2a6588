"""The summaries of sql/summary.sql: what the triggers maintain equals a rebuild from the sales
tables after any change, compaction keeps every sum, concurrent writers cannot lose a change,
and windows off the 15-minute grid (read from the raw rows) agree with the reference."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import psycopg
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kpi_service.db import Database
from kpi_service.windows import Window
from tests.conftest import wait_until
from tests.dataset import Dataset, Lead, Listing, Purchase
from tests.strategies import datasets, instants, windows
from tests.test_kpi_changes import apply_change, computed, expected

SUMS = """
    SELECT grain, bucket, sum(listings), sum(price_sum), sum(scored), sum(score_sum), sum(leads), sum(converted),
           sum(costed), sum(profit_sum), sum(led), sum(lead_seconds), sum(buyer_buckets), sum(buyer_links)
    FROM kpi_sums GROUP BY grain, bucket ORDER BY grain, bucket
"""
BUYERS = "SELECT buyer_id, bucket, prev_bucket FROM kpi_buyer_buckets ORDER BY 1, 2"


def sums(conn: psycopg.Connection) -> list[tuple]:
    """Each bucket's value (the sum of its rows), leaving out buckets whose sums are all zero."""
    return [row for row in conn.execute(SUMS) if any(row[2:])]


def maintained_and_rebuilt(conn: psycopg.Connection) -> tuple[tuple[list, list], tuple[list, list]]:
    """The summaries as the triggers left them, and as kpi_rebuild() makes them (rolled back)."""
    maintained = (sums(conn), conn.execute(BUYERS).fetchall())
    with conn.transaction(force_rollback=True):
        conn.execute("SELECT kpi_rebuild()")
        rebuilt = (sums(conn), conn.execute(BUYERS).fetchall())
    return maintained, rebuilt


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_triggers_keep_what_a_rebuild_makes(conn: psycopg.Connection, data: st.DataObject) -> None:
    dataset = data.draw(datasets())
    dataset.insert(conn)
    for _ in range(data.draw(st.integers(1, 10))):
        apply_change(conn, dataset, data.draw)
    maintained, rebuilt = maintained_and_rebuilt(conn)
    assert maintained == rebuilt
    # Compaction leaves one row per bucket and the same sums.
    conn.execute("SELECT kpi_compact()")
    assert sums(conn) == maintained[0]
    assert not conn.execute("SELECT FROM kpi_sums GROUP BY grain, bucket HAVING count(*) > 1").fetchall()


def test_a_statement_that_changes_nothing_a_kpi_reads_adds_no_rows(conn: psycopg.Connection) -> None:
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    Dataset([1], [Listing(1, Decimal("100.00"), "active", at)], [Lead(1, 1, at)], []).insert(conn)
    rows = conn.execute("SELECT count(*) FROM kpi_sums").fetchone()
    conn.execute("UPDATE listings SET make = 'Skoda', status = 'pending'")
    conn.execute("UPDATE leads SET status = 'lost'")
    assert conn.execute("SELECT count(*) FROM kpi_sums").fetchone() == rows


def test_a_truncate_empties_the_summaries(conn: psycopg.Connection) -> None:
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    Dataset(
        [1], [Listing(1, Decimal("100.00"), "sold", at)], [Lead(1, 1, at)], [Purchase(1, 1, 1, Decimal("90"), at, 1)]
    ).insert(conn)
    assert conn.execute("SELECT count(*) FROM kpi_buyer_buckets").fetchone() == (1,)
    conn.execute("TRUNCATE purchases, leads, listings, buyers")
    assert sums(conn) == []
    assert conn.execute(BUYERS).fetchall() == []


def test_concurrent_writers_cannot_lose_a_change(database_url: str, conn: psycopg.Connection) -> None:
    """A listing's cost changes while, in another transaction, a purchase of that listing is
    inserted. Each trigger reads the other table: the purchase's trigger must wait for the cost
    change to commit and read the new cost, or the profit sum stays wrong for good."""
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    Dataset([1], [Listing(1, Decimal("100.00"), "sold", at, Decimal("50.00"))], [], []).insert(conn)
    with psycopg.connect(database_url) as first, psycopg.connect(database_url) as second:
        first.execute("UPDATE listings SET acquisition_cost = 70 WHERE id = 1")  # not committed yet
        done = threading.Event()

        def buy() -> None:
            second.execute(
                "INSERT INTO purchases (listing_id, buyer_id, sale_price, purchased_at) VALUES (1, 1, 90, %s)", [at]
            )
            second.commit()
            done.set()

        thread = threading.Thread(target=buy)
        thread.start()
        try:
            # The purchase's trigger waits for the first transaction's lock on the listing.
            wait_until(
                lambda: (
                    conn.execute(
                        "SELECT FROM pg_locks WHERE pid = %s AND NOT granted", [second.info.backend_pid]
                    ).fetchone()
                    is not None
                )
            )
            assert not done.is_set()
        finally:
            first.commit()
            thread.join(timeout=10)
        assert done.is_set()
    maintained, rebuilt = maintained_and_rebuilt(conn)
    assert maintained == rebuilt
    assert conn.execute("SELECT sum(profit_sum) FROM kpi_sums WHERE grain = 900").fetchone() == (Decimal("20.00"),)


def test_one_statement_that_changes_two_tables(conn: psycopg.Connection) -> None:
    """A purchase and its lead deleted together (or by a cascade): each trigger runs after the
    whole statement and must not look for the other's row to subtract what it added."""
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    Dataset(
        [1],
        [Listing(1, Decimal("100.00"), "sold", at, Decimal("50.00"))],
        [Lead(1, 1, at - timedelta(days=1))],
        [Purchase(1, 1, 1, Decimal("90.00"), at, lead_id=1)],
    ).insert(conn)
    conn.execute(
        "WITH p AS (DELETE FROM purchases WHERE id = 1 RETURNING lead_id)"
        " DELETE FROM leads WHERE id IN (SELECT lead_id FROM p)"
    )
    conn.execute("DELETE FROM listings WHERE id = 1")
    maintained, rebuilt = maintained_and_rebuilt(conn)
    assert maintained == rebuilt
    assert sums(conn) == []


def test_writers_of_different_rows_do_not_deadlock(database_url: str, conn: psycopg.Connection) -> None:
    """Two transactions each changing their own listing, the first then the second's: without
    triggers the first just waits for the second to commit; the triggers must not add a lock
    that turns this into a deadlock."""
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    Dataset([1], [Listing(1, Decimal("1.00"), "active", at), Listing(2, Decimal("2.00"), "active", at)], [], []).insert(
        conn
    )
    with psycopg.connect(database_url) as first, psycopg.connect(database_url) as second:
        first.execute("UPDATE listings SET price = 101, acquisition_cost = 1 WHERE id = 1")
        second.execute("UPDATE listings SET price = 102, acquisition_cost = 2 WHERE id = 2")
        thread = threading.Thread(target=lambda: first.execute("UPDATE listings SET price = 103 WHERE id = 2"))
        thread.start()
        wait_until(
            lambda: (
                conn.execute("SELECT FROM pg_locks WHERE pid = %s AND NOT granted", [first.info.backend_pid]).fetchone()
                is not None
            )
        )
        second.commit()
        thread.join(timeout=10)
        first.commit()
    assert conn.execute("SELECT sum(price) FROM listings").fetchone() == (Decimal("204.00"),)
    maintained, rebuilt = maintained_and_rebuilt(conn)
    assert maintained == rebuilt


@st.composite
def off_grid_windows(draw: st.DrawFn) -> Window:
    """A window with an edge off the 15-minute grid, often a microsecond from an event."""
    lo, hi = sorted([draw(instants()), draw(instants())])
    return Window(draw(st.one_of(st.none(), st.just(lo))), hi + timedelta(microseconds=1))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), aged_days=st.integers(1, 30), now=instants())
def test_windows_off_the_grid_read_the_raw_rows_and_agree(
    database: Database, conn: psycopg.Connection, data: st.DataObject, aged_days: int, now: datetime
) -> None:
    dataset = data.draw(datasets())
    dataset.insert(conn)
    # Mixed with windows on the grid, as one statement would get them.
    shown = data.draw(st.lists(st.one_of(off_grid_windows(), windows()), min_size=1, max_size=5))
    assert computed(database, shown, aged_days, now) == expected(dataset, shown, aged_days, now)


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


def test_the_service_merges_the_rows_after_a_computation(
    client: FlaskClient, auth: dict[str, str], conn: psycopg.Connection
) -> None:
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    Dataset([1], [Listing(1, Decimal("100.00"), "active", at)], [], []).insert(conn)
    conn.execute("UPDATE listings SET price = 120")
    assert conn.execute("SELECT count(*) FROM kpi_sums").fetchone() == (4,)
    response = client.get("/api/kpi", headers=auth)
    assert response.json["metrics"]["total_value"] == 120.0
    wait_until(lambda: conn.execute("SELECT count(*) FROM kpi_sums").fetchone() == (2,))
