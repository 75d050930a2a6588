"""sql/runtime/kpi.sql stays exact when the application changes rows after inserting them, and on
realistic (seeded) data: the SQL against the pure-Python reference of docs/kpis.md.

The application UPDATEs its rows later (scored, repriced, sold, withdrawn, a purchase added
for an old lead) and deletes some; anything the KPI statement keeps or derives must follow.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kpi_service.cli.seed import seed
from kpi_service.db.connections import Database
from kpi_service.serving.windows import Window
from tests.dataset import Dataset, Lead, Listing, Purchase
from tests.helpers import apply_change, computed, expected
from tests.strategies import datasets, instants, windows

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)


# --- changes after the insert -----------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    shown=st.lists(windows(), min_size=1, max_size=4),
    aged_days=st.integers(1, 30),
    now=instants(),
)
def test_changes_after_insert_are_exact(
    database: Database,
    conn: psycopg.Connection,
    data: st.DataObject,
    shown: list[Window],
    aged_days: int,
    now: datetime,
) -> None:
    dataset = data.draw(datasets())
    dataset.insert(conn)
    # Computed once before the changes, as a service that refreshed then would have.
    assert computed(database, shown, aged_days, now) == expected(dataset, shown, aged_days, now)
    for _ in range(data.draw(st.integers(1, 8))):
        apply_change(conn, dataset, data.draw)
    assert computed(database, shown, aged_days, now) == expected(dataset, shown, aged_days, now)


# --- seeded data --------------------------------------------------------------------------------


def load(conn: psycopg.Connection) -> Dataset:
    """The tables' rows as a Dataset for the reference."""
    return Dataset(
        buyers=[row[0] for row in conn.execute("SELECT id FROM buyers")],
        listings=[
            Listing(*row)
            for row in conn.execute(
                "SELECT id, price, status, listed_at, acquisition_cost, sold_at, score FROM listings"
            )
        ],
        leads=[Lead(*row) for row in conn.execute("SELECT id, buyer_id, created_at, listing_id, status FROM leads")],
        purchases=[
            Purchase(*row)
            for row in conn.execute("SELECT id, listing_id, buyer_id, sale_price, purchased_at, lead_id FROM purchases")
        ],
    )


def test_seeded_data_matches_the_reference(database: Database, database_url: str, conn: psycopg.Connection) -> None:
    until = datetime(2026, 11, 25, tzinfo=UTC)
    seed(database_url, 5000, seed=7, until=until, truncate=True)
    data = load(conn)
    assert len(data.listings) == 5000 and data.leads and data.purchases
    last_day = date(2026, 11, 24)
    shown = [
        Window(None, None),
        Window.of_dates(last_day - timedelta(days=364), last_day, "UTC"),
        Window.of_dates(last_day - timedelta(days=29), last_day, "Europe/Berlin"),
        Window.of_dates(date(2025, 3, 1), date(2025, 3, 31), "America/New_York"),
        Window.of_dates(date(2025, 10, 26), date(2025, 10, 26), "Asia/Kolkata"),
        Window.of_dates(None, date(2025, 6, 30), "UTC"),
    ]
    # A week of days as the history would ask for them.
    shown += [Window.of_dates(last_day - timedelta(days=k), last_day - timedelta(days=k), "UTC") for k in range(7)]
    for aged_days in (1, 60):
        assert computed(database, shown, aged_days, until) == expected(data, shown, aged_days, until)
    # Then the application changes some: scores arrive, a price drops, a sale, a withdrawal.
    conn.execute("UPDATE listings SET score = 55.55 WHERE id IN (SELECT id FROM listings WHERE score IS NULL LIMIT 20)")
    conn.execute(
        "UPDATE listings SET price = price - 100 WHERE id IN (SELECT id FROM listings WHERE price > 5000 LIMIT 20)"
    )
    conn.execute(
        "UPDATE listings SET status = 'sold', sold_at = %s WHERE id IN"
        " (SELECT id FROM listings WHERE status = 'active' ORDER BY id LIMIT 5)",
        [until - timedelta(hours=3)],
    )
    conn.execute(
        "UPDATE listings SET status = 'withdrawn' WHERE id IN"
        " (SELECT id FROM listings WHERE status = 'pending' ORDER BY id LIMIT 5)"
    )
    conn.execute("DELETE FROM leads WHERE id IN (SELECT id FROM leads WHERE status = 'lost' ORDER BY id LIMIT 10)")
    data = load(conn)
    assert computed(database, shown, 60, until) == expected(data, shown, 60, until)
