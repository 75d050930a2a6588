"""What the application may do to its own tables, and what the service does then (issue 33,
items 2, 7 and 10): a KPI column renamed, dropped or retyped fails none of the application's
writes, the service says what happened and serves no number it cannot compute, and init-db
brings the summaries back; triggers disabled even for one transaction stop the summaries until
init-db rebuilds them; and a change log nobody applies does not grow."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from flask import Flask

from kpi_service.db.schema import apply_schema
from tests.dataset import catch_up
from tests.helpers import APPLYING, token, wait_until

AT = datetime(2026, 3, 10, 12, tzinfo=UTC)
MARCH = "/api/kpi?from=2026-03-01&to=2026-03-31"


@pytest.fixture
def writes(own_database: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(own_database, autocommit=True) as conn:
        conn.execute("INSERT INTO buyers (id, name) VALUES (1, 'a')")
        conn.execute(
            "INSERT INTO listings (id, price, status, listed_at, score) SELECT i, 100, 'active', %s, 50"
            " FROM generate_series(1, 10) i",
            [AT],
        )
        catch_up(conn)
        yield conn


def source(conn: psycopg.Connection) -> str:
    return conn.execute("SELECT kpi.kpi_source()").fetchone()[0]


def application_writes(conn: psycopg.Connection, n: int) -> None:
    """An insert, an update and a delete of listings, as the application makes them: none may fail."""
    conn.execute("INSERT INTO listings (id, price, status, listed_at) VALUES (%s, 200, 'active', %s)", [1000 + n, AT])
    conn.execute("UPDATE listings SET price = price + 1 WHERE id = %s", [1000 + n])
    conn.execute("DELETE FROM listings WHERE id = %s", [1000 + n])


@pytest.mark.parametrize(
    ("change", "undo"),
    [
        ("ALTER TABLE listings RENAME COLUMN score TO rating", "ALTER TABLE listings RENAME COLUMN rating TO score"),
        ("ALTER TABLE purchases RENAME COLUMN purchased_at TO bought_at",
         "ALTER TABLE purchases RENAME COLUMN bought_at TO purchased_at"),
        ("ALTER TABLE listings DROP COLUMN score", "ALTER TABLE listings ADD COLUMN score numeric(5, 2)"),
    ],
)  # fmt: skip
def test_a_kpi_column_renamed_or_dropped_under_a_running_service(
    own_database: str, writes: psycopg.Connection, make_app: Callable[..., Flask], change: str, undo: str
) -> None:
    app = make_app(database_url=own_database, apply_interval=APPLYING)
    client = app.test_client()
    auth = {"Authorization": f"Bearer {token()}"}
    assert client.get(MARCH, headers=auth).get_json()["metrics"]["total_listings"] == 10
    writes.execute(change)
    for n in range(20):  # while the service notices
        application_writes(writes, n)
    # The applier stops the summaries and empties the log; no KPI can be read, and the service says why.
    wait_until(lambda: source(writes) == "raw")
    wait_until(lambda: writes.execute("SELECT count(*) FROM kpi.kpi_changes").fetchone()[0] == 0)
    application_writes(writes, 99)
    refused = client.get("/api/kpi?from=2026-03-02&to=2026-03-30", headers=auth)
    assert refused.status_code == 503
    assert "the sales tables lack columns the KPIs read" in refused.get_json()["message"]
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "columns the KPIs read" in ready.get_json()["checks"]["schema"]
    # The column back, init-db builds the summaries anew.
    writes.execute(undo)
    apply_schema(own_database)
    assert source(writes) == "summaries"
    app.extensions["kpi"].db.mode(refresh=True)
    body = client.get("/api/kpi?from=2026-03-03&to=2026-03-30", headers=auth).get_json()
    assert body["metrics"]["total_listings"] == 10


def test_a_kpi_column_retyped_keeps_the_numbers(own_database: str, writes: psycopg.Connection) -> None:
    """A retype PostgreSQL allows (the score as real): the images still read, the numbers stay exact."""
    writes.execute("ALTER TABLE listings ALTER COLUMN score TYPE real")
    application_writes(writes, 1)
    writes.execute("UPDATE listings SET score = 75.5 WHERE id = 1")
    catch_up(writes)
    assert source(writes) == "summaries"
    assert writes.execute("SELECT sum(score_sum) FROM kpi.kpi_sums WHERE grain = 900").fetchone()[0] == 525.5


def test_triggers_disabled_and_enabled_again_in_one_transaction(own_database: str, writes: psycopg.Connection) -> None:
    """Issue 33, item 7: the 100 listings loaded meanwhile went past the log. The summaries stop
    until init-db, which counts them; the triggers are ALWAYS again after it."""
    with writes.transaction():
        writes.execute("ALTER TABLE listings DISABLE TRIGGER ALL")
        writes.execute(
            "INSERT INTO listings (id, price, status, listed_at) SELECT i, 1, 'active', %s"
            " FROM generate_series(101, 200) i",
            [AT],
        )
        writes.execute("ALTER TABLE listings ENABLE TRIGGER ALL")
    assert source(writes) == "raw"
    catch_up(writes)
    assert source(writes) == "raw"
    apply_schema(own_database)
    assert source(writes) == "summaries"
    assert writes.execute("SELECT sum(listings) FROM kpi.kpi_sums WHERE grain = 900").fetchone() == (110,)
    assert writes.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'kpi\\_%' AND tgenabled = 'A'"
    ).fetchone() == (12,)


def test_the_log_does_not_grow_while_the_summaries_are_not_built(
    own_database: str, writes: psycopg.Connection, make_app: Callable[..., Flask]
) -> None:
    """Issue 33, item 10: in the raw mode (a failed build, or before init-db's build) the applier
    empties the log the triggers still fill."""
    writes.execute("DELETE FROM kpi.kpi_summary_state")
    make_app(database_url=own_database, apply_interval=APPLYING)
    for n in range(10):
        application_writes(writes, n)
    wait_until(lambda: writes.execute("SELECT count(*) FROM kpi.kpi_changes").fetchone()[0] == 0)
    assert source(writes) == "raw"


def test_a_service_started_with_a_kpi_column_gone_still_empties_the_log(
    own_database: str, writes: psycopg.Connection, make_app: Callable[..., Flask]
) -> None:
    """Its first look at the database finds the column gone: the applier runs all the same, stops
    the summaries and keeps the log from growing."""
    writes.execute("ALTER TABLE listings RENAME COLUMN score TO rating")
    make_app(database_url=own_database, apply_interval=APPLYING)
    for n in range(10):
        application_writes(writes, n)
    wait_until(lambda: source(writes) == "raw")
    wait_until(lambda: writes.execute("SELECT count(*) FROM kpi.kpi_changes").fetchone()[0] == 0)
