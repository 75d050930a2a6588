"""sql/runtime/kpi.sql stays exact when the application changes rows after inserting them, and on
realistic (seeded) data: the SQL against the pure-Python reference of docs/kpis.md.

The application UPDATEs its rows later (scored, repriced, sold, withdrawn, a purchase added
for an old lead) and deletes some; anything the KPI statement keeps or derives must follow.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kpi_service.cli.seed import seed
from kpi_service.db.database import Database
from kpi_service.serving.query import MetricsSchema
from kpi_service.serving.windows import Window
from tests import reference
from tests.dataset import Dataset, Lead, Listing, Purchase
from tests.strategies import datasets, instants, money, scores, windows

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)


def computed(db: Database, windows: list[Window], aged_days: int, now: datetime) -> list[dict[str, Any]]:
    """What a cache miss returns once the applier has taken in every committed change."""
    if db.mode() == "summaries":
        db.apply_changes(wait=True)
    rows, *_ = db.kpi_rows([(w.start, w.end, w.as_of(now)) for w in windows], aged_days)
    return [MetricsSchema().load(row) for row in rows]


def expected(data: Dataset, windows: list[Window], aged_days: int, now: datetime) -> list[dict[str, Any]]:
    return [reference.kpis(data, w.start, w.end, w.as_of(now), aged_days) for w in windows]


# --- changes after the insert -----------------------------------------------------------------


def apply_change(conn: psycopg.Connection, data: Dataset, draw: st.DrawFn) -> None:
    """One change the application makes to its rows, in the database and in `data` alike."""
    kinds = ["insert_listing", "insert_lead"]
    if data.listings:
        kinds += ["score", "reprice", "sell", "withdraw", "relist", "delete_listing"]
    if data.leads:
        kinds += ["move_lead", "delete_lead"]
    sellable = [x for x in data.listings if x.id not in {p.listing_id for p in data.purchases}]
    if sellable:
        kinds.append("purchase")
    if data.purchases:
        kinds += ["delete_purchase", "relink_purchase"]
    kind = draw(st.sampled_from(kinds))
    instant = instants()
    if kind == "insert_listing":
        listing = Listing(max((x.id for x in data.listings), default=0) + 1, draw(money), "active", draw(instant))
        conn.execute(
            "INSERT INTO listings (id, price, status, listed_at) VALUES (%s, %s, %s, %s)",
            [listing.id, listing.price, listing.status, listing.listed_at],
        )
        data.listings.append(listing)
    elif kind == "insert_lead":
        lead = Lead(max((x.id for x in data.leads), default=0) + 1, draw(st.sampled_from(data.buyers)), draw(instant))
        conn.execute(
            "INSERT INTO leads (id, buyer_id, created_at, status) VALUES (%s, %s, %s, 'open')",
            [lead.id, lead.buyer_id, lead.created_at],
        )
        data.leads.append(lead)
    elif kind in ("score", "reprice", "sell", "withdraw", "relist"):
        listing = draw(st.sampled_from(data.listings))
        if kind == "score":
            listing.score = draw(st.one_of(st.none(), scores))
        elif kind == "reprice":
            listing.price = draw(money)
            listing.acquisition_cost = draw(st.one_of(st.none(), money))
        elif kind == "sell":
            listing.status, listing.sold_at = "sold", draw(instant)
        elif kind == "withdraw":
            listing.status, listing.sold_at = "withdrawn", None
        else:  # corrected listing instant
            listing.listed_at = draw(instant)
        conn.execute(
            "UPDATE listings SET price = %s, acquisition_cost = %s, status = %s, listed_at = %s, sold_at = %s,"
            " score = %s WHERE id = %s",
            [
                listing.price,
                listing.acquisition_cost,
                listing.status,
                listing.listed_at,
                listing.sold_at,
                listing.score,
                listing.id,
            ],
        )
    elif kind == "delete_listing":
        listing = draw(st.sampled_from(data.listings))
        # The application removes what refers to it first (the foreign keys demand it).
        gone = [p for p in data.purchases if p.listing_id == listing.id]
        conn.execute("DELETE FROM purchases WHERE listing_id = %s", [listing.id])
        conn.execute("UPDATE leads SET listing_id = NULL WHERE listing_id = %s", [listing.id])
        conn.execute("DELETE FROM listings WHERE id = %s", [listing.id])
        data.purchases = [p for p in data.purchases if p not in gone]
        data.listings.remove(listing)
    elif kind == "move_lead":
        lead = draw(st.sampled_from(data.leads))
        lead.created_at, lead.buyer_id = draw(instant), draw(st.sampled_from(data.buyers))
        conn.execute(
            "UPDATE leads SET created_at = %s, buyer_id = %s WHERE id = %s", [lead.created_at, lead.buyer_id, lead.id]
        )
    elif kind == "delete_lead":
        lead = draw(st.sampled_from(data.leads))
        conn.execute("UPDATE purchases SET lead_id = NULL WHERE lead_id = %s", [lead.id])
        conn.execute("DELETE FROM leads WHERE id = %s", [lead.id])
        for p in data.purchases:
            if p.lead_id == lead.id:
                p.lead_id = None
        data.leads.remove(lead)
    elif kind == "purchase":  # often for an old lead: conversion of a past window changes
        listing = draw(st.sampled_from(sellable))
        free = sorted({x.id for x in data.leads} - {p.lead_id for p in data.purchases})
        purchase = Purchase(
            max((p.id for p in data.purchases), default=0) + 1,
            listing.id,
            draw(st.sampled_from(data.buyers)),
            draw(money),
            draw(instant),
            draw(st.one_of(st.none(), st.sampled_from(free))) if free else None,
        )
        conn.execute(
            "INSERT INTO purchases (id, listing_id, buyer_id, lead_id, sale_price, purchased_at)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            [purchase.id, purchase.listing_id, purchase.buyer_id, purchase.lead_id, purchase.sale_price,
             purchase.purchased_at],
        )  # fmt: skip
        data.purchases.append(purchase)
    elif kind == "delete_purchase":
        purchase = draw(st.sampled_from(data.purchases))
        conn.execute("DELETE FROM purchases WHERE id = %s", [purchase.id])
        data.purchases.remove(purchase)
    else:  # relink_purchase: the sale is attributed to another lead, or to none
        purchase = draw(st.sampled_from(data.purchases))
        free = sorted({x.id for x in data.leads} - {p.lead_id for p in data.purchases})
        purchase.lead_id = draw(st.one_of(st.none(), st.sampled_from(free))) if free else None
        purchase.purchased_at = draw(instant)
        conn.execute(
            "UPDATE purchases SET lead_id = %s, purchased_at = %s WHERE id = %s",
            [purchase.lead_id, purchase.purchased_at, purchase.id],
        )


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
