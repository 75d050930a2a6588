"""Hypothesis strategies for sales data whose events fall on and around window edges."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

from hypothesis import strategies as st

from kpi_service.serving.windows import Window, midnight
from tests.dataset import Dataset, Lead, Listing, Purchase

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]
# Two stretches of 2026 that hold every DST change of the zones above and some month ends.
SPRING = (date(2026, 2, 25), date(2026, 4, 5))
AUTUMN = (date(2026, 10, 20), date(2026, 11, 10))
EDGE_DAYS = [
    date(2026, 3, 1), date(2026, 3, 8), date(2026, 3, 9), date(2026, 3, 29), date(2026, 3, 30), date(2026, 4, 1),
    date(2026, 10, 25), date(2026, 10, 26), date(2026, 11, 1), date(2026, 11, 2),
]  # fmt: skip
# Where windows that start or end on an edge day begin and end.
EDGES = sorted({midnight(day + timedelta(days=k), zone) for zone in ZONES for day in EDGE_DAYS for k in (0, 1)})


def _between(first: date, last: date) -> st.SearchStrategy[datetime]:
    start = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
    return st.builds(lambda s: start + timedelta(seconds=s), st.integers(0, (last - first).days * 86400))


def instants(pivots: Sequence[datetime] = ()) -> st.SearchStrategy[datetime]:
    """Instants on, just around, or between the given pivots and the DST edges."""
    exact = [st.sampled_from(EDGES)] + ([st.sampled_from(sorted(set(pivots)))] if pivots else [])
    return st.one_of(
        *exact,
        *(st.builds(lambda at, us: at + timedelta(microseconds=us), e, st.sampled_from([-1, 1])) for e in exact),
        _between(*SPRING),
        _between(*AUTUMN),
    )


# 60 is the aged_days the test databases' summaries count long sales for (init-db's default
# KPI_AGED_DAYS): aged_inventory from buckets alone; the others take the sales.
aged_days_choices = st.one_of(st.just(60), st.integers(1, 30))
# Window days are often the edge days, so that events land exactly on window boundaries.
days = st.one_of(st.sampled_from(EDGE_DAYS), st.dates(*SPRING), st.dates(*AUTUMN))
money = st.decimals(min_value=0, max_value=100000, places=2, allow_nan=False, allow_infinity=False)
scores = st.decimals(min_value=0, max_value=100, places=2, allow_nan=False, allow_infinity=False)


@st.composite
def datasets(draw: st.DrawFn, pivots: Sequence[datetime] = (), max_listings: int = 12) -> Dataset:
    """Consistent sales data whose events often fall exactly on the pivots (window edges)."""
    instant = instants(pivots)
    buyers = list(range(1, draw(st.integers(1, 5)) + 1))
    listings = []
    for i in range(1, draw(st.integers(0, max_listings)) + 1):
        status = draw(st.sampled_from(["active", "pending", "sold", "withdrawn"]))
        listed_at = draw(instant)
        sold_at = draw(st.one_of(st.none(), instant)) if status == "sold" else None
        cost = draw(st.one_of(st.none(), money))
        listings.append(Listing(i, draw(money), status, listed_at, cost, sold_at, draw(st.one_of(st.none(), scores))))
    leads = [
        Lead(
            i, draw(st.sampled_from(buyers)), draw(instant), None, draw(st.sampled_from(["open", "converted", "lost"]))
        )
        for i in range(1, draw(st.integers(0, max_listings)) + 1)
    ]
    purchases = []
    free_leads = [lead.id for lead in leads]
    sold = draw(st.lists(st.sampled_from(listings), unique_by=lambda x: x.id)) if listings else []
    for i, listing in enumerate(sold, 1):
        lead_id = draw(st.one_of(st.none(), st.sampled_from(free_leads))) if free_leads else None
        if lead_id is not None:
            free_leads.remove(lead_id)
        purchases.append(Purchase(i, listing.id, draw(st.sampled_from(buyers)), draw(money), draw(instant), lead_id))
    return Dataset(buyers, listings, leads, purchases)


@st.composite
def windows(draw: st.DrawFn) -> Window:
    """A window of whole days in one of ZONES, each side open or not."""
    first, last = sorted([draw(days), draw(days)])
    return Window.of_dates(
        None if draw(st.booleans()) else first, None if draw(st.booleans()) else last, draw(st.sampled_from(ZONES))
    )
