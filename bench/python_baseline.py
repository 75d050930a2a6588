"""Baseline (b) of bench/kpi_scale.py: the frontend's old way.

The rows are fetched to the client and the ten KPIs computed there, in Python, with exact
Decimal arithmetic and one rounding half away from zero. Rows are sorted by their instant and
a window is sliced with bisect, so the Python side is as fast as it reasonably gets; the fetch
is part of every timed run, as it was for the frontend.
"""

from __future__ import annotations

from bisect import bisect_left
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import psycopg
from psycopg.rows import tuple_row

FAR_PAST = datetime.min.replace(year=1)


def _round(value: Decimal) -> Decimal:
    # ROUND_HALF_UP is half away from zero for Decimal.
    return value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def _mean(total: Decimal, count: int) -> Decimal:
    return _round(total / count) if count else Decimal("0.00")


class Rows:
    """The four tables' relevant columns, fetched in one round trip each."""

    def __init__(self, connection: psycopg.Connection) -> None:
        conn = connection.cursor(row_factory=tuple_row)
        self.listings = conn.execute(
            "SELECT id, listed_at, price, score, status, sold_at, acquisition_cost FROM listings ORDER BY listed_at"
        ).fetchall()
        self.leads = conn.execute("SELECT id, buyer_id, created_at FROM leads ORDER BY created_at").fetchall()
        self.purchases = conn.execute(
            "SELECT buyer_id, listing_id, lead_id, sale_price, purchased_at FROM purchases ORDER BY purchased_at"
        ).fetchall()
        self.listed_at = [row[1] for row in self.listings]
        self.created_at = [row[2] for row in self.leads]
        self.purchased_at = [row[4] for row in self.purchases]
        self.cost = {row[0]: row[6] for row in self.listings}
        self.lead_created = {row[0]: row[2] for row in self.leads}
        self.converted = {row[2] for row in self.purchases if row[2] is not None}


def _slice(keys: list[datetime], rows: list[Any], lo: datetime | None, hi: datetime | None) -> list[Any]:
    start = 0 if lo is None else bisect_left(keys, lo)
    end = len(keys) if hi is None else bisect_left(keys, hi)
    return rows[start:end]


def kpis(rows: Rows, lo: datetime | None, hi: datetime | None, as_of: datetime, aged_days: int) -> dict[str, Any]:
    listings = _slice(rows.listed_at, rows.listings, lo, hi)
    prices = sum((x[2] for x in listings), Decimal(0))
    scores = [x[3] for x in listings if x[3] is not None]
    cutoff = as_of - timedelta(days=aged_days)
    aged = sum(
        1
        for x in _slice(rows.listed_at, rows.listings, None, cutoff)
        if x[4] != "withdrawn" and (x[5] is None or x[5] > as_of)
    )
    purchases = _slice(rows.purchased_at, rows.purchases, lo, hi)
    profits = [p[3] - rows.cost[p[1]] for p in purchases if rows.cost[p[1]] is not None]
    lead_seconds = [
        Decimal((p[4] - rows.lead_created[p[2]]) / timedelta(microseconds=1)) / 10**6
        for p in purchases
        if p[2] is not None
    ]
    leads = _slice(rows.created_at, rows.leads, lo, hi)
    converted = sum(1 for x in leads if x[0] in rows.converted)
    return {
        "total_listings": len(listings),
        "average_price": _mean(prices, len(listings)),
        "total_value": _round(prices),
        "scoring_rate": _mean(Decimal(100 * len(scores)), len(listings)),
        "average_score": _mean(sum(scores, Decimal(0)), len(scores)),
        "aged_inventory": aged,
        "average_profit_per_unit": _mean(sum(profits, Decimal(0)), len(profits)),
        "lead_to_purchase_time": _mean(sum(lead_seconds, Decimal(0)) / 86400, len(lead_seconds)),
        "conversion_rate": _mean(Decimal(100 * converted), len(leads)),
        "active_buyers": len({x[1] for x in leads} | {p[0] for p in purchases}),
    }
