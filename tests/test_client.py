"""kpi_service.client: another service reads what the KPI service computed through Redis, with no
database of its own, and asks the HTTP API only on a miss."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from kpi_service.app import create_app
from kpi_service.client import KpiClient
from tests.helpers import APPLYING, RedisServer, insert_listing, make_settings, token, two_listings, wait_until
from tests.sse import serving

ROOT = Path(__file__).parents[1]
READER = """
import json, sys
from kpi_service.client import KpiClient
# Nothing listens at the API's address: the value can only come from Redis.
client = KpiClient(sys.argv[1], "http://127.0.0.1:1", "no-token-needed", scope=sys.argv[2])
print(json.dumps(client.get(date_from="2026-03-01", date_to="2026-03-31", tz="utc")))
"""


def get(url: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token()}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_another_process_reads_the_value_the_service_computed(
    database_url: str, conn: psycopg.Connection, redis_server: RedisServer
) -> None:
    two_listings(conn)
    app = create_app(make_settings(database_url, redis_url=redis_server.url))
    try:
        with serving(app) as base:
            computed = get(f"{base}/api/kpi?from=2026-03-01&to=2026-03-31&tz=UTC")
        environment = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "KPI_TEST_DATABASE_URL")}
        done = subprocess.run(
            [sys.executable, "-c", READER, redis_server.url, app.extensions["kpi"].db.scope()],
            capture_output=True,
            text=True,
            timeout=60,
            env={**environment, "PYTHONPATH": str(ROOT)},
        )
        assert done.returncode == 0, done.stderr
        read = json.loads(done.stdout)
        assert read["metrics"] == computed["metrics"] and read["metrics"]["total_listings"] == 2
        assert read["meta"]["computed_at"] == computed["meta"]["computed_at"] and read["meta"]["cached"] is True
    finally:
        app.extensions["kpi"].close()


def test_a_miss_asks_the_api_and_a_subscriber_hears_of_new_values(
    database_url: str, conn: psycopg.Connection, redis_server: RedisServer
) -> None:
    two_listings(conn)
    app = create_app(make_settings(database_url, redis_url=redis_server.url))
    heard: list[dict] = []
    arrived = threading.Event()
    try:
        with serving(app) as base:
            client = KpiClient(redis_server.url, base, token())

            def on_update(body: dict) -> None:
                heard.append(body)
                arrived.set()

            stop = client.subscribe(on_update, date_from="2026-03-02")
            try:
                body = client.get(date_from="2026-03-02")  # nothing stored: the API computes it
                assert body["metrics"]["total_listings"] == 1 and body["meta"]["cached"] is False
                assert arrived.wait(10)
                assert heard[0]["metrics"] == body["metrics"] and heard[0]["meta"]["cached"] is True
                again = client.get(date_from="2026-03-02")  # now from Redis
                assert again["meta"]["computed_at"] == body["meta"]["computed_at"] and again["meta"]["cached"] is True
            finally:
                stop()
    finally:
        app.extensions["kpi"].close()


def test_a_comparison_from_the_api_then_from_redis(
    database_url: str, conn: psycopg.Connection, redis_server: RedisServer
) -> None:
    two_listings(conn)
    app = create_app(make_settings(database_url, redis_url=redis_server.url))
    try:
        with serving(app) as base:
            client = KpiClient(redis_server.url, base, token())
            window = {"date_from": "2026-03-02", "date_to": "2026-03-02", "compare": "previous_period"}
            body = client.get(**window)  # nothing stored: the API computes it
            assert body["comparison"]["metrics"]["total_listings"] == 1 and body["meta"]["cached"] is False
            again = client.get(**window)  # its own key in Redis, not the plain window's
            assert again["comparison"] == body["comparison"] and again["meta"]["cached"] is True
            plain = client.get(date_from="2026-03-02", date_to="2026-03-02")
            assert "comparison" not in plain
    finally:
        app.extensions["kpi"].close()


def test_a_comparison_of_an_open_window_is_refused_before_any_call() -> None:
    client = KpiClient("redis://127.0.0.1:1/0", "http://127.0.0.1:1", "t")
    with pytest.raises(ValueError, match="open window"):
        client.get(date_from="2026-03-01", compare="previous_period")
    with pytest.raises(ValueError, match="compare must be"):
        client.get(date_from="2026-03-01", date_to="2026-03-02", compare="last_week")


def test_an_unknown_zone_is_refused_before_any_call() -> None:
    client = KpiClient("redis://127.0.0.1:1/0", "http://127.0.0.1:1", "t")
    with pytest.raises(ValueError, match="unknown time zone"):
        client.get(tz="Mars/Olympus")


def test_the_client_imports_neither_flask_nor_psycopg() -> None:
    """It is meant for processes without the service: nothing of the service's stack is loaded."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, kpi_service.client; print(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "kpi_service.client" in loaded
    assert not {"flask", "psycopg", "psycopg_pool", "apispec", "fakeredis"} & set(loaded)


def test_a_batch_that_changes_the_window_is_seen_by_get_and_subscribe_within_a_second(
    database_url: str, conn: psycopg.Connection, redis_server: RedisServer
) -> None:
    """Even for a window the service no longer refreshes (requested longer ago than its TTL):
    the client hears the applier's batch and asks the API, so the stored value, still fresh
    by its TTL, is not what it answers."""
    app = create_app(make_settings(database_url, redis_url=redis_server.url, apply_interval=APPLYING, cache_ttl=300))
    heard: list[dict] = []
    try:
        with serving(app) as base:
            client = KpiClient(redis_server.url, base, token())
            stop = client.subscribe(heard.append, date_from="2026-03-02", date_to="2026-03-31")
            try:
                assert client.get(date_from="2026-03-02", date_to="2026-03-31")["metrics"]["total_listings"] == 0
                wait_until(lambda: client._changes.live)
                app.extensions["kpi"].service.requested._windows.clear()  # as if polled long ago

                insert_listing(conn, datetime(2026, 3, 5, tzinfo=UTC))
                wait_until(lambda: bool(heard) and heard[-1]["metrics"]["total_listings"] == 1, seconds=5)
                body = client.get(date_from="2026-03-02", date_to="2026-03-31")
                assert body["metrics"]["total_listings"] == 1
            finally:
                stop()
    finally:
        app.extensions["kpi"].close()
