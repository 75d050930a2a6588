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
A value and its announcement are written by one script, so a reader never sees one without the
other, and only if the stored value was not computed later (Cache.put).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import fakeredis
import redis
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.lock import Lock
from redis.retry import Retry
from redis.sentinel import Sentinel

from kpi_service.config import Settings
from kpi_service.ops import metrics
from kpi_service.serving.query import KpiQuery

log = logging.getLogger(__name__)

KEY_PREFIX = "kpi:v1"
ANNOUNCE_CHANNEL = f"{KEY_PREFIX}:announce"
CHANGES_CHANNEL = f"{KEY_PREFIX}:changed"
CHANGE_SEQ = f"{KEY_PREFIX}:change_seq"
CHANGE_POSITION = f"{KEY_PREFIX}:change_position"
# try_lock's answer when Redis cannot be asked: go ahead, guarded only in-process.
NO_REDIS = object()
# KEYS[1] the value's key; ARGV: value, its computed_at, seconds to keep it, channel, announcement.
# The stored value's computed_at is the first one in its JSON (the body's meta: the metrics and
# series before it hold numbers and dates only); the canonical spelling orders as strings.
_PUT_NEWER = """
local stored = redis.call('GET', KEYS[1])
if stored then
  local computed_at = string.match(stored, '"computed_at":"([^"]*)"')
  if computed_at and computed_at > ARGV[2] then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""


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
    """The configured Redis, or an in-process stand-in when neither REDIS_URL nor REDIS_SENTINELS is set."""
    if not settings.uses_redis:
        return fakeredis.FakeRedis()
    timeout = settings.redis_timeout_ms / 1000
    return redis_client(
        settings.redis_url,
        settings.redis_sentinels,
        settings.redis_sentinel_service,
        settings.redis_sentinel_password,
        timeout=timeout,
        connect_timeout=timeout,
    )


def redis_client(
    url: str | None,
    sentinels: Sequence[tuple[str, int]] = (),
    service: str | None = None,
    sentinel_password: str | None = None,
    *,
    timeout: float | None,
    connect_timeout: float | None = None,
) -> redis.Redis:
    """A client of the Redis at `url`, or, with sentinels, of the primary they name for `service`
    (`url` then gives only the database number and the credentials).

    The sentinel-managed pool asks the sentinels for the primary whenever it opens a connection,
    and drops idle connections when the answer changes; a connection to a demoted primary fails
    (closed by Sentinel, or READONLY). So after a failover every user of this client (cache,
    locks, tickets, the stream hub's subscription) reaches the new primary on its next
    connection, with no restart."""
    if not sentinels:
        if url is None:
            raise ValueError("a Redis URL or sentinels are needed")
        return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=connect_timeout)
    if not service:
        raise ValueError("sentinels need the name of the service they monitor")
    credentials = {k: v for k, v in parse_url(url).items() if k in ("db", "username", "password")} if url else {}
    sentinel = Sentinel(
        list(sentinels),
        sentinel_kwargs={
            "socket_timeout": timeout,
            "socket_connect_timeout": connect_timeout,
            "password": sentinel_password,
            # One try per sentinel: a dead one is skipped for the next (redis-py's default would
            # retry it ten times with back-off, seconds per connection during an outage).
            "retry": Retry(NoBackoff(), 0),
        },
    )
    return sentinel.master_for(service, socket_timeout=timeout, socket_connect_timeout=connect_timeout, **credentials)


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
        # SET and PUBLISH in one script: a reader never sees a value without its announcement.
        self._put_newer = client.register_script(_PUT_NEWER)

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

    def put(self, key: str, kind: str, body: dict[str, Any], seq: int = 0) -> Entry | None:
        """Store a fresh body and announce it, unless the stored value was computed later: then
        nothing is written or announced and the answer is None. Returns the entry when Redis is
        down (it is still served from this process).

        Two computations of one window can overlap (a lock lost in a failover or expired under a
        slow statement, docs/reliability.md): whichever finishes last, the stored value is the
        one computed last."""
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

        try:
            written = self._call(
                "set",
                self._put_newer,
                keys=[key],
                args=[value, body["meta"]["computed_at"], self.stale_ttl, ANNOUNCE_CHANNEL, announcement],
                client=self.client,
            )
        except _Unavailable:
            return entry  # still served from this process
        return entry if written else None

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
