"""Two service instances (separate gunicorn servers, two workers each) sharing one real Redis."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import psycopg
import pytest
import redis

from tests.helpers import SECRET, RedisServer, token, two_listings, wait_until
from tests.servers import fetch, gunicorn

COUNTER = "kpi-test:statements"


@pytest.fixture
def instances(database_url: str, redis_server: RedisServer, conn: psycopg.Connection) -> Iterator[list[str]]:
    """Two gunicorn servers of two workers each, counting their KPI statements in Redis."""
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_server.url,
        "JWT_SECRET_KEY": SECRET,
        "KPI_CACHE_TTL": "2",
        "KPI_TEST_COUNTER_KEY": COUNTER,
        "GUNICORN_WORKERS": "2",
        "GUNICORN_THREADS": "32",
    }
    with ExitStack() as stack:
        yield [stack.enter_context(gunicorn(env, app="tests.instance_app:app")) for _ in range(2)]


def storm(urls: list[str], bearer: str) -> list[int]:
    """All requests released at the same instant, spread over the instances."""
    barrier = threading.Barrier(len(urls))

    def one(url: str) -> int:
        barrier.wait()
        return fetch(url, bearer)[0]

    with ThreadPoolExecutor(len(urls)) as pool:
        return list(pool.map(one, urls))


def test_a_missing_key_is_computed_once_across_instances(
    instances: list[str], redis_server: RedisServer, conn: psycopg.Connection
) -> None:
    two_listings(conn)
    counter = redis.Redis.from_url(redis_server.url)
    bearer = token()
    urls = [f"{instances[i % 2]}/api/kpi?from=2026-03-01&to=2026-03-31" for i in range(120)]
    assert storm(urls, bearer) == [200] * 120
    assert int(counter.get(COUNTER)) == 1


def test_an_expiring_key_is_refreshed_once_and_nobody_waits(
    instances: list[str], redis_server: RedisServer, conn: psycopg.Connection
) -> None:
    two_listings(conn)
    counter = redis.Redis.from_url(redis_server.url)
    bearer = token()
    url = f"{instances[0]}/api/kpi?tz=Europe/Berlin"
    status, _ = fetch(url, bearer)
    assert status == 200 and int(counter.get(COUNTER)) == 1
    (key,) = counter.keys("kpi:v2:*:kpi:-:-:Europe/Berlin:60")
    stored = json.loads(counter.get(key))
    # The moment the TTL ends (2 s after the computation): nothing to await but the clock.
    time.sleep(max(0.0, stored["fresh_until"] - time.time()) + 0.05)
    urls = [f"{instances[i % 2]}/api/kpi?tz=Europe/Berlin" for i in range(120)]
    assert storm(urls, bearer) == [200] * 120
    # Refreshed by the tick the storm asked for; a poll goes on asking, as pollers do, should that
    # tick have failed (a tick is asked for at most once per TTL, on a poll).
    wait_until(lambda: fetch(url, bearer)[0] == 200 and json.loads(counter.get(key))["fresh_until"] > time.time())
    # The first computation and exactly one refresh: a tick of the watched windows across instances
    # (serving/advancer.py), its probe and its check.
    assert int(counter.get(COUNTER)) == 3
