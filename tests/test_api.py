"""GET /api/kpi end to end: parameters, tokens, the cache and a failing database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient

from kpi_service.app import create_app
from kpi_service.db.errors import DatabaseUnavailable
from tests.dataset import catch_up
from tests.helpers import make_settings, two_listings

METRICS = {
    "average_profit_per_unit",
    "lead_to_purchase_time",
    "aged_inventory",
    "total_listings",
    "active_buyers",
    "conversion_rate",
    "average_price",
    "total_value",
    "scoring_rate",
    "average_score",
}


def test_seed_format_with_meta(client: FlaskClient, auth: dict[str, str], conn: psycopg.Connection) -> None:
    two_listings(conn)
    response = client.get("/api/kpi", headers=auth)
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"metrics", "targets", "success", "message", "meta"}
    assert set(body["metrics"]) == METRICS and body["targets"] == {}
    assert body["success"] is True and body["message"] is None
    assert body["metrics"]["total_listings"] == 2 and body["metrics"]["average_price"] == 200.0
    meta = body["meta"]
    assert meta["cached"] is False and meta["stale"] is False
    assert meta["window"] == {"from": None, "to": None, "tz": "UTC", "aged_days": 60}
    assert meta["duration_ms"] >= 0
    assert datetime.fromisoformat(meta["computed_at"]).tzinfo is not None


def test_window_parameters(client: FlaskClient, auth: dict[str, str], conn: psycopg.Connection) -> None:
    two_listings(conn)
    body = client.get("/api/kpi?from=2026-03-02&to=2026-03-31&tz=Europe/Berlin&aged_days=7", headers=auth).get_json()
    # 2026-03-02 00:00 UTC is 01:00 in Berlin, so listing 2 is in and listing 1 is not.
    assert body["metrics"]["total_listings"] == 1
    assert body["meta"]["window"] == {"from": "2026-03-02", "to": "2026-03-31", "tz": "Europe/Berlin", "aged_days": 7}


def test_defaults_come_from_configuration(database_url: str, conn: psycopg.Connection, auth: dict[str, str]) -> None:
    app = create_app(make_settings(database_url, timezone="America/New_York", aged_days=90))
    try:
        window = app.test_client().get("/api/kpi", headers=auth).get_json()["meta"]["window"]
    finally:
        app.extensions["kpi"].close()
    assert window["tz"] == "America/New_York" and window["aged_days"] == 90


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("from=2026-13-01", "from"),
        ("from=2026-02-30", "from"),
        ("from=20260101", "from"),
        ("from=2026-W01-1", "from"),
        ("to=yesterday", "to"),
        ("to=", "to"),
        ("from=2026-03-02&to=2026-03-01", "to"),
        ("tz=Mars/Olympus", "tz"),
        ("tz=", "tz"),
        ("aged_days=0", "aged_days"),
        ("aged_days=3651", "aged_days"),
        ("aged_days=ten", "aged_days"),
        ("aged_days=1.5", "aged_days"),
        ("limit=10", "limit"),
        ("from=2026-01-01&from=2026-02-01", "from"),
        ("from=0001-01-01", "from"),
        ("to=9999-12-31", "to"),
        ("from=%27%3B%20DROP%20TABLE%20listings%3B--", "from"),
    ],
)
def test_bad_parameters_are_400_with_field_errors(
    client: FlaskClient, auth: dict[str, str], query: str, field: str
) -> None:
    response = client.get(f"/api/kpi?{query}", headers=auth)
    assert response.status_code == 400
    body = response.get_json()
    assert body["success"] is False and body["metrics"] is None and body["message"]
    assert field in body["errors"] and all(isinstance(m, str) for m in body["errors"][field])


def test_time_zone_spelling_is_normalized(client: FlaskClient, auth: dict[str, str]) -> None:
    body = client.get("/api/kpi?tz=europe/berlin", headers=auth).get_json()
    assert body["meta"]["window"]["tz"] == "Europe/Berlin"


@pytest.mark.parametrize(("method", "path", "status"), [("GET", "/nope", 404), ("POST", "/api/kpi", 405)])
def test_unknown_routes_and_methods_are_json(client: FlaskClient, method: str, path: str, status: int) -> None:
    response = client.open(path, method=method)
    assert response.status_code == status
    assert response.is_json and response.get_json()["success"] is False


def test_second_request_is_a_cache_hit(client: FlaskClient, auth: dict[str, str], conn: psycopg.Connection) -> None:
    two_listings(conn)
    catch_up(conn)  # current, so cached for the TTL (a value with changes pending is not)
    first = client.get("/api/kpi?from=2026-03-01", headers=auth).get_json()
    # The same window spelled out: the same stored value, not a second computation.
    second = client.get("/api/kpi?tz=UTC&from=2026-03-01&aged_days=60", headers=auth).get_json()
    assert first["meta"]["cached"] is False and first["meta"]["pending_changes"] == 0
    assert second["meta"]["cached"] is True and second["meta"]["stale"] is False
    assert second["metrics"] == first["metrics"]
    assert second["meta"]["computed_at"] == first["meta"]["computed_at"]


def test_expired_entry_is_recomputed(app: Flask, auth: dict[str, str], conn: psycopg.Connection) -> None:
    app.extensions["kpi"].cache.ttl = 0  # every entry is past its freshness as soon as it is written
    client = app.test_client()
    two_listings(conn)
    assert client.get("/api/kpi", headers=auth).get_json()["metrics"]["total_listings"] == 2
    conn.execute("DELETE FROM listings")
    catch_up(conn)  # what the applier does within its interval
    body = client.get("/api/kpi", headers=auth).get_json()
    assert body["meta"]["cached"] is False and body["metrics"]["total_listings"] == 0


def fail_database(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable(*args: object, **kwargs: object) -> None:
        raise DatabaseUnavailable("connection refused")

    monkeypatch.setattr(app.extensions["kpi"].db, "kpi_rows", unavailable)


def test_database_down_without_cache_is_503(app: Flask, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    fail_database(app, monkeypatch)
    response = app.test_client().get("/api/kpi", headers=auth)
    assert response.status_code == 503
    body = response.get_json()
    assert body == {"metrics": None, "success": False, "message": body["message"]} and body["message"]


def test_database_down_serves_the_stale_copy(
    app: Flask, auth: dict[str, str], conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.extensions["kpi"].cache.ttl = 0
    two_listings(conn)
    client = app.test_client()
    fresh = client.get("/api/kpi", headers=auth).get_json()
    fail_database(app, monkeypatch)
    response = client.get("/api/kpi", headers=auth)
    assert response.status_code == 200
    body = response.get_json()
    assert body["meta"]["stale"] is True and body["meta"]["cached"] is True
    assert body["metrics"] == fresh["metrics"] and body["meta"]["computed_at"] == fresh["meta"]["computed_at"]
    # Another window has no earlier result: the frontend gets the 503 and falls back.
    assert client.get("/api/kpi?from=2026-01-01", headers=auth).status_code == 503


def test_stopped_database_answers_503_quickly(conn: psycopg.Connection, auth: dict[str, str]) -> None:
    # Nothing listens on port 1: the real pool, the real driver, a refused connection.
    app = create_app(make_settings("postgresql://postgres@127.0.0.1:1/none", db_pool_timeout=1.0))
    try:
        started = datetime.now(UTC)
        response = app.test_client().get("/api/kpi", headers=auth)
        elapsed = datetime.now(UTC) - started
    finally:
        app.extensions["kpi"].close()
    assert response.status_code == 503 and response.get_json()["success"] is False
    assert elapsed < timedelta(seconds=5)


def test_an_invalid_row_is_never_served(app: Flask, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    bad = dict.fromkeys(METRICS, 0) | {"conversion_rate": 150}
    monkeypatch.setattr(app.extensions["kpi"].db, "kpi_rows", lambda *a, **k: ([bad], 1.0, None, 0))
    response = app.test_client().get("/api/kpi", headers=auth)
    assert response.status_code == 500
    assert response.get_json()["metrics"] is None
