"""KPI results for a query: from the cache while fresh, else computed once by sql/runtime/kpi.sql.

The rules, for many pollers across many workers and instances sharing one Redis:
- fresh in this process's memory or in Redis: served as is ("hit");
- expired less than a TTL ago: the previous value is served at once while one refresh runs
  in the background ("refresh"), so a polling dashboard never waits when the TTL ends;
- missing: exactly one computation runs across all processes (a Redis lock, and in-process
  single-flight when Redis is down); the others wait for its result ("miss");
- database failing: the last good value ("stale"), or a 503 when there is none.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import psycopg
from marshmallow import ValidationError

from kpi_service.db.database import INIT_HINT, Database, DatabaseBusy, DatabaseUnavailable, SchemaMissing
from kpi_service.ops import metrics
from kpi_service.serving.cache import KEY_PREFIX, Cache, Entry, cache_key
from kpi_service.serving.query import KpiQuery, MetricsSchema
from kpi_service.serving.singleflight import SingleFlight
from kpi_service.serving.windows import Window, buckets
from kpi_service.web.errors import ApiError

log = logging.getLogger(__name__)

_metrics_schema = MetricsSchema()
# Hits of /api/kpi kept in-process (about 1 KB each, with their serialized bytes).
_MAX_RECENT = 1024
_KPI_KEYS = f"{KEY_PREFIX}:kpi:"
# A computation at `now`: the body's data, the SQL's duration in ms, and which database answered.
Compute = Callable[[datetime], tuple[dict[str, Any], float, str | None]]


def _is_fresh(entry: Entry) -> bool:
    return entry.fresh


@dataclass(frozen=True)
class Served:
    """A response body and how it was obtained, for headers, logs and metrics."""

    body: dict[str, Any]
    outcome: str  # "hit", "refresh" (previous value while refreshing), "miss" or "stale"
    fresh_until: float  # unix time until which the body is fresh
    db_ms: float | None = None  # duration of the SQL when it ran for this request

    @cached_property
    def payload(self) -> bytes:
        """The serialized body: computed once per Served, which hits share in-process."""
        return json.dumps(self.body, separators=(",", ":")).encode()

    @cached_property
    def etag(self) -> str:
        return hashlib.blake2b(self.payload, digest_size=16).hexdigest()


class KpiService:
    def __init__(self, db: Database, cache: Cache, wait_seconds: float) -> None:
        self.db = db
        self.cache = cache
        self.wait_seconds = wait_seconds
        self._flights = SingleFlight()
        self._refresher = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kpi-refresh")
        self._refreshing: set[str] = set()
        self._refreshing_lock = threading.Lock()
        # Hits by key, reused until their freshness ends: no Redis round trip and no
        # serialization on the hot path. Bounded by the number of distinct windows polled.
        self._recent: dict[str, Served] = {}
        self._prune_at = 256
        # Set when the database server failed (not one statement's timeout), until a
        # computation succeeds again.
        self._db_unreachable = False
        self._probe = threading.Lock()

    def current(self, query: KpiQuery) -> Served:
        """GET /api/kpi for this query."""
        return self._serve("kpi", query, self._current_compute(query))

    def current_after(self, query: KpiQuery, seq: int, not_before: float) -> Served:
        """The window's value for a live update: the stored one if it includes change batch `seq`
        and was computed at or after `not_before` (unix time), else computed once across all
        processes, the others waiting for that result (hub.py)."""
        key = cache_key("kpi", query)
        # In whole milliseconds, as computed_at is written: a value computed from not_before on
        # must never look older than it.
        not_before = math.floor(not_before * 1000) / 1000

        def current(entry: Entry) -> bool:
            return entry.seq >= seq and _computed(entry) >= not_before

        entry = self.cache.get(key)
        if entry is not None and current(entry):
            return self._remember(key, _hit(entry))
        compute = self._current_compute(query)
        # A flight of its own: joining a computation of the same window that began before this
        # batch (a poller's, a new stream's) would hand back the numbers without it.
        flight = f"{key}#{seq}#{not_before}"
        return self._flights.do(
            flight, lambda: self._compute_once(key, "kpi", query, compute, current), self.wait_seconds
        )

    def last_known(self, query: KpiQuery) -> Served | None:
        """The window's stored value flagged stale: what a stream shows while its recompute fails."""
        key = cache_key("kpi", query)
        entry = self.cache.get(key)
        recent = self._recent.get(key)
        body = entry.body if entry is not None else recent.body if recent is not None else None
        if body is None:
            return None
        return Served(_with_flags(body, cached=True, stale=True), "stale", time.time())

    def _current_compute(self, query: KpiQuery) -> Compute:
        def compute(now: datetime) -> tuple[dict[str, Any], float, str | None]:
            window = query.window
            rows, duration_ms, source = self._kpi_rows(
                "kpi", [(window.start, window.end, window.as_of(now))], query.aged_days
            )
            return {"metrics": _validated(rows[0])}, duration_ms, source

        return compute

    def history(self, query: KpiQuery) -> Served:
        """GET /api/kpi/history: every bucket in one execution of the same statement."""
        assert query.date_from is not None and query.date_to is not None and query.interval is not None
        days = buckets(query.date_from, query.date_to, query.interval)

        def compute(now: datetime) -> tuple[dict[str, Any], float, str | None]:
            windows = [Window.of_dates(first, last, query.tz) for first, last in days]
            spans = [(w.start, w.end, w.as_of(now)) for w in windows]
            rows, duration_ms, source = self._kpi_rows("history", spans, query.aged_days)
            series = [
                {"start": first.isoformat(), "end": last.isoformat(), "metrics": _validated(row)}
                for (first, last), row in zip(days, rows, strict=True)
            ]
            return {"series": series}, duration_ms, source

        return self._serve("history", query, compute)

    def _kpi_rows(
        self, endpoint: str, spans: list[tuple[datetime | None, datetime | None, datetime]], aged_days: int
    ) -> tuple[list[dict[str, Any]], float, str | None]:
        # Counted here, whoever asked (a request, a refresh, a stream): what the database pays.
        metrics.KPI_STATEMENTS.labels(endpoint=endpoint).inc()
        return self.db.kpi_rows(spans, aged_days)

    def _serve(self, kind: str, query: KpiQuery, compute: Compute) -> Served:
        key = cache_key(kind, query)
        recent = self._recent.get(key)
        if recent is not None and time.time() < recent.fresh_until:
            return recent
        entry = self.cache.get(key)
        if entry is not None and entry.fresh:
            return self._remember(key, _hit(entry))
        # While the database fails, any earlier value is served at once (and refreshed in the
        # background, which finds out when the database is back): a request must not wait for a
        # connection that is not coming just to be given the same stale value.
        failing = self._db_unreachable
        if entry is not None and (failing or time.time() < entry.fresh_until + self.cache.ttl):
            self._refresh_in_background(key, kind, query, compute)
            # While the database fails, the previous value is what meta.stale flags.
            flagged = _with_flags(entry.body, cached=True, stale=failing)
            return Served(flagged, "stale" if failing else "refresh", entry.fresh_until)
        try:
            return self._flights.do(key, lambda: self._compute_once(key, kind, query, compute), self.wait_seconds)
        except (DatabaseUnavailable, TimeoutError) as error:
            if entry is not None:
                return Served(_with_flags(entry.body, cached=True, stale=True), "stale", entry.fresh_until)
            raise _unavailable(error) from None

    def _remember(self, key: str, served: Served) -> Served:
        if not key.startswith(_KPI_KEYS):
            return served  # history bodies run to hundreds of KB: they stay in Redis only
        if len(self._recent) >= self._prune_at:
            # Entries past their freshness are never served from here again: drop them, so the
            # memo holds about the windows polled within a TTL rather than every window ever
            # asked for. Amortized O(1): the next prune waits until the memo has doubled.
            now = time.time()
            live = {k: v for k, v in list(self._recent.items()) if v.fresh_until > now}
            if len(live) > _MAX_RECENT:
                live.clear()  # rare: very many windows fresh at once
            self._recent = live
            self._prune_at = max(256, 2 * len(live))
        self._recent[key] = served
        return served

    def _compute_once(
        self, key: str, kind: str, query: KpiQuery, compute: Compute, good: Callable[[Entry], bool] = _is_fresh
    ) -> Served:
        """Compute under the cross-process lock, or wait for the process that holds it. `good`:
        what a stored entry must be to be served instead (fresh, unless a live update asks more)."""
        deadline = time.monotonic() + self.wait_seconds
        while True:
            lock = self.cache.try_lock(key)
            if lock is not None:
                try:
                    # Another process may have stored it between our read and our lock.
                    entry = self._good_or_none(key, good)
                    if entry is not None:
                        return self._remember(key, _hit(entry))
                    return self._compute_and_store(key, kind, query, compute)
                finally:
                    self.cache.release(lock)
            metrics.SINGLEFLIGHT_WAITS.inc()
            entry = self._wait_for_other(key, deadline, good)
            if entry is not None:
                return self._remember(key, _hit(entry))
            if time.monotonic() >= deadline:
                raise TimeoutError

    def _wait_for_other(self, key: str, deadline: float, good: Callable[[Entry], bool]) -> Entry | None:
        """The entry another process is computing; None once its lock is gone without one (it
        failed or died: the caller then tries the lock itself) or the deadline passed."""
        pause = 0.005
        while time.monotonic() < deadline:
            time.sleep(pause)
            entry = self._good_or_none(key, good)
            if entry is not None:
                return entry
            if not self.cache.locked(key):
                return self._good_or_none(key, good)
            pause = min(pause * 2, 0.05)
        return None

    def _good_or_none(self, key: str, good: Callable[[Entry], bool]) -> Entry | None:
        entry = self.cache.get(key)
        return entry if entry is not None and good(entry) else None

    def _refresh_in_background(self, key: str, kind: str, query: KpiQuery, compute: Compute) -> None:
        with self._refreshing_lock:
            if key in self._refreshing:
                return
            self._refreshing.add(key)
        lock = self.cache.try_lock(key)
        if lock is None:  # another process is refreshing it
            self._done_refreshing(key)
            return

        def refresh() -> None:
            try:
                # The refresh another process just finished may have released this lock.
                if self._good_or_none(key, _is_fresh) is None:
                    self._compute_and_store(key, kind, query, compute)
            except (DatabaseUnavailable, ApiError) as error:
                log.warning("background refresh of %s failed: %s", key, error.__class__.__name__)
            except Exception:
                log.exception("background refresh of %s failed", key)
            finally:
                self.cache.release(lock)
                self._done_refreshing(key)

        try:
            self._refresher.submit(refresh)
        except RuntimeError:  # shutting down: leave the refresh to another process
            self.cache.release(lock)
            self._done_refreshing(key)

    def _done_refreshing(self, key: str) -> None:
        with self._refreshing_lock:
            self._refreshing.discard(key)

    def _compute_and_store(self, key: str, kind: str, query: KpiQuery, compute: Compute) -> Served:
        now = datetime.now(UTC)
        # While the database is unreachable, one computation at a time in this process finds out
        # whether it is back; the others fail at once instead of each waiting the pool timeout
        # for a connection (a worker's threads would all be waiting, and the requests queued
        # behind them, cached windows and health probes included, with them).
        probing = self._db_unreachable
        if probing and not self._probe.acquire(blocking=False):
            raise DatabaseUnavailable("the database is unreachable; another request is checking it")
        # Read before the SQL runs: the value then includes at least that batch of changes (on a
        # replica too, which is read once it has replayed the batch's position).
        seq, position = self.cache.latest_change()
        self.db.observe_position(position)
        try:
            data, duration_ms, source = compute(now)
        except DatabaseUnavailable as error:
            if not isinstance(error, DatabaseBusy | SchemaMissing) and not isinstance(
                error.__cause__, psycopg.errors.QueryCanceled
            ):
                # The server itself, not one statement's own slowness (statement_timeout), a
                # full pool or a missing schema, none of which may mark every other window's
                # cached value as stale.
                self._db_unreachable = True
            raise
        finally:
            if probing:
                self._probe.release()
        self._db_unreachable = False
        meta = {
            "computed_at": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "cached": False,
            "stale": False,
            "duration_ms": round(duration_ms, 2),
            "window": query.describe(),
        }
        if source is not None:  # a replica is configured: say which database answered
            meta["source"] = source
        body = {**data, "success": True, "message": None, "meta": meta}
        entry = self.cache.put(key, kind, body, seq)
        if entry is None:
            # Another process computed the window later and stored it while this ran (two
            # computations overlapped: a lock lost in a failover, or expired): this value is
            # its requester's answer, but the newer stored one is what everyone else gets.
            return Served(body, "miss", time.time() + self.cache.ttl, duration_ms)
        self._remember(key, _hit(entry))
        return Served(body, "miss", entry.fresh_until, duration_ms)

    def close(self) -> None:
        self._refresher.shutdown(wait=True)


# Seconds a client should wait before asking again when every connection was in use: about
# what a few cache misses take.
BUSY_RETRY_AFTER_S = 1


def _unavailable(error: Exception) -> ApiError:
    """The 503 of a window with nothing cached, saying why."""
    if isinstance(error, TimeoutError):
        return ApiError(503, "Timed out waiting for the computation of this window.")
    if isinstance(error, DatabaseBusy):
        return ApiError(
            503,
            "The database is busy: every connection of this instance is computing other windows. Retry shortly.",
            retry_after=BUSY_RETRY_AFTER_S,
        )
    if isinstance(error, SchemaMissing):
        return ApiError(503, f"The service is not initialized: its database has no KPI schema ({INIT_HINT}).")
    return ApiError(503, "The database is unavailable and no earlier result for this window is cached.")


def _hit(entry: Entry) -> Served:
    return Served(_with_flags(entry.body, cached=True, stale=False), "hit", entry.fresh_until)


def _computed(entry: Entry) -> float:
    """When an entry's SQL ran, as unix time."""
    return datetime.fromisoformat(entry.body["meta"]["computed_at"].replace("Z", "+00:00")).timestamp()


def _validated(row: dict[str, Any]) -> dict[str, Any]:
    try:
        return _metrics_schema.load(row)
    except ValidationError as error:
        # A row outside the definitions (docs/kpis.md) means a bug or corrupt data: never pass it on.
        log.error("KPI row failed validation: %s", error.messages)
        raise ApiError(500, "The computed metrics failed validation.") from None


def _with_flags(body: dict[str, Any], *, cached: bool, stale: bool) -> dict[str, Any]:
    return {**body, "meta": {**body["meta"], "cached": cached, "stale": stale}}
