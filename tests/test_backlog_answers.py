"""A service started on a backlog, as after `kpi-service init-db` on a database the application
then filled, or a restart after downtime: polled at once, every answer either holds the numbers
of the committed rows or says how many changes it does not hold yet."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import psycopg
import pytest
from flask import Flask
from psycopg.rows import dict_row

from kpi_service.db.schema import apply_schema
from kpi_service.db.sql import kpi_statement_rows
from kpi_service.serving.responses import KpiValuesSchema
from tests.helpers import APPLYING, wait_until

NOW = datetime.now(UTC)
# Enough rows that the applier takes several batches of 50,000 log rows.
LOAD = """
INSERT INTO buyers (id, name) SELECT g, 'buyer ' || g FROM generate_series(1, 20000) g;
INSERT INTO listings (id, price, acquisition_cost, status, listed_at, sold_at, score)
SELECT g, 1000 + g % 997, CASE WHEN g % 5 > 0 THEN 900 + g % 101 END,
       CASE WHEN g % 3 = 0 THEN 'sold' WHEN g % 17 = 0 THEN 'withdrawn' ELSE 'active' END,
       timestamptz '2025-01-01' + g * interval '7 minutes',
       CASE WHEN g % 3 = 0 THEN timestamptz '2025-01-01' + g * interval '7 minutes' + interval '9 days' END,
       CASE WHEN g % 4 > 0 THEN g % 100 END
FROM generate_series(1, 60000) g;
INSERT INTO leads (id, buyer_id, listing_id, created_at, status)
SELECT g, 1 + g % 20000, 1 + g % 60000, timestamptz '2025-01-01' + g * interval '4 minutes', 'open'
FROM generate_series(1, 100000) g;
INSERT INTO purchases (id, listing_id, buyer_id, lead_id, sale_price, purchased_at)
SELECT g / 3, g, 1 + (g / 3) % 20000, CASE WHEN g % 2 = 0 THEN g END, 1100,
       timestamptz '2025-01-01' + g * interval '7 minutes' + interval '9 days'
FROM generate_series(3, 60000, 3) g;
"""


class Drained(threading.Thread):
    """When the change log was first seen empty, by a session polling it every 10 ms."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.at: float | None = None
        self._quit = threading.Event()
        self.start()

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while self.at is None and not self._quit.wait(0.01):
                if conn.execute("SELECT kpi.kpi_pending_changes()").fetchone()[0] == 0:
                    self.at = time.monotonic()

    def stop(self) -> None:
        self._quit.set()
        self.join()


@pytest.mark.slow
def test_answers_during_a_backlog_say_so_until_they_hold_every_commit(
    empty_database: str, make_app: Callable[..., Flask], auth: dict[str, str]
) -> None:
    apply_schema(empty_database)
    with psycopg.connect(empty_database, autocommit=True) as conn:
        with conn.transaction():
            conn.execute(LOAD)
        backlog = conn.execute("SELECT kpi.kpi_pending_changes() AS n").fetchone()[0]
    with psycopg.connect(empty_database, row_factory=dict_row) as conn:
        (row,) = kpi_statement_rows(conn, "raw", [(None, None, NOW)], 60)
    reference = KpiValuesSchema().load(row)
    assert backlog > 150_000 and reference["total_listings"] == 60_000

    app = make_app(database_url=empty_database, apply_interval=APPLYING)
    client = app.test_client()
    answers: list[dict] = []
    answered: list[float] = []
    drained = Drained(empty_database)

    def current() -> bool:
        response = client.get("/api/kpi", headers=auth)
        assert response.status_code == 200, response.get_data(as_text=True)
        answers.append(response.get_json())
        answered.append(time.monotonic())
        return answers[-1]["meta"]["pending_changes"] == 0

    try:
        wait_until(current, seconds=120)
        drained.join(timeout=5)  # the log is empty now: seen within 10 ms
    finally:
        drained.stop()
    # The first current answer within a second of the log's emptying (seen by a session of its own).
    assert drained.at is not None and answered[-1] - drained.at <= 1.0, answered[-1] - (drained.at or 0)
    behind = [a for a in answers if a["meta"]["pending_changes"] > 0]
    assert behind, "the first answers came after the backlog was applied: nothing was tested"
    assert all(a["metrics"] == reference for a in answers if a["meta"]["pending_changes"] == 0)
    # No answer shows numbers from before the backlog without saying so.
    assert all(a["meta"]["pending_changes"] > 0 for a in answers if a["metrics"] != reference)
    # And once current, the next poll is current too.
    again = client.get("/api/kpi", headers=auth).get_json()
    assert again["meta"]["pending_changes"] == 0 and again["metrics"] == reference
