"""The shared KPI test vectors, tests/vectors/kpis.json: rows, a window (dates, time zone,
aged_days, now), its instants and the ten numbers of tests/reference.py. The Python suite checks
the SQL against them (tests/test_vectors.py), the JS package's suite its computeKpis. And
tests/vectors/comparisons.json: the days a window is compared with, and the changes of pairs of
KPI rows, as the service makes them (kpi_service/serving/windows.py, compared_days;
kpi_service/serving/responses.py, changes), which the JS package's comparedDays and kpiChanges
must give too.

    .venv/bin/python -m tests.make_vectors      # rewrite the file after changing the cases
"""

from __future__ import annotations

import json
import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from kpi_service.serving.windows import Window
from tests import reference
from tests.dataset import Dataset, Lead, Listing, Purchase

PATH = Path(__file__).parent / "vectors" / "kpis.json"
COMPARISONS_PATH = Path(__file__).parent / "vectors" / "comparisons.json"
NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
US = timedelta(microseconds=1)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def d(value: str) -> Decimal:
    return Decimal(value)


def _instant(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _decimal(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


def vector(
    name: str,
    data: Dataset,
    first: date | None,
    last: date | None,
    tz: str | None = "UTC",
    aged_days: int | None = 60,
    now: datetime = NOW,
) -> dict[str, Any]:
    """A case; `tz` or `aged_days` None leaves it out of the window (the defaults, UTC and 60,
    apply). Rows naming a listing or lead they lack give `error` instead of `metrics`: the
    reference raises, and computeKpis must refuse them too."""
    window = Window.of_dates(first, last, tz or "UTC")
    as_of = window.as_of(now)
    spec: dict[str, Any] = {"from": first and first.isoformat(), "to": last and last.isoformat()}
    if tz is not None:
        spec["tz"] = tz
    if aged_days is not None:
        spec["aged_days"] = aged_days
    spec["now"] = _instant(now)
    case = {
        "name": name,
        "window": spec,
        "instants": {"start": _instant(window.start), "end": _instant(window.end), "as_of": _instant(as_of)},
        "rows": rows_of(data),
    }
    try:
        case["metrics"] = reference.kpis(data, window.start, window.end, as_of, 60 if aged_days is None else aged_days)
    except KeyError as error:
        case["error"] = f"dangling reference: {error}"
    return case


def rows_of(data: Dataset) -> dict[str, list[dict[str, Any]]]:
    """The rows as JSON, as a frontend holds them: money as decimal strings, instants in ISO 8601."""
    return {
        "listings": [
            {
                "id": x.id,
                "price": _decimal(x.price),
                "acquisition_cost": _decimal(x.acquisition_cost),
                "status": x.status,
                "listed_at": _instant(x.listed_at),
                "sold_at": _instant(x.sold_at),
                "score": _decimal(x.score),
            }
            for x in data.listings
        ],
        "leads": [{"id": x.id, "buyer_id": x.buyer_id, "created_at": _instant(x.created_at)} for x in data.leads],
        "purchases": [
            {
                "id": p.id,
                "listing_id": p.listing_id,
                "buyer_id": p.buyer_id,
                "lead_id": p.lead_id,
                "sale_price": _decimal(p.sale_price),
                "purchased_at": _instant(p.purchased_at),
            }
            for p in data.purchases
        ],
    }


def dataset_of(vec: dict[str, Any]) -> Dataset:
    """The rows of a vector as a Dataset to insert (buyers: every id a lead or purchase names)."""

    def at(text: str | None) -> datetime | None:
        return None if text is None else datetime.fromisoformat(text)

    def num(text: str | None) -> Decimal | None:
        return None if text is None else Decimal(text)

    rows = vec["rows"]
    listings = [
        Listing(
            x["id"],
            num(x["price"]),
            x["status"],
            at(x["listed_at"]),
            num(x["acquisition_cost"]),
            at(x["sold_at"]),
            num(x["score"]),
        )
        for x in rows["listings"]
    ]
    leads = [Lead(x["id"], x["buyer_id"], at(x["created_at"])) for x in rows["leads"]]
    purchases = [
        Purchase(p["id"], p["listing_id"], p["buyer_id"], num(p["sale_price"]), at(p["purchased_at"]), p["lead_id"])
        for p in rows["purchases"]
    ]
    buyers = sorted({x.buyer_id for x in leads} | {p.buyer_id for p in purchases})
    return Dataset(buyers=buyers, listings=listings, leads=leads, purchases=purchases)


def edges(start: datetime, end: datetime) -> Dataset:
    """Rows exactly at, and a microsecond around, a window's start and end."""
    listings, leads, purchases = [], [], []
    for i, at in enumerate([start - US, start, start + US, end - US, end, end + US], start=1):
        listings.append(Listing(i, d(f"{i}00.00"), "sold", at - timedelta(days=1), d("50.00"), at, d(f"{10 * i}.5")))
        leads.append(Lead(i, i, at))
        purchases.append(Purchase(i, i, i, d(f"{i}10.00"), at, i))
    return Dataset(listings=listings, leads=leads, purchases=purchases)


def hand_picked() -> list[dict[str, Any]]:
    march = (date(2026, 3, 1), date(2026, 3, 31))
    nulls = Dataset(
        listings=[
            Listing(1, d("100.00"), "active", utc(2026, 3, 2)),  # no score, no cost
            Listing(2, d("300.00"), "sold", utc(2026, 3, 3), None, utc(2026, 3, 10), d("80.00")),
            Listing(3, d("200.00"), "sold", utc(2026, 3, 4), d("150.00"), utc(2026, 3, 11)),
        ],
        leads=[Lead(1, 1, utc(2026, 3, 5))],
        purchases=[
            Purchase(1, 2, 1, d("290.00"), utc(2026, 3, 10)),  # no lead, no known cost
            Purchase(2, 3, 2, d("190.00"), utc(2026, 3, 11), 1),
        ],
    )
    # Halves at the second decimal: 0.005 (a mean price), -0.005 (a profit), 0.125 days, 3.125 %.
    halves = Dataset(
        listings=[
            Listing(1, d("0.01"), "active", utc(2026, 3, 2), d("100.01"), None, d("0.01")),
            Listing(2, d("0.00"), "active", utc(2026, 3, 2), d("100.00"), None, d("0.00")),
            *[Listing(i, d("10.00"), "active", utc(2026, 2, 1)) for i in range(3, 35)],
        ],
        leads=[Lead(i, i, utc(2026, 3, 3) + timedelta(hours=i)) for i in range(1, 33)],
        purchases=[
            Purchase(1, 1, 1, d("100.00"), utc(2026, 3, 3, 1) + timedelta(hours=3), 1),
            Purchase(2, 2, 2, d("100.00"), utc(2026, 3, 3, 2) + timedelta(hours=3)),
        ],
    )
    # aged_inventory at T = the window's end: withdrawn, sold before/at/after T, listed exactly
    # at and a microsecond before T - aged_days, listed long before the window.
    t = utc(2026, 4, 1)
    cut = t - timedelta(days=30)
    aged = Dataset(
        listings=[
            Listing(1, d("1.00"), "active", cut - US),
            Listing(2, d("1.00"), "active", cut),
            Listing(3, d("1.00"), "withdrawn", cut - timedelta(days=5)),
            Listing(4, d("1.00"), "sold", cut - timedelta(days=5), sold_at=t),
            Listing(5, d("1.00"), "sold", cut - timedelta(days=5), sold_at=t + US),
            Listing(6, d("1.00"), "sold", cut - timedelta(days=5), sold_at=t - US),
            Listing(7, d("1.00"), "pending", utc(2020, 1, 1)),
        ]
    )
    # A lead recorded after the purchase it led to (a backfill): a negative lead time, kept.
    late_lead = Dataset(
        listings=[Listing(1, d("100.00"), "sold", utc(2026, 3, 2), d("80.00"), utc(2026, 3, 10))],
        leads=[Lead(1, 1, utc(2026, 3, 12, 6))],
        purchases=[Purchase(1, 1, 1, d("120.00"), utc(2026, 3, 10), 1)],
    )
    # A window's rows alone, as a frontend may hold them: the purchase's listing or lead is older.
    no_listing = Dataset(
        leads=[Lead(1, 1, utc(2026, 3, 5))],
        purchases=[Purchase(1, 7, 1, d("120.00"), utc(2026, 3, 10), 1)],
    )
    no_lead = Dataset(
        listings=[Listing(1, d("100.00"), "sold", utc(2026, 3, 2), d("80.00"), utc(2026, 3, 10))],
        purchases=[Purchase(1, 1, 1, d("120.00"), utc(2026, 3, 10), 9)],
    )
    cases = [
        vector("empty tables", Dataset(), *march),
        vector("a lead after its purchase", late_lead, *march),
        vector("tz and aged_days left out", aged, date(2026, 3, 1), date(2026, 3, 31), tz=None, aged_days=None),
        vector("a purchase of a listing not in the rows", no_listing, *march),
        vector("a purchase by a lead not in the rows", no_lead, *march),
        vector("empty tables, all time", Dataset(), None, None),
        vector("NULL scores, costs and leads", nulls, *march),
        vector("halves round away from zero", halves, *march),
        vector("aged inventory at the window's end", aged, date(2026, 3, 1), date(2026, 3, 31), aged_days=30),
        vector("aged inventory now, window without end", aged, date(2026, 3, 1), None, aged_days=30, now=t),
        vector("aged inventory, window before the stock", aged, date(2019, 1, 1), date(2019, 1, 31), aged_days=30),
        vector("window edges UTC", edges(utc(2026, 3, 1), utc(2026, 4, 1)), *march),
        vector("window without start", edges(utc(2026, 3, 1), utc(2026, 4, 1)), None, date(2026, 3, 31)),
    ]
    dst_days = [
        ("Europe/Berlin", date(2026, 3, 29)),  # 23 hours
        ("Europe/Berlin", date(2026, 10, 25)),  # 25 hours
        ("America/New_York", date(2026, 3, 8)),
        ("America/New_York", date(2026, 11, 1)),
        ("America/Sao_Paulo", date(2018, 11, 4)),  # no 00:00: the day starts at 01:00
        ("America/Sao_Paulo", date(2019, 2, 16)),  # 25 hours: its last hour happens twice
        ("Asia/Kolkata", date(2026, 3, 1)),
    ]
    for zone, day in dst_days:
        window = Window.of_dates(day, day, zone)
        cases.append(vector(f"one day {day} in {zone}", edges(window.start, window.end), day, day, zone, aged_days=1))
    return cases


def generated(seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    zone = rng.choice(["UTC", "Europe/Berlin", "America/New_York"])
    first = date(2026, 3, 1) + timedelta(days=rng.randrange(-20, 250))
    last = first + timedelta(days=rng.randrange(0, 40))
    window = Window.of_dates(first, last, zone)
    pivots = [window.start, window.end, utc(2026, 3, 29, 1), utc(2026, 10, 25, 1)]

    def instant() -> datetime:
        pivot = rng.choice(pivots)
        return pivot + rng.choice([-US, timedelta(0), US, timedelta(seconds=rng.randrange(-80 * 86400, 80 * 86400))])

    def money() -> Decimal:
        return Decimal(rng.randrange(0, 5_000_000)) / 100

    data = Dataset()
    for i in range(1, rng.randrange(0, 25) + 1):
        listed = instant()
        status = rng.choice(["active", "pending", "sold", "withdrawn"])
        sold = listed + timedelta(seconds=rng.randrange(0, 90 * 86400)) if status == "sold" else None
        score = Decimal(rng.randrange(0, 10001)) / 100 if rng.random() < 0.6 else None
        cost = money() if rng.random() < 0.7 else None
        data.listings.append(Listing(i, money(), status, listed, cost, sold, score))
    for i in range(1, rng.randrange(0, 25) + 1):
        data.leads.append(Lead(i, rng.randrange(1, 8), instant()))
    free_leads = [x.id for x in data.leads]
    rng.shuffle(free_leads)
    for i, x in enumerate([x for x in data.listings if x.status == "sold"], start=1):
        lead = free_leads.pop() if free_leads and rng.random() < 0.7 else None
        # A sale after its lead, as the application records it (the reference does not need it).
        at = (
            instant()
            if lead is None
            else data.leads[lead - 1].created_at + timedelta(seconds=rng.randrange(0, 30 * 86400))
        )
        data.purchases.append(Purchase(i, x.id, rng.randrange(1, 8), money(), at, lead))
    now = rng.choice([NOW, window.end - timedelta(days=3), window.start + timedelta(hours=5)])
    return vector(f"generated {seed}", data, first, last, zone, rng.randrange(1, 90), now)


def vectors() -> list[dict[str, Any]]:
    return hand_picked() + [generated(seed) for seed in range(24)]


def render() -> str:
    return json.dumps(vectors(), indent=1) + "\n"


DAYS = [
    ("2026-03-10", "2026-03-16"),  # a week: the week before
    ("2026-03-31", "2026-04-29"),  # 30 days across a month end
    ("2026-12-01", "2026-12-07"),  # this month so far
    ("2026-03-01", "2026-03-31"),  # a whole month after February
    ("2028-03-01", "2028-03-30"),  # into a leap February
    ("2026-01-01", "2026-01-15"),  # a month to date in January: December
    ("2026-01-01", "2026-12-07"),  # the year so far
    ("2028-01-01", "2028-02-29"),  # a leap year so far
    ("2028-02-29", "2028-03-01"),  # 29 February, a year back
    ("2028-02-28", "2028-02-29"),
    ("2026-10-25", "2026-10-25"),  # one day (a DST change in Europe)
]


def comparisons() -> dict[str, Any]:
    from kpi_service.serving.responses import changes
    from kpi_service.serving.windows import COMPARISONS, compared_days

    days = [
        {"from": first, "to": last, "compare": compare, "compared": [d.isoformat() for d in compared_days(
            date.fromisoformat(first), date.fromisoformat(last), compare)]}
        for first, last in DAYS
        for compare in COMPARISONS
    ]  # fmt: skip
    rng = random.Random(36)
    pairs = []
    for i in range(12):
        rows = []
        for _ in range(2):
            row: dict[str, Any] = {}
            for name in ("total_listings", "aged_inventory", "active_buyers"):
                row[name] = rng.choice([0, 0, rng.randrange(1, 5000)])
            for name in ("total_value", "average_price", "average_score", "scoring_rate", "conversion_rate"):
                row[name] = rng.choice([0, Decimal(rng.randrange(0, 10**7)) / 100])
            for name in ("average_profit_per_unit", "lead_to_purchase_time"):
                row[name] = rng.choice([0, Decimal(rng.randrange(-(10**6), 10**6)) / 100])
            rows.append(row)
        if i == 0:
            rows[1] = dict.fromkeys(rows[1], 0)  # every base 0: no percent at all
        as_json = [{k: v if isinstance(v, int) else float(v) for k, v in row.items()} for row in rows]
        pairs.append({"current": as_json[0], "base": as_json[1], "change": changes(rows[0], rows[1])})
    return {"days": days, "changes": pairs}


def render_comparisons() -> str:
    return json.dumps(comparisons(), indent=1) + "\n"


if __name__ == "__main__":
    PATH.parent.mkdir(exist_ok=True)
    PATH.write_text(render())
    print(f"{PATH}: {len(vectors())} vectors")
    COMPARISONS_PATH.write_text(render_comparisons())
    print(f"{COMPARISONS_PATH}: comparison vectors")
