"""GET /api/kpi/history: buckets computed together equal each bucket asked for alone."""

from __future__ import annotations

from datetime import date, timedelta

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kpi_service.serving.windows import INTERVALS, buckets, midnight
from tests.strategies import ZONES, aged_days_choices, datasets, days


def test_one_execution_for_a_year_of_days(
    app: Flask, auth: dict[str, str], conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = app.extensions["kpi"].db
    calls = []
    original = db.kpi_rows
    monkeypatch.setattr(db, "kpi_rows", lambda windows, aged: calls.append(len(windows)) or original(windows, aged))
    response = app.test_client().get("/api/kpi/history?from=2025-01-01&to=2025-12-31&interval=day", headers=auth)
    assert response.status_code == 200
    body = response.get_json()
    assert calls == [365] and len(body["series"]) == 365
    assert body["series"][0]["start"] == "2025-01-01" and body["series"][-1]["end"] == "2025-12-31"
    assert body["meta"]["window"] == {
        "from": "2025-01-01",
        "to": "2025-12-31",
        "tz": "UTC",
        "aged_days": 60,
        "interval": "day",
    }


def test_history_is_cached(app: Flask, auth: dict[str, str]) -> None:
    client = app.test_client()
    url = "/api/kpi/history?from=2026-01-01&to=2026-03-31&interval=month&tz=Europe/Berlin"
    assert client.get(url, headers=auth).get_json()["meta"]["cached"] is False
    again = client.get(url.replace("Europe/Berlin", "europe/berlin"), headers=auth).get_json()
    assert again["meta"]["cached"] is True and len(again["series"]) == 3


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    first=days,
    length=st.integers(0, 45),
    interval=st.sampled_from(INTERVALS),
    zone=st.sampled_from(ZONES),
    aged_days=aged_days_choices,
)
def test_each_bucket_equals_the_single_window_answer(
    app: Flask,
    auth: dict[str, str],
    conn: psycopg.Connection,
    data: st.DataObject,
    first: date,
    length: int,
    interval: str,
    zone: str,
    aged_days: int,
) -> None:
    last = first + timedelta(days=length)
    edges = [midnight(start, zone) for start, _ in buckets(first, last, interval)] + [
        midnight(last + timedelta(days=1), zone)
    ]
    data.draw(datasets(edges)).insert(conn)
    app.extensions["kpi"].cache.client.flushall()  # the stand-in is this app's own
    app.extensions["kpi"].service.recent.clear()  # and so is the in-process memo of hits
    client = app.test_client()
    common = f"tz={zone}&aged_days={aged_days}"
    history = client.get(f"/api/kpi/history?from={first}&to={last}&interval={interval}&{common}", headers=auth)
    assert history.status_code == 200
    for bucket in history.get_json()["series"]:
        single = client.get(f"/api/kpi?from={bucket['start']}&to={bucket['end']}&{common}", headers=auth)
        assert bucket["metrics"] == single.get_json()["metrics"], bucket


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("to=2026-01-31&interval=day", "from"),
        ("from=2026-01-01&interval=day", "to"),
        ("from=2026-01-01&to=2026-01-31", "interval"),
        ("from=2026-01-01&to=2026-01-31&interval=year", "interval"),
        ("from=2026-01-01&to=2026-01-31&interval=", "interval"),
        ("from=2026-02-01&to=2026-01-31&interval=day", "to"),
        ("from=2026-01-01&to=2027-02-05&interval=day", "interval"),  # 401 buckets
        ("from=2026-01-01&to=2026-01-31&interval=day&tz=Nowhere", "tz"),
        ("from=2026-01-01&to=2026-01-31&interval=day&aged_days=-1", "aged_days"),
        ("from=2026-01-01&to=2026-01-31&interval=day&page=2", "page"),
    ],
)
def test_bad_parameters_are_400s(client: FlaskClient, auth: dict[str, str], query: str, field: str) -> None:
    response = client.get(f"/api/kpi/history?{query}", headers=auth)
    assert response.status_code == 400
    body = response.get_json()
    assert body["success"] is False and field in body["errors"]


def test_the_bucket_limit_is_named(client: FlaskClient, auth: dict[str, str]) -> None:
    body = client.get("/api/kpi/history?from=2026-01-01&to=2027-02-05&interval=day", headers=auth).get_json()
    assert "400" in body["errors"]["interval"][0]
    allowed = client.get("/api/kpi/history?from=2026-01-01&to=2027-02-04&interval=day", headers=auth)
    assert allowed.status_code == 200 and len(allowed.get_json()["series"]) == 400


def test_history_needs_a_token(client: FlaskClient) -> None:
    assert client.get("/api/kpi/history?from=2026-01-01&to=2026-01-31&interval=day").status_code == 401
