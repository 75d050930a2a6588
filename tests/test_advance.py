"""Freshness whose cost follows the changes (issue 37): the windows read lately, across two
instances sharing one real Redis, are brought up to each batch of the summaries by its deltas
(kpi_service/serving/advancer.py). After every batch of random application writes, each of 200
watched windows must equal a fresh computation, and the statements the batch cost must not
grow with the number of windows."""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import redis
from flask import Flask
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from psycopg.rows import dict_row, tuple_row

from kpi_service.app import create_app
from kpi_service.db.sql import kpi_statement_rows
from kpi_service.ops import metrics
from kpi_service.serving.advancer import described
from kpi_service.serving.bodies import parse_instant
from kpi_service.serving.query import windows_of
from tests.dataset import Dataset, catch_up
from tests.helpers import RedisServer, counted, make_settings, wait_until
from tests.strategies import datasets
from tests.test_applier_model import write

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Adelaide"]
TODAY = datetime.now(UTC).date()


def watched_queries(rng: random.Random, count: int) -> list[str]:
    """`count` distinct windows: most hold the present (to come, to the end of next month, open),
    the rest in 2026's DST stretches the data falls in; some are histories, some compared."""
    queries: set[str] = set()
    while len(queries) < count:
        zone = rng.choice(ZONES)
        aged = rng.choice([60, 7])
        kind = rng.random()
        if kind < 0.5:
            first = TODAY - timedelta(days=rng.randint(0, 400))
            last = rng.choice([None, TODAY + timedelta(days=rng.randint(0, 40))])
        else:
            first = date(2026, rng.choice([2, 3, 10]), rng.randint(1, 28))
            last = first + timedelta(days=rng.randint(0, 45))
        query = f"tz={zone}&aged_days={aged}&from={first.isoformat()}"
        if kind > 0.9 and last is not None:
            interval = rng.choice(["day", "week", "month"])
            queries.add(f"/history?{query}&to={min(last, first + timedelta(days=30)).isoformat()}&interval={interval}")
        elif last is not None and kind > 0.75:
            # Compared with another window: both kept fresh by the same deltas (two spans).
            compare = rng.choice(["previous_period", "previous_year"])
            queries.add(f"?{query}&to={last.isoformat()}&compare={compare}")
        else:
            queries.add("?" + query + ("" if last is None else f"&to={last.isoformat()}"))
    return sorted(queries)


def recomputed(conn: psycopg.Connection, text: str, body: dict[str, Any]) -> list[dict[str, float]]:
    """The window's KPIs computed now by the statement, at the value's own as-of instant."""
    found = described(text)
    assert found is not None
    kind, query = found
    at = parse_instant(body["meta"]["computed_at"])
    assert at is not None
    spans = [(w.start, w.end, w.as_of(at)) for w, _ in windows_of(kind, query)]
    conn.row_factory = dict_row
    try:
        rows = kpi_statement_rows(conn, "summaries", spans, query.aged_days)
    finally:
        conn.row_factory = tuple_row
    return [{k: float(v) for k, v in row.items()} for row in rows]


def shown(body: dict[str, Any]) -> list[dict[str, float]]:
    series = body.get("series", [body, *([body["comparison"]] if "comparison" in body else [])])
    return [{k: float(v) for k, v in part["metrics"].items()} for part in series]


@contextlib.contextmanager
def two_instances(database_url: str, redis_url: str) -> Iterator[tuple[Flask, Flask]]:
    """Two instances of the service on one database and one (emptied) Redis."""
    redis.Redis.from_url(redis_url).flushall()
    apps = [create_app(make_settings(database_url, redis_url=redis_url, cache_ttl=300)) for _ in range(2)]
    try:
        yield apps[0], apps[1]
    finally:
        for app in apps:
            app.extensions["kpi_stream"].hub.close()
            app.extensions["kpi"].close()


@settings(
    max_examples=4,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_200_windows_on_two_instances_equal_their_computation_after_every_batch(
    database_url: str, redis_server: RedisServer, conn: psycopg.Connection, auth: dict[str, str], data: st.DataObject
) -> None:
    dataset = data.draw(datasets(max_listings=10))
    dataset.insert(conn)
    catch_up(conn)
    with two_instances(database_url, redis_server.url) as instances:
        batches_keep_200_windows_exact(instances, conn, auth, dataset, data)


def batches_keep_200_windows_exact(
    instances: tuple[Flask, Flask],
    conn: psycopg.Connection,
    auth: dict[str, str],
    dataset: Dataset,
    data: st.DataObject,
) -> None:
    one, two = instances
    rng = random.Random(data.draw(st.integers(0, 2**31)))
    for i, query in enumerate(watched_queries(rng, 200)):
        client = (one if i % 2 else two).test_client()
        assert client.get(f"/api/kpi{query}", headers=auth).status_code == 200
    states = [app.extensions["kpi"] for app in instances]
    for state in states:
        wait_until(lambda state=state: state.service.changes.live)
    statements = [counted(app) for app in instances]
    arithmetic = [0]
    for state in states:
        original = state.db.metrics_of_sums

        def counted_sums(arguments: dict[str, list[Any]], original: Any = original) -> list[dict[str, Any]]:
            arithmetic[0] += 1
            return original(arguments)

        state.db.metrics_of_sums = counted_sums
    cache = states[0].cache
    assert len(cache.watched()) == 200
    advanced_before = metrics.REFRESH_ADVANCED._value.get()
    mismatches_before = metrics.REFRESH_MISMATCHES._value.get()

    for _ in range(data.draw(st.integers(2, 4))):
        for _ in range(data.draw(st.integers(1, 3))):
            write(conn, dataset, data.draw)
        before = sum(calls[0] for calls in statements) + arithmetic[0]
        assert states[0].applier.apply_once()
        seq = cache.change_seq()
        for state in states:
            wait_until(lambda state=state, seq=seq: state.service.changes.latest >= seq)
        # Every window polled on either instance: the value it serves equals its computation.
        watched = cache.watched()
        for i, (key, text) in enumerate(sorted(watched.items())):
            found = described(text)
            assert found is not None
            kind, query = found
            path = "/api/kpi" if kind == "kpi" else "/api/kpi/history"
            params = {name: value for name, value in query.describe().items() if value is not None}
            body = (one if i % 2 else two).test_client().get(path, query_string=params, headers=auth).get_json()
            assert shown(body) == recomputed(conn, text, body), (key, text)
        # The probe (one per aged_days of a window holding the present), the arithmetic, and one
        # window checked in full: whatever the number of windows, polls included.
        assert sum(calls[0] for calls in statements) + arithmetic[0] - before <= 4
    assert metrics.REFRESH_ADVANCED._value.get() > advanced_before
    assert metrics.REFRESH_MISMATCHES._value.get() == mismatches_before


def test_an_advanced_value_that_differs_from_its_computation_is_counted_and_repaired(
    make_app: Callable[..., Flask], redis_server: RedisServer, conn: psycopg.Connection, auth: dict[str, str]
) -> None:
    one = make_app(redis_url=redis_server.url, cache_ttl=300)
    state = one.extensions["kpi"]
    client = one.test_client()
    query = f"?from={TODAY.isoformat()}&tz=UTC"
    assert client.get(f"/api/kpi{query}", headers=auth).status_code == 200
    wait_until(lambda: state.service.changes.live)
    (key,) = state.cache.watched()
    # A defect's drift: the stored sums count one listing too many.
    stored = json.loads(state.cache.client.get(state.cache.keys.value(key)))
    stored["state"]["sums"][0][0] = str(int(stored["state"]["sums"][0][0]) + 1)
    stored["state"]["verified"] = 0
    state.cache.client.set(state.cache.keys.value(key), json.dumps(stored))
    mismatches = metrics.REFRESH_MISMATCHES._value.get()

    conn.execute("INSERT INTO listings (price, status, listed_at) VALUES (100, 'active', %s)", [datetime.now(UTC)])
    assert state.applier.apply_once() == 1
    wait_until(lambda: metrics.REFRESH_MISMATCHES._value.get() == mismatches + 1)
    body = client.get(f"/api/kpi{query}", headers=auth).get_json()
    assert body["metrics"]["total_listings"] == 1  # repaired by the computation
