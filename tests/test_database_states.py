"""Not every failing database is an unreachable one: a pool whose connections are all in use and
a database without the KPI schema get answers that say so, and neither marks the database
unreachable (which would serve every other window's cached value as stale)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import psycopg
import pytest
from flask import Flask

from kpi_service.app import create_app
from kpi_service.db.schema import apply_schema
from tests.helpers import APPLYING, make_settings, two_listings, wait_until

MISSING = "missing: run kpi-service init-db"


@pytest.fixture
def small_pool_app(database_url: str, conn: psycopg.Connection) -> Iterator[Flask]:
    # One connection, given up on after 100 ms; no applier holding it.
    app = create_app(make_settings(database_url, db_pool_size=1, db_pool_timeout=0.1))
    yield app
    app.extensions["kpi"].close()


def test_a_busy_pool_is_a_503_busy_with_retry_after_and_no_outage(
    small_pool_app: Flask, auth: dict[str, str], conn: psycopg.Connection
) -> None:
    two_listings(conn)
    client = small_pool_app.test_client()
    state = small_pool_app.extensions["kpi"]
    assert client.get("/api/kpi?from=2026-01-01", headers=auth).status_code == 200  # opens the one connection
    with state.db.connection("test"):  # a slow computation holds it
        response = client.get("/api/kpi?from=2026-02-01", headers=auth)
        assert response.status_code == 503 and response.headers["Retry-After"] == "1"
        body = response.get_json()
        assert body["success"] is False and body["metrics"] is None and "busy" in body["message"]
        assert not state.service._db_unreachable
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.get_json()["checks"]["database"] == "busy"
    # Its turn comes: computed, not stale.
    after = client.get("/api/kpi?from=2026-02-01", headers=auth).get_json()
    assert after["success"] is True and after["meta"]["stale"] is False


def test_only_connection_errors_mark_the_database_unreachable(auth: dict[str, str]) -> None:
    # Nothing listens on port 1: the pool cannot open a connection, its size stays below the maximum.
    app = create_app(make_settings("postgresql://postgres@127.0.0.1:1/none", db_pool_size=1, db_pool_timeout=0.3))
    try:
        response = app.test_client().get("/api/kpi", headers=auth)
        assert response.status_code == 503 and "Retry-After" not in response.headers
        assert "unavailable" in response.get_json()["message"]
        assert app.extensions["kpi"].service._db_unreachable
    finally:
        app.extensions["kpi"].close()


def test_a_missing_schema_is_named_logged_once_and_found_when_installed(
    empty_database: str, auth: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(make_settings(empty_database))
    try:
        client = app.test_client()
        with caplog.at_level(logging.INFO, logger="kpi_service"):
            for days in (1, 2, 3):
                response = client.get(f"/api/kpi?aged_days={days}", headers=auth)
                assert response.status_code == 503
                assert response.get_json()["message"].startswith("The service is not initialized")
                assert "kpi-service init-db" in response.get_json()["message"]
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.get_json()["checks"] == {"database": "ok", "redis": "in-process", "schema": MISSING}
            assert not app.extensions["kpi"].service._db_unreachable
            errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(errors) == 1 and "no KPI schema" in errors[0] and "kpi-service init-db" in errors[0]

            apply_schema(empty_database)
            assert client.get("/api/kpi", headers=auth).status_code == 200
            assert client.get("/readyz").get_json()["checks"]["schema"] == "ok"
        assert "the KPI schema is there now" in caplog.text
    finally:
        app.extensions["kpi"].close()


def test_the_applier_reports_a_missing_schema_at_startup(empty_database: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="kpi_service"):
        app = create_app(make_settings(empty_database, apply_interval=APPLYING))
        try:
            # No request: the applier's first tick, which looks the mode up, finds it.
            wait_until(lambda: "no KPI schema" in caplog.text, seconds=10)
        finally:
            app.extensions["kpi"].close()
