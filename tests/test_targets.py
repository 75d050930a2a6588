"""The owner's targets (docs/kpis.md, "Targets"): set by `kpi-service target`, in GET /api/kpi's
body at serve time, in the next poll and on an open stream within a second."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal

import psycopg
import pytest
from flask import Flask

from kpi_service.cli import commands
from kpi_service.db.targets import Target
from kpi_service.serving.query import KpiQuery
from kpi_service.serving.targets import of_window, window_length
from tests.helpers import ticket
from tests.sse import Sse, serving

AT = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def no_targets(database_url: str, conn: psycopg.Connection) -> Iterator[str]:
    """The test database without targets, before and after: other tests' bodies have none."""
    conn.execute("DELETE FROM kpi.kpi_targets")
    yield database_url
    conn.execute("DELETE FROM kpi.kpi_targets")


def cli(database_url: str, *args: str) -> str:
    out = io.StringIO()
    commands.target_command(
        {"DATABASE_URL": database_url},
        args[0],
        kpi=args[1] if len(args) > 1 else None,
        value=Decimal(args[2]) if len(args) > 2 and args[2] else None,
        window=args[3] if len(args) > 3 else "any",
        out=out,
    )
    return out.getvalue()


def test_window_lengths() -> None:
    def length(first: str, last: str) -> str | None:
        return window_length(KpiQuery(date.fromisoformat(first), date.fromisoformat(last), "UTC", 60))

    assert length("2026-03-05", "2026-03-05") == "daily"
    assert length("2026-03-01", "2026-03-31") == "monthly"
    assert length("2026-12-01", "2026-12-07") == "monthly"  # a month so far
    assert length("2026-03-02", "2026-03-31") is None
    assert window_length(KpiQuery(None, None, "UTC", 60)) is None


def test_met_by_the_kpis_direction_and_the_windows_own_length_first() -> None:
    targets = (
        Target("aged_inventory", "any", Decimal(20), AT),
        Target("total_listings", "any", Decimal(100), AT),
        Target("total_listings", "monthly", Decimal(40), AT),
        Target("lead_to_purchase_time", "daily", Decimal(5), AT),
    )
    metrics = {"aged_inventory": 23, "total_listings": 41, "lead_to_purchase_time": 4.5}
    month = KpiQuery(date(2026, 3, 1), date(2026, 3, 31), "UTC", 60)
    assert of_window(targets, month, metrics) == {
        # Lower is better: 23 aged vehicles miss a target of 20.
        "aged_inventory": {"value": 20.0, "window": "any", "met": False},
        "total_listings": {"value": 40.0, "window": "monthly", "met": True},
    }
    day = KpiQuery(date(2026, 3, 1), date(2026, 3, 1), "UTC", 60)
    found = of_window(targets, day, metrics)
    assert found["total_listings"] == {"value": 100.0, "window": "any", "met": False}
    assert found["lead_to_purchase_time"] == {"value": 5.0, "window": "daily", "met": True}


def test_the_command_sets_lists_and_unsets(no_targets: str, conn: psycopg.Connection) -> None:
    assert cli(no_targets, "list") == "no targets set\n"
    assert "set to 50" in cli(no_targets, "set", "total_listings", "50")
    assert "set to 12.5" in cli(no_targets, "set", "aged_inventory", "12.5", "monthly")
    assert "set to 60" in cli(no_targets, "set", "total_listings", "60")  # replaced
    listed = cli(no_targets, "list").splitlines()
    assert listed == [
        "aged_inventory           monthly windows  12.5",
        "total_listings           every window     60",
    ]
    assert "removed" in cli(no_targets, "unset", "aged_inventory", "", "monthly")
    assert "was not set" in cli(no_targets, "unset", "aged_inventory", "", "monthly")
    assert conn.execute("SELECT count(*) FROM kpi.kpi_targets").fetchone()[0] == 1


def test_bad_targets_are_refused_by_the_command(no_targets: str) -> None:
    for args in (["set", "nothing", "5"], ["set", "total_listings", "lots"], ["set", "total_listings", "1e20"]):
        done = subprocess.run(
            [sys.executable, "-m", "kpi_service.cli", "target", *args],
            env={"DATABASE_URL": no_targets, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
        )
        assert done.returncode == 2 and "target set" in done.stderr, done.stderr


def test_a_target_set_is_in_the_next_poll_and_on_an_open_stream_within_a_second(
    no_targets: str, make_app: Callable[..., Flask], conn: psycopg.Connection, auth: dict[str, str]
) -> None:
    app = make_app(stream_heartbeat=1)
    today = datetime.now(UTC).date()
    window = f"from={today}&to={today}&tz=UTC"
    client = app.test_client()
    assert client.get(f"/api/kpi?{window}", headers=auth).get_json()["targets"] == {}
    with serving(app) as base, Sse(f"{base}/api/kpi/stream?{window}&ticket={ticket(base)}") as stream:
        assert stream.next_event().json()["targets"] == {}
        etag = client.get(f"/api/kpi?{window}", headers=auth).headers["ETag"]
        set_at = time.monotonic()
        cli(no_targets, "set", "total_listings", "2", "daily")
        # The next poll within a second (the processes read the table every 0.25 s).
        while True:
            response = client.get(f"/api/kpi?{window}", headers=auth)
            if response.get_json()["targets"]:
                break
            assert time.monotonic() - set_at < 1.0, "no target in the polls after a second"
            time.sleep(0.05)
        polled = time.monotonic() - set_at
        assert response.get_json()["targets"] == {"total_listings": {"value": 2.0, "window": "daily", "met": False}}
        assert response.headers["ETag"] != etag  # a poller's If-None-Match gets the new body
        body = stream.until(lambda body: bool(body["targets"]), seconds=1.0)
        streamed = time.monotonic() - set_at
        assert body["targets"]["total_listings"]["met"] is False and streamed < 1.0, (polled, streamed)
        cli(no_targets, "unset", "total_listings", "", "daily")
        assert stream.until(lambda body: not body["targets"], seconds=1.0)["targets"] == {}
