"""sql/runtime/kpi.sql against a real PostgreSQL and the pure-Python reference of docs/kpis.md."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kpi_service.db.connections import Database
from kpi_service.serving.responses import KpiValuesSchema
from kpi_service.serving.windows import Window
from tests import reference
from tests.dataset import Dataset, Lead, Listing, Purchase
from tests.strategies import aged_days_choices, datasets, instants, windows

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)


def compute(db: Database, window: Window, aged_days: int = 60, now: datetime = NOW) -> dict[str, Any]:
    rows, *_ = db.kpi_rows([(window.start, window.end, window.as_of(now))], aged_days)
    return KpiValuesSchema().load(rows[0])


def expected(data: Dataset, window: Window, aged_days: int = 60, now: datetime = NOW) -> dict[str, Any]:
    return reference.kpis(data, window.start, window.end, window.as_of(now), aged_days)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


ALL_TIME = Window(None, None)
ZERO = {
    "average_profit_per_unit": 0.0,
    "lead_to_purchase_time": 0.0,
    "aged_inventory": 0,
    "total_listings": 0,
    "active_buyers": 0,
    "conversion_rate": 0.0,
    "average_price": 0.0,
    "total_value": 0.0,
    "scoring_rate": 0.0,
    "average_score": 0.0,
}


def test_empty_tables_give_zeros_not_nulls(database: Database, conn: psycopg.Connection) -> None:
    assert compute(database, ALL_TIME) == ZERO
    assert compute(database, Window.of_dates(date(2026, 1, 1), date(2026, 1, 31), "Europe/Berlin")) == ZERO


def test_one_sale_through_every_metric(database: Database, conn: psycopg.Connection) -> None:
    data = Dataset(
        buyers=[1, 2],
        listings=[
            Listing(
                1, Decimal("20000.00"), "sold", utc(2026, 1, 10), Decimal("15000.00"), utc(2026, 2, 1), Decimal("80")
            ),
            Listing(2, Decimal("30000.00"), "active", utc(2026, 1, 20)),
        ],
        leads=[Lead(1, 1, utc(2026, 1, 15), 1), Lead(2, 2, utc(2026, 1, 16), 2)],
        purchases=[Purchase(1, 1, 1, Decimal("19000.00"), utc(2026, 2, 1, 12), lead_id=1)],
    )
    data.insert(conn)
    assert compute(database, ALL_TIME) == {
        "average_profit_per_unit": 4000.0,
        "lead_to_purchase_time": 17.5,
        "aged_inventory": 1,  # listing 2; listing 1 was sold long before now
        "total_listings": 2,
        "active_buyers": 2,
        "conversion_rate": 50.0,
        "average_price": 25000.0,
        "total_value": 50000.0,
        "scoring_rate": 50.0,
        "average_score": 80.0,
    }


def test_halves_round_away_from_zero(database: Database, conn: psycopg.Connection) -> None:
    at = utc(2026, 3, 1)
    data = Dataset(
        buyers=[1],
        listings=[
            Listing(1, Decimal("10000.00"), "sold", at, Decimal("10000.00"), at, Decimal("80.00")),
            Listing(2, Decimal("10000.01"), "sold", at, Decimal("10000.00"), at, Decimal("80.01")),
        ],
        purchases=[
            # profits -0.01 and 0.00: the mean -0.005 rounds away from zero to -0.01
            Purchase(1, 1, 1, Decimal("9999.99"), at),
            Purchase(2, 2, 1, Decimal("10000.00"), at),
        ],
    )
    data.insert(conn)
    metrics = compute(database, ALL_TIME)
    assert metrics["average_price"] == 10000.01  # 10000.005
    assert metrics["average_score"] == 80.01  # 80.005
    assert metrics["average_profit_per_unit"] == -0.01  # -0.005


def test_rates_round_to_two_decimals(database: Database, conn: psycopg.Connection) -> None:
    at = utc(2026, 3, 1)
    data = Dataset(
        buyers=[1],
        listings=[Listing(i, Decimal("1.00"), "active", at, score=Decimal(50) if i == 1 else None) for i in (1, 2, 3)],
    )
    data.insert(conn)
    assert compute(database, ALL_TIME)["scoring_rate"] == 33.33


def test_window_start_is_in_and_end_is_out(database: Database, conn: psycopg.Connection) -> None:
    window = Window.of_dates(date(2026, 3, 1), date(2026, 3, 31), "UTC")
    assert window.start == utc(2026, 3, 1) and window.end == utc(2026, 4, 1)
    tick = timedelta(microseconds=1)
    data = Dataset(
        buyers=[1, 2, 3, 4],
        listings=[
            Listing(1, Decimal("100.00"), "active", window.start),
            Listing(2, Decimal("200.00"), "active", window.end),
            Listing(3, Decimal("400.00"), "active", window.end - tick),
            Listing(4, Decimal("800.00"), "active", window.start - tick),
        ],
        leads=[Lead(1, 1, window.start), Lead(2, 2, window.end), Lead(3, 3, window.end - tick)],
        purchases=[Purchase(1, 1, 2, Decimal("1.00"), window.end), Purchase(2, 2, 4, Decimal("1.00"), window.start)],
    )
    data.insert(conn)
    metrics = compute(database, window)
    assert metrics["total_listings"] == 2
    assert metrics["total_value"] == 500.0
    assert metrics["active_buyers"] == 3  # buyers 1 and 3 by lead, 4 by the purchase at start
    assert metrics == expected(data, window)


@pytest.mark.parametrize(
    ("zone", "day", "start", "end"),
    [
        ("Europe/Berlin", date(2026, 3, 29), utc(2026, 3, 28, 23), utc(2026, 3, 29, 22)),  # 23 hours
        ("Europe/Berlin", date(2026, 10, 25), utc(2026, 10, 24, 22), utc(2026, 10, 25, 23)),  # 25 hours
        ("America/New_York", date(2026, 3, 8), utc(2026, 3, 8, 5), utc(2026, 3, 9, 4)),
        ("America/New_York", date(2026, 11, 1), utc(2026, 11, 1, 4), utc(2026, 11, 2, 5)),
        (
            "Asia/Kolkata",
            date(2026, 6, 1),
            datetime(2026, 5, 31, 18, 30, tzinfo=UTC),
            datetime(2026, 6, 1, 18, 30, tzinfo=UTC),
        ),
    ],
)
def test_dst_days_have_their_real_length(
    database: Database, conn: psycopg.Connection, zone: str, day: date, start: datetime, end: datetime
) -> None:
    window = Window.of_dates(day, day, zone)
    assert (window.start, window.end) == (start, end)
    tick = timedelta(microseconds=1)
    instants = [start - tick, start, start + timedelta(hours=12), end - tick, end]
    data = Dataset(listings=[Listing(i, Decimal("10.00"), "active", at) for i, at in enumerate(instants, 1)])
    data.insert(conn)
    assert compute(database, window)["total_listings"] == 3


def test_aged_inventory_is_as_of_the_window_end(database: Database, conn: psycopg.Connection) -> None:
    end_day = date(2026, 6, 30)
    window = Window.of_dates(date(2026, 6, 1), end_day, "UTC")
    as_of = window.end  # before NOW
    cutoff = as_of - timedelta(days=60)
    tick = timedelta(microseconds=1)
    data = Dataset(
        listings=[
            Listing(1, Decimal("1.00"), "active", cutoff - tick),  # aged
            Listing(2, Decimal("1.00"), "active", cutoff),  # exactly 60 days: not older
            Listing(3, Decimal("1.00"), "withdrawn", cutoff - tick),  # withdrawn never counts
            Listing(4, Decimal("1.00"), "sold", cutoff - tick, sold_at=as_of),  # sold at T: gone
            Listing(5, Decimal("1.00"), "sold", cutoff - tick, sold_at=as_of + tick),  # sold after T: in stock
            Listing(6, Decimal("1.00"), "pending", utc(2020, 1, 1)),  # long before the window's start
        ]
    )
    data.insert(conn)
    assert compute(database, window)["aged_inventory"] == 3
    assert compute(database, window) == expected(data, window)


def test_unknown_costs_and_missing_leads_are_left_out(database: Database, conn: psycopg.Connection) -> None:
    at = utc(2026, 5, 5)
    data = Dataset(
        buyers=[1],
        listings=[
            Listing(1, Decimal("100.00"), "sold", at, None, at),
            Listing(2, Decimal("100.00"), "sold", at, Decimal("40.00"), at),
        ],
        leads=[Lead(1, 1, at - timedelta(days=2, hours=12), 2)],
        purchases=[Purchase(1, 1, 1, Decimal("90.00"), at), Purchase(2, 2, 1, Decimal("90.00"), at, lead_id=1)],
    )
    data.insert(conn)
    metrics = compute(database, ALL_TIME)
    assert metrics["average_profit_per_unit"] == 50.0
    assert metrics["lead_to_purchase_time"] == 2.5


# --- generated data against the reference ---------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(window=windows(), aged_days=aged_days_choices, now=instants(), data=st.data())
def test_sql_matches_the_reference(
    database: Database, conn: psycopg.Connection, window: Window, aged_days: int, now: datetime, data: st.DataObject
) -> None:
    as_of = window.as_of(now)
    edges = [at for at in (window.start, window.end, as_of, as_of - timedelta(days=aged_days)) if at is not None]
    dataset = data.draw(datasets(edges))
    dataset.insert(conn)
    assert compute(database, window, aged_days, now) == expected(dataset, window, aged_days, now)
