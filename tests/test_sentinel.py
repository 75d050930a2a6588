"""Redis behind Sentinel: the service follows the primary the sentinels name.

- A failover under load (real processes: a primary, its replica, three sentinels, two gunicorn
  instances of the service): no request fails, the streams and an internal client keep getting
  updates on the new primary, and the figures are printed (FAULT-REPORT, docs/reliability.md).
- Two computations of one window that overlap, as a lock lost in a failover allows: the value
  computed last is the one stored and announced, whichever finishes last.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import redis
from redis.sentinel import SentinelConnectionPool

from kpi_service.app import create_app
from kpi_service.client import KpiClient
from kpi_service.db.identity import scope_of
from kpi_service.db.sql import IDENTITY
from kpi_service.serving.connection import connect
from kpi_service.serving.keys import cache_key
from kpi_service.serving.query import KpiQuery
from tests.helpers import SECRET, RedisServer, insert_listing, make_settings, token, wait_until
from tests.servers import Load, RedisSentinels, fetch, gunicorn, summary
from tests.sse import Sse

CACHED = ["/api/kpi", "/api/kpi?from=2026-03-01&to=2026-03-31", "/api/kpi?tz=Europe/Berlin"]


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[RedisSentinels]:
    group = RedisSentinels(tmp_path)
    try:
        group.start()
        yield group
    finally:
        group.stop()


def instance_env(database_url: str, group: RedisSentinels) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "REDIS_SENTINELS": group.addresses,
        "REDIS_SENTINEL_SERVICE": group.service,
        "JWT_SECRET_KEY": SECRET,
        "GUNICORN_WORKERS": "2",
        # An hour: a stream's update after a write can only come from the change announcements.
        "KPI_CACHE_TTL": "3600",
        "KPI_STREAM_HEARTBEAT": "1",
    }


def load_paths(offset: int):
    def paths(n: int) -> tuple[str, str]:
        if n % 2 == 0:
            return "cached", CACHED[n // 2 % len(CACHED)]
        # A window nobody asked for before: computed by PostgreSQL, then stored in Redis.
        return "new", f"/api/kpi?from=2026-02-01&to=2026-02-28&aged_days={1 + (offset + n) % 3650}"

    return paths


def total_listings(body: dict) -> int:
    return body["metrics"]["total_listings"]


@pytest.mark.fault
@pytest.mark.slow
def arrivals(streams: list, listings: int) -> list[float]:
    """When each stream got the numbers of `listings` listings (monotonic), read side by side."""

    def arrival(stream) -> float:
        stream.until(lambda body: total_listings(body) == listings, 30)
        return time.monotonic()

    with ThreadPoolExecutor(len(streams)) as readers:
        return list(readers.map(arrival, streams))


def test_a_failover_under_load_fails_no_request_and_streams_go_on(
    database_url: str, conn: psycopg.Connection, sentinels: RedisSentinels
) -> None:
    insert_listing(conn, datetime.now(UTC) - timedelta(hours=1))
    bearer = token()
    headers = {"Authorization": f"Bearer {bearer}"}
    yesterday = (date.today() - timedelta(days=1)).isoformat()
    env = instance_env(database_url, sentinels)
    updates: list[tuple[float, dict]] = []  # what the internal client heard: (when, body)
    client = KpiClient(
        None,
        "http://unused",
        bearer,
        timeout=1.0,
        sentinels=sentinels.addresses,
        sentinel_service=sentinels.service,
        scope=scope_of(*conn.execute(IDENTITY).fetchone()),  # no API to ask it of
    )
    new_primary = redis.Redis(port=sentinels.replica.port)
    with (
        contextlib.ExitStack() as stack,
        gunicorn(env) as one,
        gunicorn(env) as two,
        Sse(f"{one}/api/kpi/stream?from={yesterday}&tz=UTC", headers) as first,
        Sse(f"{two}/api/kpi/stream?from={yesterday}&tz=UTC", headers) as second,
    ):
        streams = [first, second]
        assert [total_listings(s.next_event().json()) for s in streams] == [1, 1]
        stack.callback(client.subscribe(lambda body: updates.append((time.monotonic(), body)), date_from=yesterday))
        # 8 client threads, 4 per instance, 80 requests/s in all.
        with (
            Load(one, bearer, rate=40, paths=load_paths(0), threads=4) as load_one,
            Load(two, bearer, rate=40, paths=load_paths(1825), threads=4) as load_two,
        ):
            wait_until(lambda: len(load_one.snapshot()) + len(load_two.snapshot()) >= 200)
            killed_wall, killed_at = time.time(), time.monotonic()
            sentinels.primary.stop()  # SIGKILL
            wait_until(lambda: sentinels.primary_port() == sentinels.replica.port, seconds=30)
            promoted_at = time.monotonic()

            # A write right after the failover: each stream gets the new numbers.
            insert_listing(conn, datetime.now(UTC))
            written_at = time.monotonic()
            arrived = arrivals(streams, 2)

            def service_writes_to_new_primary() -> bool:
                # A value both computed and stored after the kill (the load's new windows).
                # Not the window's computation lock (kpi:v2:<scope>:lock:kpi:…), whose value is a token.
                values = [k for k in new_primary.keys("kpi:v2:*:kpi:2026-02-01:*") if b":lock:" not in k]
                for raw in new_primary.mget(values) if values else []:
                    if raw and json.loads(raw)["body"]["meta"]["computed_at"] > _iso(killed_wall):
                        return True
                return False

            wait_until(service_writes_to_new_primary, seconds=30)
            back_at = time.monotonic()
            # Settled: a write now reaches the streams by the subscription on the new primary
            # alone (the TTL is an hour), and the internal client too.
            insert_listing(conn, datetime.now(UTC))
            settled_write_at = time.monotonic()
            settled = arrivals(streams, 3)
            wait_until(lambda: any(total_listings(body) == 3 for _, body in updates), seconds=30)
            client_heard_at = min(at for at, body in updates if total_listings(body) == 3)
            settle = time.monotonic() + 2  # a little more load on the new primary
            wait_until(lambda: time.monotonic() > settle)
        ready = [fetch(f"{base}/readyz", None) for base in (one, two)]
    samples = load_one.snapshot() + load_two.snapshot()
    during = [s for s in samples if killed_at <= s.sent < back_at]
    latencies = sorted(s.latency for s in during)
    figures = summary(
        "redis primary killed, sentinel failover",
        samples,
        promoted_after_s=round(promoted_at - killed_at, 2),
        service_on_new_primary_after_s=round(back_at - killed_at, 2),
        requests_during_failover=len(during),
        p50_latency_during_ms=round(1000 * statistics.median(latencies), 1),
        p99_latency_during_ms=round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1),
        max_latency_during_ms=round(1000 * latencies[-1], 1),
        stream_update_after_failover_s=[round(at - written_at, 2) for at in arrived],
        stream_update_settled_s=[round(at - settled_write_at, 2) for at in settled],
        client_update_settled_s=round(client_heard_at - settled_write_at, 2),
    )
    # Not one request failed: every answer a 200 (or 304), through the kill and the failover.
    assert figures["non_2xx"] == {} and {s.status for s in samples} <= {200, 304}
    assert len(during) > 100
    assert [(status, body["checks"]["redis"]) for status, body in ready] == [(200, "ok")] * 2
    assert figures["promoted_after_s"] < 15 and figures["service_on_new_primary_after_s"] < 20


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_the_settings_and_the_client_build_sentinel_managed_clients() -> None:
    settings = make_settings(
        "postgresql://localhost/kpi",
        redis_url="redis://:secret@ignored:1/2",
        redis_sentinels=(("127.0.0.1", 26379), ("::1", 26380)),
        redis_sentinel_service="kpi",
        redis_sentinel_password="sentinel-secret",
    )
    client = KpiClient(None, "http://kpi", "token", sentinels="127.0.0.1:26379,[::1]:26380", sentinel_service="kpi")
    for pool in (connect(settings).connection_pool, client.redis.connection_pool):
        assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "kpi"
        sentinels = pool.sentinel_manager.sentinels
        assert [
            (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
            for s in sentinels
        ] == [
            ("127.0.0.1", 26379),
            ("::1", 26380),
        ]
    # REDIS_URL gives the database and the password, not the address; the sentinels their own.
    kwargs = connect(settings).connection_pool.connection_kwargs
    assert (kwargs["db"], kwargs["password"]) == (2, "secret") and "ignored" not in kwargs.values()
    sentinel = connect(settings).connection_pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs
    assert sentinel["password"] == "sentinel-secret"
    with pytest.raises(ValueError, match="host:port"):
        KpiClient(None, "http://kpi", "token", sentinels="nowhere", sentinel_service="kpi")


def test_overlapping_computations_keep_the_value_computed_last(
    database_url: str, conn: psycopg.Connection, redis_server: RedisServer
) -> None:
    """The lock of a window held by one process vanishes (the replica promoted in a failover never
    had it), so a second process computes the window too, and the first finishes last."""
    first, second = (create_app(make_settings(database_url, redis_url=redis_server.url)) for _ in range(2))
    plain = redis.Redis.from_url(redis_server.url)
    for app in (first, second):
        app.extensions["kpi"].db.mode()  # the database reached: its scope known
    keys = first.extensions["kpi"].cache.keys
    announcements = plain.pubsub()
    announcements.subscribe(keys.announce)
    query: KpiQuery = first.extensions["kpi"].kpi_schema.load({})
    key = cache_key("kpi", query)
    lock_key, stored_key = keys.lock(key), keys.value(key)
    started, go_on = threading.Event(), threading.Event()
    db = first.extensions["kpi"].db
    kpi_rows = db.kpi_rows

    def slow(*args: object, **kwargs: object):
        started.set()
        assert go_on.wait(10)
        return kpi_rows(*args, **kwargs)

    db.kpi_rows = slow
    try:
        with ThreadPoolExecutor(1) as pool:
            earlier = pool.submit(first.extensions["kpi"].service.current, query)
            assert started.wait(10)
            began = time.time()
            assert plain.exists(lock_key)
            plain.delete(lock_key)  # lost with the old primary
            wait_until(lambda: time.time() > began + 0.002)  # the second starts a clear millisecond later
            later = second.extensions["kpi"].service.current(query)
            plain.set(lock_key, "a third process", px=10_000)  # the window's next computation
            go_on.set()
            earlier = earlier.result(10)
        computed = (earlier.body["meta"]["computed_at"], later.body["meta"]["computed_at"])
        # Two computations ran (the lock could not prevent it) ...
        assert earlier.outcome == later.outcome == "miss" and computed[0] < computed[1]
        # ... and the one that finished last was neither stored nor announced over the newer one.
        assert json.loads(plain.get(stored_key))["body"]["meta"]["computed_at"] == computed[1]
        plain.publish(keys.announce, json.dumps({"computed_at": "the end"}))
        heard = []
        while not heard or heard[-1] != "the end":
            message = announcements.get_message(timeout=5)
            assert message is not None, heard
            if message["type"] == "message":
                heard.append(json.loads(message["data"])["computed_at"])
        assert heard == [computed[1], "the end"]
        # Its release left the lock of the next owner alone, and its process serves the newer value.
        assert plain.get(lock_key) == b"a third process"
        assert first.extensions["kpi"].service.current(query).body["meta"]["computed_at"] == computed[1]
    finally:
        announcements.close()
        for app in (first, second):
            app.extensions["kpi"].close()
