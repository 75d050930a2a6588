"""The ten KPI definitions of docs/kpis.md, in plain Python, to check the SQL against.

Written from that page's words, not from sql/runtime/kpi.sql: exact fractions throughout and one
rounding, half away from zero, at the end.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

from tests.dataset import Dataset


def round_half_away(value: Fraction) -> float:
    sign = -1 if value < 0 else 1
    hundredths = math.floor(abs(value) * 100 + Fraction(1, 2))
    return float(Fraction(sign * hundredths, 100))


def _mean(values: list[Fraction]) -> float:
    return round_half_away(sum(values, Fraction(0)) / len(values)) if values else 0.0


def _ratio(part: int, whole: int) -> float:
    return round_half_away(Fraction(100 * part, whole)) if whole else 0.0


def _seconds(delta: timedelta) -> Fraction:
    return Fraction((delta.days * 86400 + delta.seconds) * 10**6 + delta.microseconds, 10**6)


def kpis(
    data: Dataset, start: datetime | None, end: datetime | None, as_of: datetime, aged_days: int
) -> dict[str, Any]:
    def in_window(instant: datetime) -> bool:
        return (start is None or instant >= start) and (end is None or instant < end)

    listings = [x for x in data.listings if in_window(x.listed_at)]
    scores = [Fraction(x.score) for x in listings if x.score is not None]
    by_listing = {x.id: x for x in data.listings}
    leads_by_id = {x.id: x for x in data.leads}
    purchases = [p for p in data.purchases if in_window(p.purchased_at)]
    leads = [x for x in data.leads if in_window(x.created_at)]
    purchased_leads = {p.lead_id for p in data.purchases if p.lead_id is not None}
    aged_before = as_of - timedelta(days=aged_days)

    return {
        "total_listings": len(listings),
        "average_price": _mean([Fraction(x.price) for x in listings]),
        "total_value": round_half_away(sum((Fraction(x.price) for x in listings), Fraction(0))),
        "scoring_rate": _ratio(len(scores), len(listings)),
        "average_score": _mean(scores),
        "aged_inventory": sum(
            1
            for x in data.listings
            if x.status != "withdrawn" and x.listed_at < aged_before and (x.sold_at is None or x.sold_at > as_of)
        ),
        "average_profit_per_unit": _mean(
            [
                Fraction(p.sale_price) - Fraction(by_listing[p.listing_id].acquisition_cost)
                for p in purchases
                if by_listing[p.listing_id].acquisition_cost is not None
            ]
        ),
        "lead_to_purchase_time": _mean(
            [
                _seconds(p.purchased_at - leads_by_id[p.lead_id].created_at) / 86400
                for p in purchases
                if p.lead_id is not None
            ]
        ),
        "conversion_rate": _ratio(sum(1 for x in leads if x.id in purchased_leads), len(leads)),
        "active_buyers": len({x.buyer_id for x in leads} | {p.buyer_id for p in purchases}),
    }
