"""CSV export (docs/api.md, "CSV export"): the same values as the JSON, parsed back by Python's
csv module; bad parameters get the JSON envelope."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import psycopg
import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kpi_service.web.export import COLUMNS, plain
from tests.helpers import two_listings
from tests.strategies import datasets


def parsed(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_plain_decimals() -> None:
    assert [plain(v) for v in (1e16, 85.0, -0.01, 0, 12, None, 64069710.0)] == [
        "10000000000000000",
        "85.0",
        "-0.01",
        "0",
        "12",
        "",
        "64069710.0",
    ]


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_365_day_history_equals_its_json_value_for_value(
    client: FlaskClient, auth: dict[str, str], conn: psycopg.Connection, data: st.DataObject
) -> None:
    pivots = [datetime(2026, 3, 29, tzinfo=UTC), datetime(2026, 10, 25, 1, tzinfo=UTC)]
    data.draw(datasets(pivots, max_listings=20)).insert(conn)
    url = "/api/kpi/history?from=2026-01-01&to=2026-12-31&interval=day&tz=Europe/Berlin"
    body = client.get(url, headers=auth).get_json()
    response = client.get(url + "&format=csv", headers=auth)
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"] == (
        'attachment; filename="kpi_history_2026-01-01_2026-12-31_day_Europe-Berlin.csv"'
    )
    text = response.get_data(as_text=True)
    assert text.endswith("\r\n") and text.splitlines()[0] == ",".join(["start", "end", *COLUMNS])
    rows = parsed(text)
    assert len(rows) == len(body["series"]) == 365
    for row, bucket in zip(rows, body["series"], strict=True):
        assert (row["start"], row["end"]) == (bucket["start"], bucket["end"])
        for name in COLUMNS:
            assert float(row[name]) == bucket["metrics"][name], (bucket["start"], name)
            if isinstance(bucket["metrics"][name], int):
                assert row[name] == str(bucket["metrics"][name])
    # The same by Accept, and JSON for */*.
    by_accept = client.get(url, headers={**auth, "Accept": "text/csv"})
    assert by_accept.mimetype == "text/csv" and by_accept.get_data(as_text=True) == text
    assert client.get(url, headers={**auth, "Accept": "*/*"}).mimetype == "application/json"


def test_the_window_and_its_comparison(client: FlaskClient, auth: dict[str, str], conn: psycopg.Connection) -> None:
    two_listings(conn)
    url = "/api/kpi?from=2026-03-02&to=2026-03-02&tz=UTC&compare=previous_period"
    body = client.get(url, headers=auth).get_json()
    response = client.get(url, headers={**auth, "Accept": "text/csv, application/json;q=0.5"})
    assert response.mimetype == "text/csv"
    name = "kpi_2026-03-02_2026-03-02_previous_period_UTC.csv"
    assert response.headers["Content-Disposition"] == f'attachment; filename="{name}"'
    assert response.headers["ETag"] != client.get(url, headers=auth).headers["ETag"]
    (row,) = parsed(response.get_data(as_text=True))
    assert (row["from"], row["to"], row["tz"], row["aged_days"]) == ("2026-03-02", "2026-03-02", "UTC", "60")
    assert (row["compare"], row["compared_from"], row["compared_to"]) == ("previous_period", "2026-03-01", "2026-03-01")
    for kpi in COLUMNS:
        change = body["comparison"]["change"][kpi]
        assert float(row[kpi]) == body["metrics"][kpi]
        assert float(row[f"{kpi}_compared"]) == body["comparison"]["metrics"][kpi]
        assert float(row[f"{kpi}_change"]) == change["absolute"]
        assert row[f"{kpi}_change_percent"] == ("" if change["percent"] is None else plain(change["percent"]))
    plain_window = parsed(client.get("/api/kpi?format=csv", headers=auth).get_data(as_text=True))
    assert "compare" not in plain_window[0] and plain_window[0]["from"] == ""


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("/api/kpi?format=xlsx", "format"),
        ("/api/kpi?format=csv&format=json", "format"),
        ("/api/kpi?format=csv&from=2026-13-01", "from"),
        ("/api/kpi?format=csv&compare=previous_year", "compare"),
        ("/api/kpi/history?format=csv&from=2026-01-01", "to"),
    ],
)
def test_bad_input_gets_the_json_400(client: FlaskClient, auth: dict[str, str], query: str, field: str) -> None:
    for headers in (auth, {**auth, "Accept": "text/csv"}):
        response = client.get(query, headers=headers)
        assert response.status_code == 400 and response.mimetype == "application/json"
        assert field in response.get_json()["errors"]


def test_csv_needs_a_token(client: FlaskClient) -> None:
    response = client.get("/api/kpi?format=csv")
    assert response.status_code == 401 and response.mimetype == "application/json"
