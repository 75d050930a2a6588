"""The audit (issue 33): a day of the summaries at a time compared with the sales tables in the
applier's transaction, every difference repaired in place, counted, logged and shown by /readyz."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from flask import Flask
from prometheus_client import REGISTRY

from kpi_service.cli.seed import seed
from tests.dataset import audit_pass, catch_up
from tests.test_summary import applied_and_rebuilt

START = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def conn(own_database: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(own_database, autocommit=True) as connection:
        connection.execute("INSERT INTO buyers (id, name) SELECT i, 'b' FROM generate_series(1, 40) i")
        connection.execute(
            "INSERT INTO listings (id, price, acquisition_cost, status, listed_at, sold_at, score)"
            " SELECT i, 100 + i, 50, CASE WHEN i %% 3 = 0 THEN 'sold' ELSE 'active' END, %s + i * interval '7 hours',"
            " CASE WHEN i %% 3 = 0 THEN %s + i * interval '9 hours' END, CASE WHEN i %% 2 = 0 THEN 50 END"
            " FROM generate_series(1, 200) i",
            [START, START],
        )
        connection.execute(
            "INSERT INTO leads (id, buyer_id, listing_id, created_at, status)"
            " SELECT i, 1 + i %% 40, i, %s + i * interval '5 hours', 'open' FROM generate_series(1, 200) i",
            [START],
        )
        connection.execute(
            "INSERT INTO purchases (id, listing_id, buyer_id, lead_id, sale_price, purchased_at)"
            " SELECT i, i * 3, 1 + i %% 40, i * 3, 200, %s + i * interval '11 hours' FROM generate_series(1, 60) i",
            [START],
        )
        catch_up(connection)
        yield connection


def corrupt(conn: psycopg.Connection) -> tuple[datetime, datetime]:
    """One 15-minute bucket of kpi_sums and one buyer's bucket changed by hand: their days."""
    day = START + timedelta(days=4)
    bucket = conn.execute(
        "UPDATE kpi.kpi_sums SET listings = listings + 5, price_sum = price_sum + 1"
        " WHERE grain = 900 AND bucket = (SELECT min(bucket) FROM kpi.kpi_sums WHERE grain = 900 AND listings > 0"
        " AND bucket >= %s) RETURNING bucket",
        [day],
    ).fetchone()[0]
    gone = conn.execute(
        "DELETE FROM kpi.kpi_buyer_buckets WHERE (buyer_id, bucket) ="
        " (SELECT buyer_id, bucket FROM kpi.kpi_buyer_buckets WHERE bucket >= %s ORDER BY bucket LIMIT 1)"
        " RETURNING bucket",
        [day + timedelta(days=5)],
    ).fetchone()[0]
    return bucket, gone


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_one_pass_repairs_and_counts_what_was_changed_by_hand(conn: psycopg.Connection) -> None:
    corrupt(conn)
    applied, rebuilt = applied_and_rebuilt(conn)
    assert applied != rebuilt  # the applier alone never looks there again
    found = audit_pass(conn)
    repaired = {part for f in found[:-1] for part, rows in f["found"].items() if rows}
    assert {"kpi_sums", "kpi_buyer_buckets"} <= repaired
    assert found[-1]["repairs"] == sum(f["repairs"] for f in found[:-1]) > 0
    applied, rebuilt = applied_and_rebuilt(conn)
    assert applied == rebuilt
    state = conn.execute("SELECT last_repairs, repairs, last_pass_at IS NOT NULL FROM kpi.kpi_audit_state").fetchone()
    assert state == (found[-1]["repairs"], found[-1]["repairs"], True)


def test_the_service_counts_logs_and_shows_the_repairs(
    own_database: str, conn: psycopg.Connection, make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(database_url=own_database, audit_interval=0.001)
    applier = app.extensions["kpi"].applier
    before = metric("kpi_summary_audit_repairs_total", part="kpi_sums")
    bucket, _ = corrupt(conn)
    with caplog.at_level(logging.ERROR, logger="kpi_service"):
        while app.test_client().get("/readyz").get_json()["checks"]["audit"]["last_pass_at"] is None:
            applier.apply_once()
    assert metric("kpi_summary_audit_repairs_total", part="kpi_sums") > before
    assert metric("kpi_summary_audit_repairs_total", part="kpi_buyer_buckets") >= 1
    assert any(bucket.date().isoformat() in r.getMessage() and "kpi_sums" in r.getMessage() for r in caplog.records)
    audit = app.test_client().get("/readyz").get_json()["checks"]["audit"]
    assert audit["last_repairs"] >= 2 and audit["repairs"] == audit["last_repairs"]
    applied, rebuilt = applied_and_rebuilt(conn)
    assert applied == rebuilt


def test_an_audit_of_right_summaries_repairs_nothing(conn: psycopg.Connection) -> None:
    conn.execute("UPDATE listings SET price = price + 1 WHERE id % 7 = 0")  # and a batch before it
    assert audit_pass(conn)[-1] == {"pass_ended": True, "repairs": 0}


def test_an_audit_of_seeded_data_with_long_sales_repairs_nothing(conn: psycopg.Connection, own_database: str) -> None:
    """Two years of the seeder's data: sales long after listing (aged_inventory's long sales,
    which kpi_slice_sums must put in their 15-minute bucket as the rebuild does), DST days."""
    seed(own_database, 300, seed=7, truncate=True)
    assert audit_pass(conn)[-1] == {"pass_ended": True, "repairs": 0}
