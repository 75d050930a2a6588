"""What a KPI body says about the applier's backlog (meta.pending_changes, includes_commits_before),
how long such a value is cached, and the applier's lag in /readyz and the metrics. Real
PostgreSQL with the summaries, the in-process Redis stand-in, the applier driven by the test."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, date, datetime

import psycopg
from flask import Flask

from kpi_service.ops import metrics
from kpi_service.serving.freshness import Changes, Requested
from kpi_service.serving.query import KpiQuery
from tests.helpers import counted, insert_listing, wait_until


def two_listings(conn: psycopg.Connection) -> None:
    """Two committed listings, logged and not applied."""
    for day in (1, 2):
        insert_listing(conn, datetime(2026, 3, day, tzinfo=UTC))


def test_a_value_computed_behind_the_applier_says_so_and_is_replaced(
    make_app: Callable[..., Flask], auth: dict[str, str], conn: psycopg.Connection
) -> None:
    app = make_app()
    client = app.test_client()
    two_listings(conn)
    behind = client.get("/api/kpi", headers=auth)
    meta = behind.get_json()["meta"]
    assert behind.get_json()["metrics"]["total_listings"] == 0  # the summaries before the backlog
    assert meta["pending_changes"] == 2
    assert meta["includes_commits_before"] is None  # no applier has reported yet
    assert behind.headers["Cache-Control"] == "private, max-age=0"  # not cached for the TTL

    assert app.extensions["kpi"].applier.apply_once() == 2

    def current() -> bool:
        body = client.get("/api/kpi", headers=auth).get_json()
        return body["meta"]["pending_changes"] == 0 and body["metrics"]["total_listings"] == 2

    wait_until(current, seconds=10)
    body = client.get("/api/kpi", headers=auth).get_json()
    assert body["meta"]["includes_commits_before"] == body["meta"]["computed_at"]
    assert client.get("/api/kpi", headers=auth).headers["ETag"] != behind.headers["ETag"]


def test_while_rows_wait_the_body_names_when_the_log_was_last_empty(
    make_app: Callable[..., Flask], auth: dict[str, str], conn: psycopg.Connection
) -> None:
    app = make_app()
    applier = app.extensions["kpi"].applier
    before = time.time()
    assert applier.apply_once() == 0  # the log empty: reported
    two_listings(conn)
    body = app.test_client().get("/api/kpi", headers=auth).get_json()
    assert body["meta"]["pending_changes"] == 2
    covered = body["meta"]["includes_commits_before"]
    assert covered is not None and covered <= body["meta"]["computed_at"]
    assert covered >= time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(before)))


def test_readiness_and_metrics_give_the_applier_lag(make_app: Callable[..., Flask], conn: psycopg.Connection) -> None:
    app = make_app()
    client = app.test_client()
    applier = app.extensions["kpi"].applier
    assert applier.apply_once() == 0
    assert client.get("/readyz").get_json()["checks"]["applier_lag_s"] == 0
    assert metrics.APPLIER_LAG._value.get() == 0

    two_listings(conn)
    checks = client.get("/readyz").get_json()["checks"]
    assert checks["pending_changes"] == 2 and checks["applier_lag_s"] >= 0

    applier.batch = 1  # a full batch: rows remain, so the lag is the time since the log was empty
    reported = app.extensions["kpi"].cache.caught_up_at()
    assert applier.apply_once() == 1
    assert metrics.APPLIER_LAG._value.get() > 0
    assert app.extensions["kpi"].cache.caught_up_at() == reported
    assert applier.apply_once() == 1  # the last row, and the log empty again
    assert metrics.APPLIER_LAG._value.get() == 0
    assert client.get("/readyz").get_json()["checks"] == {**checks, "pending_changes": 0, "applier_lag_s": 0}


# --- change-driven freshness ------------------------------------------------------------------

MARCH = "from=2026-03-01&to=2026-03-31&tz=UTC"
OLD = "from=2020-01-01&to=2020-01-31&tz=UTC"


def test_a_batch_brings_the_polled_windows_it_changes_forward_with_no_statement_of_their_own(
    make_app: Callable[..., Flask], auth: dict[str, str], conn: psycopg.Connection
) -> None:
    app = make_app(cache_ttl=300)
    client = app.test_client()
    state = app.extensions["kpi"]
    two_listings(conn)
    assert state.applier.apply_once() == 2
    first = {w: client.get(f"/api/kpi?{w}", headers=auth) for w in (MARCH, OLD)}
    assert first[MARCH].get_json()["metrics"]["total_listings"] == 2
    wait_until(lambda: state.service.changes.live)  # the listener, started by the first request
    calls = counted(app)

    insert_listing(conn, datetime(2026, 3, 5, tzinfo=UTC))
    assert state.applier.apply_once() == 1
    seq = state.cache.change_seq()
    key = next(k for k in state.service.requested._windows if "2026-03-01" in k)
    wait_until(lambda: (entry := state.cache.get(key)) is not None and entry.seq >= seq)
    # The batch's probe and one window checked in full (serving/advancer.py), not one statement
    # per window; the 2020 one is not touched.
    assert calls == [2]

    after = client.get(f"/api/kpi?{MARCH}", headers={**auth, "If-None-Match": first[MARCH].headers["ETag"]})
    assert after.status_code == 200 and after.get_json()["metrics"]["total_listings"] == 3
    assert after.get_json()["meta"]["cached"] is True  # the refreshed value, not one computed for the poll
    unchanged = client.get(f"/api/kpi?{OLD}", headers={**auth, "If-None-Match": first[OLD].headers["ETag"]})
    assert unchanged.status_code == 304
    assert calls == [2]


def test_a_value_is_not_served_past_a_change_its_process_did_not_refresh(
    make_app: Callable[..., Flask], auth: dict[str, str], conn: psycopg.Connection
) -> None:
    app = make_app(cache_ttl=300)
    client = app.test_client()
    state = app.extensions["kpi"]
    client.get(f"/api/kpi?{MARCH}", headers=auth)
    wait_until(lambda: state.service.changes.live)
    state.service.requested._windows.clear()  # as if requested longer ago than the TTL
    two_listings(conn)
    assert state.applier.apply_once() == 2
    wait_until(lambda: state.service.changes.latest == state.cache.change_seq())
    assert client.get(f"/api/kpi?{MARCH}", headers=auth).get_json()["metrics"]["total_listings"] == 2


def test_a_batch_before_the_process_listened_counts_as_a_change() -> None:
    changes = Changes()
    query = KpiQuery(date(2026, 3, 1), date(2026, 3, 31), "UTC", 60)
    inside = {"from": "2026-03-05T00:00:00+00:00", "to": "2026-03-05T00:00:00+00:00", "stock_from": None}
    outside = {"from": "2020-01-05T00:00:00+00:00", "to": "2020-01-05T00:00:00+00:00", "stock_from": None}
    changes.heard(1, inside)
    assert changes.needed(query, 0) == 0  # not listening: the TTL alone
    changes.subscribed(3)  # batches 2 and 3 were not heard
    assert changes.needed(query, 3) == 3
    assert changes.needed(query, 1) == 3
    changes.heard(4, outside)
    assert changes.needed(query, 3) == 3  # batch 4 does not touch March
    changes.heard(5, inside)
    assert changes.needed(query, 4) == 5
    changes.heard(6, {"all": True})
    assert changes.needed(query, 5) == 6


def test_a_window_is_refreshed_by_a_batch_only_if_requested_since_the_last_refresh() -> None:
    requested = Requested(within=300)
    query = KpiQuery(date(2026, 3, 1), date(2026, 3, 31), "UTC", 60)
    inside = {"from": "2026-03-05T00:00:00+00:00", "to": "2026-03-05T00:00:00+00:00", "stock_from": None}
    requested.saw("march", "kpi", query)
    assert [key for key, _, _ in requested.changed_by(inside)] == ["march"]
    assert requested.changed_by(inside) == []  # nobody read the refreshed value yet
    requested.saw("march", "kpi", query)
    assert [key for key, _, _ in requested.changed_by(inside)] == ["march"]
