"""The shared KPI vectors (tests/vectors/kpis.json, made by tests/make_vectors.py from the
reference): up to date, and the SQL computes every one of them. The JS package's suite checks its
computeKpis against the same file."""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any

import psycopg
import pytest

from kpi_service.db.connections import Database
from kpi_service.serving.windows import Window
from tests import make_vectors
from tests.helpers import computed

VECTORS: list[dict[str, Any]] = json.loads(make_vectors.PATH.read_text())
# Rows naming absent rows cannot be inserted (foreign keys): they check computeKpis' refusal.
COMPUTABLE = [v for v in VECTORS if "metrics" in v]


def test_the_file_is_what_the_reference_gives() -> None:
    assert make_vectors.PATH.read_text() == make_vectors.render(), "run: .venv/bin/python -m tests.make_vectors"


def test_the_comparison_vectors_are_what_the_service_gives() -> None:
    """The JS package checks its comparedDays and kpiChanges against these."""
    expected = make_vectors.render_comparisons()
    assert make_vectors.COMPARISONS_PATH.read_text() == expected, "run: .venv/bin/python -m tests.make_vectors"
    found = json.loads(expected)
    assert any(p["change"]["total_listings"]["percent"] is None for p in found["changes"])
    assert {
        "from": "2028-02-29",
        "to": "2028-03-01",
        "compare": "previous_year",
        "compared": ["2027-02-28", "2027-03-01"],
    } in found["days"]


def _day(text: str | None) -> date | None:
    return None if text is None else date.fromisoformat(text)


@pytest.mark.parametrize("vector", COMPUTABLE, ids=[v["name"] for v in COMPUTABLE])
def test_sql_computes_the_vector(database: Database, conn: psycopg.Connection, vector: dict[str, Any]) -> None:
    spec = vector["window"]
    window = Window.of_dates(_day(spec["from"]), _day(spec["to"]), spec.get("tz", "UTC"))
    make_vectors.dataset_of(vector).insert(conn)
    now = datetime.fromisoformat(spec["now"])
    assert computed(database, [window], spec.get("aged_days", 60), now) == [vector["metrics"]]
