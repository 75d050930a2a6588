"""GET /api/kpi?compare=…: the window and the one it is compared with, in one statement, equal
two single-window requests exactly (docs/kpis.md, "Comparison")."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kpi_service.serving.changes import affected
from kpi_service.serving.keys import cache_key
from kpi_service.serving.query import KpiQuery
from kpi_service.serving.windows import COMPARISONS, compared_days, midnight
from tests.helpers import two_listings
from tests.strategies import ZONES, aged_days_choices, datasets, days

TODAY = datetime.now(UTC).date()


@pytest.mark.parametrize(
    ("first", "last", "compare", "expected"),
    [
        # As many days just before.
        ("2026-03-10", "2026-03-16", "previous_period", ("2026-03-03", "2026-03-09")),
        ("2026-03-31", "2026-04-29", "previous_period", ("2026-03-01", "2026-03-30")),
        ("2026-03-05", "2026-03-05", "previous_period", ("2026-03-04", "2026-03-04")),
        # A month to date: the same days of the previous month, clipped to its end.
        ("2026-12-01", "2026-12-07", "previous_period", ("2026-11-01", "2026-11-07")),
        ("2026-03-01", "2026-03-31", "previous_period", ("2026-02-01", "2026-02-28")),
        ("2028-03-01", "2028-03-30", "previous_period", ("2028-02-01", "2028-02-29")),
        ("2026-01-01", "2026-01-15", "previous_period", ("2025-12-01", "2025-12-15")),
        # A year to date (beyond January): the same dates of the previous year.
        ("2026-01-01", "2026-12-07", "previous_period", ("2025-01-01", "2025-12-07")),
        ("2028-01-01", "2028-02-29", "previous_period", ("2027-01-01", "2027-02-28")),
        # The same dates a year earlier; 29 February becomes 28 February.
        ("2026-03-10", "2026-03-16", "previous_year", ("2025-03-10", "2025-03-16")),
        ("2028-02-29", "2028-03-01", "previous_year", ("2027-02-28", "2027-03-01")),
        ("2028-02-28", "2028-02-29", "previous_year", ("2027-02-28", "2027-02-28")),
    ],
)
def test_compared_days(first: str, last: str, compare: str, expected: tuple[str, str]) -> None:
    found = compared_days(date.fromisoformat(first), date.fromisoformat(last), compare)
    assert tuple(day.isoformat() for day in found) == expected


@pytest.mark.parametrize(
    "query",
    [
        "compare=previous_period",  # all time
        "from=2026-03-01&compare=previous_period",  # no end
        "to=2026-03-01&compare=previous_year",  # no start
        "from=2026-03-01&to=2026-03-05&compare=previous_month",
        "from=2026-03-01&to=2026-03-05&compare=",
        "from=1900-01-01&to=1900-01-05&compare=previous_period",  # before the first date served
        "from=1900-03-01&to=1900-03-05&compare=previous_year",
        "from=2026-03-01&to=2026-03-05&compare=previous_year&compare=previous_period",
    ],
)
def test_an_open_or_bad_comparison_is_a_400(client: FlaskClient, auth: dict[str, str], query: str) -> None:
    response = client.get(f"/api/kpi?{query}", headers=auth)
    assert response.status_code == 400
    body = response.get_json()
    assert body["success"] is False and "compare" in body["errors"]


def test_history_has_no_comparison(client: FlaskClient, auth: dict[str, str]) -> None:
    response = client.get(
        "/api/kpi/history?from=2026-03-01&to=2026-03-05&interval=day&compare=previous_period", headers=auth
    )
    assert response.status_code == 400 and "compare" in response.get_json()["errors"]


def test_one_statement_for_both_windows(
    app: Flask, auth: dict[str, str], conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    two_listings(conn)
    db = app.extensions["kpi"].db
    calls = []
    original = db.kpi_rows
    monkeypatch.setattr(db, "kpi_rows", lambda windows, aged: calls.append(len(windows)) or original(windows, aged))
    client = app.test_client()
    body = client.get("/api/kpi?from=2026-03-02&to=2026-03-31&compare=previous_period", headers=auth).get_json()
    assert calls == [2]
    assert body["comparison"]["compare"] == "previous_period"
    assert (body["comparison"]["from"], body["comparison"]["to"]) == ("2026-01-31", "2026-03-01")
    assert body["meta"]["window"]["compare"] == "previous_period"
    # Without compare: its own value (its own key), with no comparison.
    plain = client.get("/api/kpi?from=2026-03-02&to=2026-03-31", headers=auth).get_json()
    assert "comparison" not in plain and "compare" not in plain["meta"]["window"]
    assert calls == [2, 1]
    again = client.get("/api/kpi?from=2026-03-02&to=2026-03-31&compare=previous_period", headers=auth).get_json()
    assert again["meta"]["cached"] is True and again["comparison"] == body["comparison"]


def test_change_and_percent(client: FlaskClient, auth: dict[str, str], conn: psycopg.Connection) -> None:
    two_listings(conn)  # one listing on 2026-03-01 (price 100), one on 2026-03-02 (price 300)
    body = client.get("/api/kpi?from=2026-03-02&to=2026-03-02&compare=previous_period&tz=UTC", headers=auth).get_json()
    change = body["comparison"]["change"]
    assert body["comparison"]["metrics"]["total_listings"] == 1 and body["metrics"]["total_listings"] == 1
    assert change["total_listings"] == {"absolute": 0, "percent": 0.0}
    assert change["average_price"] == {"absolute": 200.0, "percent": 200.0}
    # A base of 0: the change is there, its percent is not.
    assert change["active_buyers"] == {"absolute": 0, "percent": None}
    empty = client.get("/api/kpi?from=2026-03-03&to=2026-03-03&compare=previous_period&tz=UTC", headers=auth)
    assert empty.get_json()["comparison"]["change"]["total_listings"] == {"absolute": -1, "percent": -100.0}


def test_the_cache_key_and_the_changes_name_the_comparison() -> None:
    plain = KpiQuery(date(2026, 3, 10), date(2026, 3, 16), "UTC", 60)
    compared = KpiQuery(date(2026, 3, 10), date(2026, 3, 16), "UTC", 60, compare="previous_year")
    assert cache_key("kpi", plain) != cache_key("kpi", compared)
    # A batch that changed only the compared window (March 2025) changes the comparison's value.
    changed = {"from": "2025-03-12T10:00:00+00:00", "to": "2025-03-12T10:15:00+00:00"}
    now = datetime(2026, 12, 1, tzinfo=UTC)
    assert affected(compared, changed, now) and not affected(plain, changed, now)


def _percent(now: float, then: float) -> float | None:
    if then == 0:
        return None
    difference = Decimal(str(now)) - Decimal(str(then))
    return float((difference * 100 / abs(Decimal(str(then)))).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


# Windows across the DST stretches of tests/strategies.py: any days, or a month to date.
month_to_date = st.builds(
    lambda first, length: (first, first + timedelta(days=length)),
    st.sampled_from([date(2026, 3, 1), date(2026, 4, 1), date(2026, 11, 1)]),
    st.integers(0, 29),
)
any_days = st.builds(lambda first, length: (first, first + timedelta(days=length)), days, st.integers(0, 40))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    window=st.one_of(any_days, month_to_date, st.just((TODAY.replace(day=1), TODAY))),
    compare=st.sampled_from(COMPARISONS),
    zone=st.sampled_from(ZONES),
    aged_days=aged_days_choices,
)
def test_the_comparison_equals_two_single_window_requests(
    app: Flask,
    auth: dict[str, str],
    conn: psycopg.Connection,
    data: st.DataObject,
    window: tuple[date, date],
    compare: str,
    zone: str,
    aged_days: int,
) -> None:
    first, last = window
    before = compared_days(first, last, compare)
    edges = [midnight(day, zone) for day in (first, last + timedelta(days=1), before[0], before[1] + timedelta(days=1))]
    data.draw(datasets(edges)).insert(conn)
    app.extensions["kpi"].cache.client.flushall()  # the stand-in is this app's own
    app.extensions["kpi"].service.recent.clear()  # and so is the in-process memo of hits
    client = app.test_client()
    common = f"tz={zone}&aged_days={aged_days}"
    response = client.get(f"/api/kpi?from={first}&to={last}&compare={compare}&{common}", headers=auth)
    assert response.status_code == 200
    body = response.get_json()
    single = client.get(f"/api/kpi?from={first}&to={last}&{common}", headers=auth).get_json()
    other = client.get(f"/api/kpi?from={before[0]}&to={before[1]}&{common}", headers=auth).get_json()
    comparison = body["comparison"]
    assert (comparison["from"], comparison["to"]) == (before[0].isoformat(), before[1].isoformat())
    assert body["metrics"] == single["metrics"]
    assert comparison["metrics"] == other["metrics"]
    for name, change in comparison["change"].items():
        now, then = single["metrics"][name], other["metrics"][name]
        assert change["absolute"] == float(Decimal(str(now)) - Decimal(str(then))), name
        assert change["percent"] == _percent(now, then), name
