"""Computed KPI responses in Redis, shared by every worker and instance.

Layout, version 1 (documented in the README for other services):
  kpi:v1:<kind>:<from|->:<to|->:<tz>:<aged_days>[:<interval>]
      JSON {"fresh_until": <unix seconds>, "seq": <change batch>, "body": <the 200 response, meta.cached false>}.
      Kept for KPI_STALE_TTL; fresh until `fresh_until` (KPI_CACHE_TTL after the computation),
      after which it is the last good answer.
  kpi:v1:lock:<same suffix>
      The single-flight lock of that key while one process computes it.
  kpi:v1:announce (pub/sub channel)
      JSON {"key", "kind", "window", "computed_at", "fresh_until"} after each fresh computation.
  kpi:v1:change_seq
      The number of the summaries' latest applied batch (INCR by the applier after its commit).
      A value stores the number it read before its SQL ran ("seq"): it includes every batch up
      to that one.
  kpi:v1:change_position
      With a read replica (DATABASE_READ_URL): the primary's WAL position (bytes) after that
      batch's commit, set before the INCR; a read on the replica waits until it has replayed it.
  kpi:v1:changed (pub/sub channel)
      JSON {"seq", "from", "to", "stock_from"} (instants, ISO 8601; or {"seq", "all": true})
      after each applied batch: what it changed, for live updates (hub.py).
  kpi:v1:ticket:<sha256 of a stream ticket>
      JSON {"sub", "exp"} of the token it was issued for; SET EX 30, consumed by GETDEL (tickets.py).
A value and its announcement are written in one MULTI/EXEC, so a reader never sees one without
the other.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import fakeredis
import redis
from redis.lock import Lock

from kpi_service import metrics
from kpi_service.config import Settings
from kpi_service.schemas import KpiQuery

log = logging.getLogger(__name__)

KEY_PREFIX = "kpi:v1"
ANNOUNCE_CHANNEL = f"{KEY_PREFIX}:announce"
CHANGES_CHANNEL = f"{KEY_PREFIX}:changed"
CHANGE_SEQ = f"{KEY_PREFIX}:change_seq"
CHANGE_POSITION = f"{KEY_PREFIX}:change_position"
# try_lock's answer when Redis cannot be asked: go ahead, guarded only in-process.
NO_REDIS = object()


@functools.lru_cache(maxsize=4096)
def cache_key(kind: str, query: KpiQuery) -> str:
    parts = [
        KEY_PREFIX,
        kind,
        query.date_from.isoformat() if query.date_from else "-",
        query.date_to.isoformat() if query.date_to else "-",
        query.tz,
        str(query.aged_days),
    ]
    if query.interval:
        parts.append(query.interval)
    return ":".join(parts)


def close_quietly(pubsub: Any) -> None:
    """Close a pub/sub connection that may be gone already (or None)."""
    if pubsub is not None:
        with contextlib.suppress(redis.RedisError, OSError):
            pubsub.close()


def lock_key(key: str) -> str:
    return key.replace(f"{KEY_PREFIX}:", f"{KEY_PREFIX}:lock:", 1)


@dataclass(frozen=True)
class Entry:
    body: dict[str, Any]
    fresh_until: float
    seq: int = 0  # the change batch it includes (kpi:v1:change_seq when its SQL ran)

    @property
    def fresh(self) -> bool:
        return time.time() < self.fresh_until


def connect(settings: Settings) -> redis.Redis:
    """The configured Redis, or an in-process stand-in when REDIS_URL is not set."""
    if not settings.redis_url:
        return fakeredis.FakeRedis()
    timeout = settings.redis_timeout_ms / 1000
    return redis.Redis.from_url(settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)


class Breaker:
    """Skips Redis for `retry_after` seconds after a failure, then lets one call try it again.

    Not pybreaker: its CircuitBreaker.call holds one lock across the wrapped call, which made
    every Redis round trip of a process wait for the one before it (eight 100 ms GETs took
    0.8 s). Here the lock guards only the state. One line is logged when Redis goes away and
    one when it is back, not one per request.
    """

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        self._lock = threading.Lock()
        self._down = False
        self._retry_at = 0.0

    @property
    def closed(self) -> bool:
        return not self._down

    def allow(self) -> bool:
        if not self._down:
            return True
        with self._lock:
            if self._down and time.monotonic() >= self._retry_at:
                self._retry_at = time.monotonic() + self.retry_after  # this call is the one trial
                return True
        return False

    def failed(self) -> None:
        with self._lock:
            if not self._down:
                log.warning("redis unavailable; serving from the database until it is back")
            self._down = True
            self._retry_at = time.monotonic() + self.retry_after

    def succeeded(self) -> None:
        if self._down:
            with self._lock:
                if self._down:
                    log.warning("redis is back")
                self._down = False

    def retry_now(self) -> None:
        """Let the next call try Redis at once (as it would after `retry_after`)."""
        self._retry_at = 0.0


class Cache:
    """Redis behind a circuit breaker: a failing or slow Redis costs one timeout, then is skipped
    for `retry_after` seconds. No method raises on a Redis failure."""

    def __init__(self, client: redis.Redis, ttl: int, stale_ttl: int, lock_seconds: float, retry_after: float = 5.0):
        self.client = client
        self.ttl = ttl
        self.stale_ttl = max(stale_ttl, ttl)
        self.lock_seconds = lock_seconds
        self.breaker = Breaker(retry_after)

    @property
    def available(self) -> bool:
        return self.breaker.closed

    def _call(self, operation: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """fn's result; raises _Unavailable when Redis failed or the breaker is open."""
        if not self.breaker.allow():
            raise _Unavailable
        try:
            result = fn(*args, **kwargs)
        except redis.RedisError as error:
            metrics.REDIS_ERRORS.labels(operation=operation).inc()
            self.breaker.failed()
            raise _Unavailable from error
        self.breaker.succeeded()
        return result

    def get(self, key: str) -> Entry | None:
        try:
            raw = self._call("get", self.client.get, key)
        except _Unavailable:
            return None
        if raw is None:
            return None
        try:
            stored = json.loads(raw)
            return Entry(body=stored["body"], fresh_until=float(stored["fresh_until"]), seq=int(stored.get("seq", 0)))
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring malformed cache entry %s", key)
            return None

    def put(self, key: str, kind: str, body: dict[str, Any], seq: int = 0) -> Entry:
        """Store a fresh body and announce it; returns the entry even when Redis is down."""
        entry = Entry(body=body, fresh_until=time.time() + self.ttl, seq=seq)
        value = json.dumps({"fresh_until": entry.fresh_until, "seq": seq, "body": body}, separators=(",", ":"))
        announcement = json.dumps(
            {
                "key": key,
                "kind": kind,
                "window": body["meta"]["window"],
                "computed_at": body["meta"]["computed_at"],
                "fresh_until": entry.fresh_until,
            },
            separators=(",", ":"),
        )

        def write() -> None:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.set(key, value, ex=self.stale_ttl)
                pipe.publish(ANNOUNCE_CHANNEL, announcement)
                pipe.execute()

        with contextlib.suppress(_Unavailable):  # the entry is still served from this process
            self._call("set", write)
        return entry

    def change_seq(self) -> int:
        """The latest applied change batch announced (0: none, or Redis unavailable)."""
        return self.latest_change()[0]

    def latest_change(self) -> tuple[int, int]:
        """The latest applied change batch announced and the primary's WAL position after it
        (0 for what is unknown: none yet, no replica, or Redis unavailable)."""
        try:
            seq, position = self._call("get", self.client.mget, CHANGE_SEQ, CHANGE_POSITION)
        except _Unavailable:
            return 0, 0
        return int(seq or 0), int(position or 0)

    def announce_change(self, changed: dict[str, Any]) -> None:
        """Number a committed batch of the applier and tell every instance what it changed."""

        def write() -> None:
            if "position" in changed:
                # Before the number: whoever reads the number reads this position or a later one.
                self.client.set(CHANGE_POSITION, changed["position"])
            seq = self.client.incr(CHANGE_SEQ)
            self.client.publish(CHANGES_CHANNEL, json.dumps({**changed, "seq": seq}, separators=(",", ":")))

        with contextlib.suppress(_Unavailable):  # streams then refresh by their TTL (hub.py)
            self._call("announce", write)

    def try_lock(self, key: str) -> Lock | object | None:
        """The single-flight lock of `key`: a held Lock, None when another process holds it, or
        NO_REDIS when Redis cannot be asked (the caller then relies on in-process single-flight)."""
        # thread_local=False: a background refresh releases the lock its request thread took.
        lock = self.client.lock(lock_key(key), timeout=self.lock_seconds, blocking=False, thread_local=False)
        try:
            return lock if self._call("lock", lock.acquire) else None
        except _Unavailable:
            return NO_REDIS

    def release(self, lock: Lock | object) -> None:
        if isinstance(lock, Lock):
            # Only if still ours (redis-py compares the token in a script); if it expired or Redis is
            # gone, the key's expiry frees it either way.
            with contextlib.suppress(redis.RedisError):
                lock.release()

    def locked(self, key: str) -> bool:
        try:
            return bool(self._call("exists", self.client.exists, lock_key(key)))
        except _Unavailable:
            return False


class _Unavailable(Exception):
    pass
