"""Computed KPI responses in Redis, shared by every worker and instance: read, written with
their announcement, locked for single-flight, behind a circuit breaker. The key layout is keys.py:
every key is the database's scope's, so until the scope is known (the database not reached yet,
or no KPI schema in it) nothing is read from or written to Redis, as while Redis is down."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from redis.lock import Lock

from kpi_service.ops import metrics
from kpi_service.serving.breaker import Breaker
from kpi_service.serving.keys import Keys

log = logging.getLogger(__name__)

# try_lock's answer when Redis cannot be asked: go ahead, guarded only in-process.
NO_REDIS = object()
# KEYS[1] the value's key; ARGV: value, its computed_at, seconds to keep it, channel,
# announcement, its change batch (seq). A value computed after a later change batch was
# announced is the newer one, whatever the clocks of the instances that computed the two; for
# the same batch, the later computed_at. The stored value's seq is the first in its JSON (its
# top level, before the body) and so is its computed_at (the body's meta: the metrics and
# series before it hold numbers and dates only); the canonical spelling orders as strings.
# (Replication keeps the order of writes: after a failover, every stored value's seq is at
# most the change_seq the new primary has, so new values are never refused for a lost seq.)
_PUT_NEWER = """
local stored = redis.call('GET', KEYS[1])
if stored then
  local seq = tonumber(string.match(stored, '"seq":(%d+)')) or 0
  local new_seq = tonumber(ARGV[6])
  if seq > new_seq then
    return 0
  end
  local computed_at = string.match(stored, '"computed_at":"([^"]*)"')
  if seq == new_seq and computed_at and computed_at > ARGV[2] then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""


@dataclass(frozen=True)
class Entry:
    body: dict[str, Any]
    fresh_until: float
    seq: int = 0  # the change batch it includes (the scope's change_seq when its SQL ran)
    # What later batches' deltas are added to (serving/advance.py): the summaries' batch number
    # in its snapshot ("batch"), each span's sums ("sums", null where it read the rows), and
    # when a statement last computed it ("verified", unix time). None: computed in raw mode.
    state: dict[str, Any] | None = None

    @property
    def fresh(self) -> bool:
        return time.time() < self.fresh_until


class Cache:
    """Redis behind a circuit breaker: a failing or slow Redis costs one timeout, then is skipped
    for `retry_after` seconds. No method raises on a Redis failure."""

    def __init__(
        self,
        client: redis.Redis,
        ttl: int,
        stale_ttl: int,
        lock_seconds: float,
        retry_after: float = 5.0,
        scope: Callable[[], str | None] = lambda: None,
    ) -> None:
        """`scope`: the scope of the database whose values these are (Database.scope), None while
        it is not known."""
        self.client = client
        self.scope = scope
        self.ttl = ttl
        self.stale_ttl = max(stale_ttl, ttl)
        self.lock_seconds = lock_seconds
        self.breaker = Breaker(retry_after)
        # SET and PUBLISH in one script: a reader never sees a value without its announcement.
        self._put_newer = client.register_script(_PUT_NEWER)
        self._unannounced: dict[str, Any] | None = None  # a batch Redis has not heard of yet
        # When this process's applier last found the change log empty: the answer while Redis,
        # where every instance's applier writes it, cannot be asked.
        self._caught_up_here: float | None = None
        self._announcing = threading.Lock()

    @property
    def available(self) -> bool:
        return self.breaker.closed

    @property
    def keys(self) -> Keys | None:
        """The keys of the database's scope; None while it is not known."""
        scope = self.scope()
        return None if scope is None else Keys(scope)

    def _keys(self) -> Keys:
        keys = self.keys
        if keys is None:
            raise _Unavailable
        return keys

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
        """The stored value of a window (`key`: keys.cache_key's)."""
        try:
            raw = self._call("get", self.client.get, self._keys().value(key))
        except _Unavailable:
            return None
        if raw is None:
            return None
        try:
            return _entry(raw)
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring malformed cache entry %s", key)
            return None

    def get_many(self, keys: list[str]) -> list[Entry | None]:
        """The stored values of these windows, in one round trip (None for each when Redis fails)."""
        try:
            scoped = self._keys()
            raws = self._call("get", self.client.mget, [scoped.value(key) for key in keys]) if keys else []
        except _Unavailable:
            return [None] * len(keys)
        entries: list[Entry | None] = []
        for raw in raws:
            try:
                entries.append(None if raw is None else _entry(raw))
            except (ValueError, KeyError, TypeError):
                entries.append(None)
        return entries

    def watch(self, key: str, described: str) -> None:
        """A window someone reads (a poller, a stream): kept fresh by every batch, across instances,
        until nobody has read it for a TTL (serving/service.py, advance). `described`: its
        kind and query as JSON (KpiService.describe), from which any instance can compute it."""
        with contextlib.suppress(_Unavailable):
            keys = self._keys()
            pipe = self.client.pipeline(transaction=False)
            pipe.zadd(keys.watched, {key: time.time()})
            pipe.hset(keys.watched_queries, key, described)
            self._call("watch", pipe.execute)

    def watched(self) -> dict[str, str]:
        """The windows read within the last TTL: key -> its description. Older ones are forgotten."""
        try:
            keys = self._keys()
            cutoff = time.time() - self.ttl
            pipe = self.client.pipeline(transaction=False)
            pipe.zrangebyscore(keys.watched, "-inf", cutoff)
            pipe.zrangebyscore(keys.watched, cutoff, "+inf")
            pipe.hgetall(keys.watched_queries)
            gone, current, described = self._call("watched", pipe.execute)
            if gone:
                pipe = self.client.pipeline(transaction=False)
                pipe.zrem(keys.watched, *gone)
                pipe.hdel(keys.watched_queries, *gone)
                self._call("watched", pipe.execute)
        except _Unavailable:
            return {}
        return {key.decode(): described[key].decode() for key in current if key in described}

    def claim(self, name: str, seconds: float) -> bool:
        """Whether this process is the one, across instances, to do `name` (a batch's advance, a
        tick) for the next `seconds`; True when Redis cannot say (then each process does its own)."""
        try:
            claim = self._keys().claim(name)
            return bool(self._call("set", self.client.set, claim, "1", nx=True, px=max(1, int(seconds * 1000))))
        except _Unavailable:
            return True

    def put(
        self,
        key: str,
        kind: str,
        body: dict[str, Any],
        seq: int = 0,
        ttl: float | None = None,
        state: dict[str, Any] | None = None,
    ) -> Entry | None:
        """Store a body, fresh for `ttl` seconds (the cache's TTL unless given), and announce it,
        unless the stored value is newer (after a later change batch, or the same one and
        computed later): then nothing is written or announced and the answer is None. Returns
        the entry when Redis is down (it is still served from this process).

        Two computations of one window can overlap (a lock lost in a failover or expired under a
        slow statement, docs/reliability.md): whichever finishes last, the stored value is the
        newest."""
        entry = Entry(body=body, fresh_until=time.time() + (self.ttl if ttl is None else ttl), seq=seq, state=state)
        keys = self.keys
        if keys is None:
            return entry  # served from this process only
        try:
            written = self._call("set", self._put_script, keys, key, kind, entry, self.client)
        except _Unavailable:
            return entry  # still served from this process
        return entry if written else None

    def put_many(self, values: list[tuple[str, str, dict[str, Any], int, dict[str, Any]]]) -> None:
        """put() of many (key, kind, body, seq, state), fresh for the TTL, in one round trip:
        every watched window a batch moves on (serving/advancer.py)."""
        keys = self.keys
        if keys is None or not values:
            return
        pipe = self.client.pipeline(transaction=False)
        fresh_until = time.time() + self.ttl
        for key, kind, body, seq, state in values:
            self._put_script(keys, key, kind, Entry(body, fresh_until, seq, state), pipe)
        with contextlib.suppress(_Unavailable):
            self._call("set", pipe.execute)

    def _put_script(self, keys: Keys, key: str, kind: str, entry: Entry, client: Any) -> Any:
        # (The state last: the script reads the first "seq" and "computed_at".)
        stored = {"fresh_until": entry.fresh_until, "seq": entry.seq, "body": entry.body}
        if entry.state is not None:
            stored["state"] = entry.state
        meta = entry.body["meta"]
        announcement = {
            "key": keys.value(key),
            "kind": kind,
            "window": meta["window"],
            "computed_at": meta["computed_at"],
            "fresh_until": entry.fresh_until,
        }
        args = [_compact(stored), meta["computed_at"], self.stale_ttl, keys.announce, _compact(announcement), entry.seq]
        return self._put_newer(keys=[keys.value(key)], args=args, client=client)

    def change_seq(self) -> int:
        """The latest applied change batch announced (0: none, or Redis unavailable)."""
        return self.latest_change()[0]

    def latest_change(self) -> tuple[int, int, float | None]:
        """The latest applied change batch announced, the primary's WAL position after it (0 for
        what is unknown: none yet, no replica, or Redis unavailable), and when an applier last
        found the change log empty (None: not known)."""
        try:
            keys = self._keys()
            seq, position, caught_up = self._call(
                "get", self.client.mget, keys.change_seq, keys.change_position, keys.caught_up
            )
        except _Unavailable:
            return 0, 0, self._caught_up_here
        return int(seq or 0), int(position or 0), _later(caught_up, self._caught_up_here)

    def caught_up_at(self) -> float | None:
        """When an applier (of any instance) last found the change log empty; None: not known."""
        return self.latest_change()[2]

    def caught_up(self, at: float) -> None:
        """An applier found the change log empty at `at` (unix time, taken before its batch began)."""
        self._caught_up_here = at
        with contextlib.suppress(_Unavailable):
            self._call("set", self.client.set, self._keys().caught_up, repr(at))

    def applier_turn(self, interval: float) -> bool:
        """Whether this process's applier may call now: one call per `interval` across all
        instances (and always while Redis cannot say). Every batch refreshes the windows it
        changes, so the instances' ticks, added up, would multiply those statements."""
        try:
            turn = self._keys().applier_turn
            return bool(self._call("set", self.client.set, turn, "1", nx=True, px=max(1, int(interval * 1000))))
        except _Unavailable:
            return True

    def announce_change(self, changed: dict[str, Any]) -> None:
        """Number a committed batch of the applier and tell every instance what it changed.

        A batch Redis cannot hear of now is told later, every `retry_after` seconds until Redis
        answers, as a change of everything: the streams that missed it would otherwise show
        its numbers only after their TTL (live/hub.py)."""
        with self._announcing:
            if self._unannounced is not None:
                changed = {**changed, "all": True}
            try:
                self._call("announce", self._announce, self._keys(), changed)
            except _Unavailable:
                if self._unannounced is None:
                    retry = threading.Timer(self.breaker.retry_after, self._announce_later)
                    retry.daemon = True
                    retry.start()
                self._unannounced = {**changed, "all": True}
            else:
                self._unannounced = None

    def _announce(self, keys: Keys, changed: dict[str, Any]) -> None:
        if "position" in changed:
            # Before the number: whoever reads the number reads this position or a later one.
            self.client.set(keys.change_position, changed["position"])
        seq = self.client.incr(keys.change_seq)
        self.client.publish(keys.changed, json.dumps({**changed, "seq": seq}, separators=(",", ":")))

    def _announce_later(self) -> None:
        with self._announcing:
            pending, self._unannounced = self._unannounced, None
        if pending is not None:
            self.announce_change(pending)

    def try_lock(self, key: str) -> Lock | object | None:
        """The single-flight lock of `key`: a held Lock, None when another process holds it, or
        NO_REDIS when Redis cannot be asked (the caller then relies on in-process single-flight)."""
        try:
            # thread_local=False: a background refresh releases the lock its request thread took.
            lock = self.client.lock(
                self._keys().lock(key), timeout=self.lock_seconds, blocking=False, thread_local=False
            )
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
            return bool(self._call("exists", self.client.exists, self._keys().lock(key)))
        except _Unavailable:
            return False


def _compact(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))


def _entry(raw: bytes | str) -> Entry:
    stored = json.loads(raw)
    return Entry(
        body=stored["body"],
        fresh_until=float(stored["fresh_until"]),
        seq=int(stored.get("seq", 0)),
        state=stored.get("state"),
    )


def _later(stored: bytes | None, here: float | None) -> float | None:
    try:
        shared = float(stored) if stored is not None else None
    except ValueError:
        shared = None
    known = [at for at in (shared, here) if at is not None]
    return max(known) if known else None


class _Unavailable(Exception):
    pass
