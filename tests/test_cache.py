"""The cache under pollers, in one process with fakeredis: hits, 304s, stale-while-revalidate,
single-flight, lock expiry and a Redis outage."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import redis
from flask import Flask

from kpi_service.app import create_app
from kpi_service.ops import metrics
from kpi_service.serving.keys import Keys
from tests.dataset import catch_up
from tests.helpers import make_settings, two_listings, wait_until


def count_queries(app: Flask, monkeypatch: pytest.MonkeyPatch, delay: float = 0.0) -> list[int]:
    """Calls of the KPI statement, each delayed by `delay` so that concurrent requests overlap."""
    db = app.extensions["kpi"].db
    original = db.kpi_rows
    calls: list[int] = []

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        time.sleep(delay)
        return original(*args, **kwargs)

    monkeypatch.setattr(db, "kpi_rows", counted)
    return calls


def test_etag_and_304(client: object, auth: dict[str, str], conn: psycopg.Connection) -> None:
    two_listings(conn)
    computed = client.get("/api/kpi", headers=auth)
    first = client.get("/api/kpi", headers=auth)  # the hit every later poll repeats
    assert (computed.get_json()["meta"]["cached"], first.get_json()["meta"]["cached"]) == (False, True)
    etag = first.headers["ETag"]
    # Weak: the two bodies differ only in meta.cached, and are the same value.
    assert etag.startswith('W/"') and computed.headers["ETag"] == etag
    cache_control = first.headers["Cache-Control"]
    assert cache_control.startswith("private, max-age=")
    assert 0 < int(cache_control.rsplit("=", 1)[1]) <= 30
    again = client.get("/api/kpi", headers={**auth, "If-None-Match": etag})
    assert again.status_code == 304 and again.data == b""
    assert again.headers["ETag"] == etag
    other = client.get("/api/kpi", headers={**auth, "If-None-Match": '"something-else"'})
    assert other.status_code == 200 and other.get_json()["metrics"]["total_listings"] == 2


def test_expired_entry_is_served_at_once_and_refreshed_in_background(
    make_app: Callable[..., Flask], auth: dict[str, str], conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()
    state = app.extensions["kpi"]
    client = app.test_client()
    two_listings(conn)
    client.get("/api/kpi", headers=auth)
    conn.execute("DELETE FROM listings WHERE id = 1")
    catch_up(conn)
    (key,) = state.cache.client.keys("kpi:v2:*:kpi:*")
    # Age the entry past its freshness (but within the grace of one TTL), here and in Redis.
    stored = json.loads(state.cache.client.get(key))
    stored["fresh_until"] = time.time() - 1
    state.cache.client.set(key, json.dumps(stored))
    state.service.recent.clear()
    calls = count_queries(app, monkeypatch)

    response = client.get("/api/kpi", headers=auth)
    body = response.get_json()
    assert body["metrics"]["total_listings"] == 2  # the previous value, without waiting
    assert body["meta"]["cached"] is True and body["meta"]["stale"] is False
    assert response.headers["Cache-Control"] == "private, max-age=0"
    assert "cache;desc=refresh" in response.headers["Server-Timing"]
    state.service.close()  # waits for the background refresh
    # A tick of the watched windows (serving/advancer.py): its probe, and this window computed,
    # since the batch that changed it was applied with no announcement to add.
    assert calls == [1, 1]
    assert not state.service.refresher._running and not state.cache.locked(key.decode())
    assert client.get("/api/kpi", headers=auth).get_json()["metrics"]["total_listings"] == 1


def test_concurrent_misses_share_one_query(
    app: Flask, auth: dict[str, str], conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    two_listings(conn)
    calls = count_queries(app, monkeypatch, delay=0.2)
    barrier = threading.Barrier(30)

    def poll(_: int) -> int:
        client = app.test_client()
        barrier.wait()
        return client.get("/api/kpi?from=2026-03-01", headers=auth).status_code

    with ThreadPoolExecutor(30) as pool:
        statuses = list(pool.map(poll, range(30)))
    assert statuses == [200] * 30
    assert calls == [1]


def test_a_dead_owners_lock_expires_and_a_waiter_computes(
    database_url: str, auth: dict[str, str], conn: psycopg.Connection
) -> None:
    # A short statement timeout makes the lock short-lived, as it would be for a crashed owner.
    app = create_app(make_settings(database_url, statement_timeout_ms=200, db_pool_timeout=0.2, db_connect_timeout=1))
    try:
        state = app.extensions["kpi"]
        two_listings(conn)
        # Another process took the lock for this window and died without releasing it.
        state.db.mode()  # the database reached: its scope known
        key = "kpi:-:-:UTC:60"
        state.cache.client.set(state.cache.keys.lock(key), "someone-else", px=300)
        waits = metrics.SINGLEFLIGHT_WAITS._value.get()
        response = app.test_client().get("/api/kpi", headers=auth)
        assert response.status_code == 200
        assert response.get_json()["meta"]["cached"] is False  # computed here after the lock expired
        assert metrics.SINGLEFLIGHT_WAITS._value.get() == waits + 1
    finally:
        state.close()


def test_a_waiter_takes_the_owners_result(app: Flask, auth: dict[str, str], conn: psycopg.Connection) -> None:
    state = app.extensions["kpi"]
    state.db.mode()  # the database reached: its scope known
    key = "kpi:-:-:UTC:60"
    lock = state.cache.client.lock(state.cache.keys.lock(key), timeout=5, thread_local=False)
    assert lock.acquire(blocking=False)
    body = {"metrics": {"total_listings": 7}, "meta": {"window": {}, "computed_at": "x"}}
    # The owner, in another process, finishes while this request waits.
    finisher = threading.Timer(0.1, lambda: (state.cache.put(key, "kpi", body), lock.release()))
    finisher.start()
    response = app.test_client().get("/api/kpi", headers=auth)
    finisher.join()
    assert response.get_json()["metrics"] == {"total_listings": 7}
    assert response.get_json()["meta"]["cached"] is True


def test_fresh_results_are_announced(app: Flask, auth: dict[str, str]) -> None:
    state = app.extensions["kpi"]
    state.db.mode()  # the database reached: its scope known
    pubsub = state.cache.client.pubsub()
    pubsub.subscribe(state.cache.keys.announce)
    assert pubsub.get_message(timeout=1)["type"] == "subscribe"
    body = app.test_client().get("/api/kpi?from=2026-01-01&tz=Asia/Kolkata", headers=auth).get_json()
    message = pubsub.get_message(timeout=1)
    announced = json.loads(message["data"])
    assert announced == {
        "key": state.cache.keys.value("kpi:2026-01-01:-:Asia/Kolkata:60"),
        "kind": "kpi",
        "window": body["meta"]["window"],
        "computed_at": body["meta"]["computed_at"],
        "fresh_until": announced["fresh_until"],
    }
    pubsub.close()


@pytest.fixture
def app_without_redis(database_url: str, conn: psycopg.Connection) -> Iterator[Flask]:
    # Nothing listens on port 1: every Redis call fails at once, like a stopped server.
    app = create_app(make_settings(database_url, redis_url="redis://127.0.0.1:1/0"))
    yield app
    app.extensions["kpi"].close()


def test_redis_down_is_answered_from_the_database_and_logged_once(
    app_without_redis: Flask, auth: dict[str, str], conn: psycopg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    two_listings(conn)
    client = app_without_redis.test_client()
    with caplog.at_level(logging.WARNING, logger="kpi_service.serving.breaker"):
        bodies = [client.get(f"/api/kpi?aged_days={n}", headers=auth).get_json() for n in range(1, 21)]
    assert all(b["metrics"]["total_listings"] == 2 for b in bodies)
    assert [r.message for r in caplog.records].count(
        "redis unavailable; serving from the database until it is back"
    ) == 1
    assert not app_without_redis.extensions["kpi"].cache.available  # the breaker skips Redis


def test_the_breaker_closes_when_redis_is_back(
    app_without_redis: Flask, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = app_without_redis.extensions["kpi"].cache
    client = app_without_redis.test_client()
    assert client.get("/api/kpi", headers=auth).status_code == 200
    assert not cache.available
    import fakeredis

    cache.client = fakeredis.FakeRedis()  # Redis is back
    cache.breaker.retry_now()  # as the breaker does by itself after retry_after
    assert client.get("/api/kpi?aged_days=5", headers=auth).status_code == 200
    assert cache.available and cache.client.keys("kpi:v2:*:kpi:*")


def test_redis_errors_never_reach_the_client(app: Flask, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise redis.TimeoutError("slow")

    monkeypatch.setattr(app.extensions["kpi"].cache.client, "get", broken)
    assert app.test_client().get("/api/kpi", headers=auth).status_code == 200


def test_a_batch_announced_while_redis_is_down_is_announced_when_it_is_back() -> None:
    import fakeredis

    from kpi_service.serving.cache import Cache

    server = fakeredis.FakeServer()
    cache = Cache(
        fakeredis.FakeRedis(server=server), ttl=60, stale_ttl=60, lock_seconds=1, retry_after=0.05, scope=lambda: "db"
    )
    changes = fakeredis.FakeRedis(server=server).pubsub()
    changes.subscribe(Keys("db").changed)
    assert changes.get_message(timeout=1)["type"] == "subscribe"
    server.connected = False
    cache.announce_change({"from": "2026-01-01T00:00:00+00:00", "to": "2026-01-01T00:15:00+00:00"})
    assert not cache.available
    server.connected = True
    # Retried by the cache itself, widened to every window: which ones the lost batch touched
    # no longer matters, that every stream hears of it does.
    message = changes.get_message(timeout=5)
    assert message is not None and json.loads(message["data"]) == {
        "from": "2026-01-01T00:00:00+00:00",
        "to": "2026-01-01T00:15:00+00:00",
        "all": True,
        "seq": 1,
    }
    assert changes.get_message(timeout=0.2) is None  # once


def test_a_value_after_a_later_change_batch_wins_whatever_the_clocks() -> None:
    import fakeredis

    from kpi_service.serving.cache import Cache

    cache = Cache(fakeredis.FakeRedis(), ttl=60, stale_ttl=60, lock_seconds=1, scope=lambda: "db")

    def body(computed_at: str) -> dict:
        return {"metrics": {}, "meta": {"window": {}, "computed_at": computed_at}}

    # An instance whose clock runs ahead computed before batch 6 was applied ...
    assert cache.put("k", "kpi", body("2026-03-01T12:00:09+00:00"), seq=5) is not None
    # ... another, after it: newer, though its clock says earlier.
    assert cache.put("k", "kpi", body("2026-03-01T12:00:01+00:00"), seq=6) is not None
    assert cache.put("k", "kpi", body("2026-03-01T12:00:30+00:00"), seq=5) is None
    # Within one batch, the later computation.
    assert cache.put("k", "kpi", body("2026-03-01T12:00:00+00:00"), seq=6) is None
    assert cache.put("k", "kpi", body("2026-03-01T12:00:02+00:00"), seq=6) is not None
    assert cache.get("k").body["meta"]["computed_at"] == "2026-03-01T12:00:02+00:00"


def test_one_applier_call_per_interval_across_instances() -> None:
    import fakeredis

    from kpi_service.serving.cache import Cache

    server = fakeredis.FakeServer()
    one, two = (
        Cache(fakeredis.FakeRedis(server=server), ttl=60, stale_ttl=60, lock_seconds=1, scope=lambda: "db")
        for _ in range(2)
    )
    assert one.applier_turn(0.2) is True
    assert two.applier_turn(0.2) is False and one.applier_turn(0.2) is False
    wait_until(lambda: two.applier_turn(0.2), seconds=2)  # the next interval's call
    server.connected = False
    assert one.applier_turn(0.2) is True  # without Redis, every tick calls (the try-lock still serializes)


def test_the_applier_asks_for_its_turn_except_while_a_backlog_remains() -> None:
    from kpi_service.db.applier import Applier

    calls: list[str] = []
    left = [2]  # full batches waiting, then a last small one

    class Db:
        def mode(self, **_: object) -> str:
            return "summaries"

        def apply_changes(self, batch: int, **_: object) -> int:
            calls.append("apply")
            left[0] -= 1
            return batch if left[0] >= 0 else 3 if left[0] == -1 else 0

    def turn(interval: float) -> bool:
        calls.append("turn")
        return calls.count("turn") != 2  # the second tick finds another instance's turn

    applier = Applier(Db(), 0.01, turn=turn)  # type: ignore[arg-type]
    applier.start()
    wait_until(lambda: calls.count("turn") >= 3)
    applier.stop()
    assert calls[:7] == ["turn", "apply", "apply", "apply", "turn", "turn", "apply"]
