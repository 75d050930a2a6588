"""KPI results for a query: from the cache while fresh, else computed once by sql/runtime/kpi.sql.

The rules, for many pollers across many workers and instances sharing one Redis:
- fresh in this process's memory or in Redis: served as is ("hit");
- expired less than a TTL ago: the previous value is served at once while one refresh runs
  in the background ("refresh"), so a polling dashboard never waits when the TTL ends;
- missing: exactly one computation runs across all processes (a Redis lock, and in-process
  single-flight when Redis is down); the others wait for its result ("miss");
- database failing: the last good value ("stale"), or a 503 when there is none.

A little over 250 lines: the five cases share one cross-process lock protocol (_compute_once,
_wait_for_other) and one probe of a failing database (_compute_and_store), kept together.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kpi_service.db.connections import Database
from kpi_service.db.errors import DatabaseBusy, DatabaseUnavailable, SchemaMissing, StatementTimeout
from kpi_service.ops import metrics
from kpi_service.serving.advance import state_of
from kpi_service.serving.advancer import ADVANCE_WAIT_S, Advancer, advanceable, describe
from kpi_service.serving.bodies import format_instant, with_flags
from kpi_service.serving.cache import Cache, Entry
from kpi_service.serving.errors import InvalidKpis, WindowUnavailable
from kpi_service.serving.freshness import MAX_REQUESTED, Changes, Requested
from kpi_service.serving.keys import cache_key
from kpi_service.serving.query import KpiQuery, windows_of
from kpi_service.serving.recent import Recent
from kpi_service.serving.refresher import Refresher
from kpi_service.serving.responses import Served, computed_at, data_of, hit
from kpi_service.serving.singleflight import SingleFlight
from kpi_service.serving.targets import Targets

log = logging.getLogger(__name__)

# A computation at `now`: the body's data, the SQL's duration in ms, which database answered,
# the change-log rows not in its numbers yet (Database.kpi_rows), and what later batches'
# deltas are added to (serving/advance.py, state_of).
Computed = tuple[dict[str, Any], float, str | None, int, dict[str, Any] | None]
Compute = Callable[[datetime], Computed]


def _is_fresh(entry: Entry) -> bool:
    return entry.fresh


class KpiService:
    def __init__(self, db: Database, cache: Cache, wait_seconds: float, pending_ttl: float = 1.0) -> None:
        self.db = db
        self.cache = cache
        self.wait_seconds = wait_seconds
        # How long a value computed while the applier was behind stays fresh: about one of its
        # intervals, so that the value after its next batch replaces it.
        self.pending_ttl = min(pending_ttl, cache.ttl)
        self._flights = SingleFlight()
        # Shared with the stream hub: one pool of refresh threads per process.
        self.refresher = Refresher()
        self.recent = Recent()
        # Change-driven freshness (freshness.py): the batches heard, fed by the stream hub's
        # listener, which `listen` starts on the first request (stream.init_app sets it).
        self.changes = Changes()
        self.requested = Requested(within=cache.ttl)
        self.listen: Callable[[], None] | None = None
        self._listening = False
        self._wanted: dict[str, int] = {}
        # Set when the database server failed (not one statement's timeout), until a
        # computation succeeds again.
        self._db_unreachable = False
        self._probe = threading.Lock()
        # Watched windows brought up to each batch by its deltas (advancer.py), and when this
        # process last told Redis it reads each one.
        self.advancer = Advancer(self)
        self._watched_at: dict[str, float] = {}
        # The owner's targets, put into each window's body as it is served (targets.py).
        self.targets = Targets(db.targets)

    def current(self, query: KpiQuery) -> Served:
        """GET /api/kpi for this query, with the window's targets."""
        self.targets.start()
        return self.targets.served(self._serve("kpi", query, self.compute_of("kpi", query)), query)

    def current_after(self, query: KpiQuery, seq: int, not_before: float) -> Served:
        """The window's value for a live update: the stored one if it includes change batch `seq`
        and was computed at or after `not_before` (unix time), else computed once across all
        processes, the others waiting for that result (live/hub.py)."""
        key = cache_key("kpi", query)
        # In whole milliseconds, as computed_at is written: a value computed from not_before on
        # must never look older than it.
        not_before = math.floor(not_before * 1000) / 1000

        def current(entry: Entry) -> bool:
            return entry.seq >= seq and computed_at(entry) >= not_before

        self._watch(key, "kpi", query)
        entry = self.cache.get(key)
        if entry is not None and not current(entry):
            entry = self._advanced_by_another(key, entry, seq, current)
        if entry is not None and current(entry):
            return self.targets.served(self.recent.remember(key, hit(entry)), query)
        compute = self.compute_of("kpi", query)
        # A flight of its own: joining a computation of the same window that began before this
        # batch (a poller's, a new stream's) would hand back the numbers without it.
        flight = f"{key}#{seq}#{not_before}"
        served = self._flights.do(
            flight, lambda: self._compute_once(key, "kpi", query, compute, current), self.wait_seconds
        )
        return self.targets.served(served, query)

    def last_known(self, query: KpiQuery) -> Served | None:
        """The window's stored value flagged stale: what a stream shows while its recompute fails."""
        key = cache_key("kpi", query)
        entry = self.cache.get(key)
        recent = self.recent.get(key) if self.cache.keys is not None else None
        body = entry.body if entry is not None else recent.body if recent is not None else None
        if body is None:
            return None
        return self.targets.served(Served(with_flags(body, cached=True, stale=True), "stale", time.time()), query)

    def compute_of(self, kind: str, query: KpiQuery) -> Compute:
        """A value of `kind` ("kpi", "history") computed: every span in one execution of the
        statement, one snapshot (a window and the one it is compared with; a history's buckets)."""
        windows = windows_of(kind, query)

        def compute(now: datetime) -> Computed:
            as_ofs = [window.as_of(now) for window, _ in windows]
            spans = [(window.start, window.end, as_of) for (window, _), as_of in zip(windows, as_ofs, strict=True)]
            rows, duration_ms, answered_by, pending, parts = self.kpi_rows(kind, spans, query.aged_days)
            data = data_of(kind, query, windows, rows)
            return data, duration_ms, answered_by, pending, state_of(parts, as_ofs, now)

        return compute

    def history(self, query: KpiQuery) -> Served:
        """GET /api/kpi/history: every bucket in one execution of the same statement."""
        return self._serve("history", query, self.compute_of("history", query))

    def kpi_rows(
        self, endpoint: str, spans: list[tuple[datetime | None, datetime | None, datetime]], aged_days: int
    ) -> tuple[list[dict[str, Any]], float, str | None, int, list[dict[str, Any]]]:
        # Counted here, whoever asked (a request, a refresh, a stream): what the database pays.
        metrics.KPI_STATEMENTS.labels(endpoint=endpoint).inc()
        return self.db.kpi_rows(spans, aged_days)

    def know_scope(self) -> None:
        """Find the database's scope (its keys in Redis) before they are first used, if it is not
        known yet: the database not reached since the start, or its KPI schema missing. Not while
        the database fails: a request must not wait for it only to compute nothing."""
        if self.cache.keys is None and not self._db_unreachable:
            try:
                self.db.mode()
            except DatabaseUnavailable as error:
                # Down: its computation then probes it once at a time, as after any outage.
                if not isinstance(error, DatabaseBusy | SchemaMissing | StatementTimeout):
                    self._db_unreachable = True

    def _serve(self, kind: str, query: KpiQuery, compute: Compute) -> Served:
        key = cache_key(kind, query)
        self.know_scope()
        if not self._listening and self.listen is not None:
            self._listening = True
            self.listen()
        self.requested.saw(key, kind, query)
        self._watch(key, kind, query)
        # Kept in-process only until the next batch is heard: then the stored value is
        # looked at again, and whether that batch changes it.
        heard = self.changes.latest
        # Remembered for the database's scope: none while it is unknown (the KPI schema gone).
        recent = self.recent.get(key) if self.cache.keys is not None else None
        if recent is not None and time.time() < recent.fresh_until and self.recent.heard(key) == heard:
            return recent
        entry = self.cache.get(key)
        needed = 0 if entry is None else self.changes.needed(query, entry.seq)
        if entry is not None and needed > entry.seq:
            # A batch after it changes the window: never served as current. Computed once across
            # processes (usually the refresh of that batch has begun already: this waits for it).
            def current(stored: Entry) -> bool:
                return stored.seq >= needed and stored.fresh

            advanced = self._advanced_by_another(key, entry, needed, current)
            if advanced is not None:
                return self.recent.remember(key, hit(advanced), heard)
            try:
                return self._flights.do(
                    f"{key}#{needed}", lambda: self._compute_once(key, kind, query, compute, current), self.wait_seconds
                )
            except (DatabaseUnavailable, TimeoutError):
                return Served(with_flags(entry.body, cached=True, stale=True), "stale", entry.fresh_until)
        if entry is not None and entry.fresh:
            return self.recent.remember(key, hit(entry), heard)
        # While the database fails, any earlier value is served at once (and refreshed in the
        # background, which finds out when the database is back): a request must not wait for a
        # connection that is not coming just to be given the same stale value.
        failing = self._db_unreachable
        if entry is not None and (failing or time.time() < entry.fresh_until + self.cache.ttl):
            if not failing and self.cache.available and advanceable(entry):
                self.advancer.expired()  # every watched window at once (advancer.py)
            else:
                self._refresh_in_background(key, kind, query, compute)
            # While the database fails, the previous value is what meta.stale flags.
            flagged = with_flags(entry.body, cached=True, stale=failing)
            return Served(flagged, "stale" if failing else "refresh", entry.fresh_until)
        try:
            return self._flights.do(key, lambda: self._compute_once(key, kind, query, compute), self.wait_seconds)
        except (DatabaseUnavailable, TimeoutError) as error:
            if entry is not None:
                return Served(with_flags(entry.body, cached=True, stale=True), "stale", entry.fresh_until)
            raise WindowUnavailable(error) from None

    def _watch(self, key: str, kind: str, query: KpiQuery) -> None:
        """Tell every instance this window is read (Cache.watch), a few times per TTL at most."""
        now = time.time()
        if now - self._watched_at.get(key, 0.0) > self.cache.ttl / 4:
            if len(self._watched_at) > 4 * MAX_REQUESTED:
                self._watched_at.clear()
            self._watched_at[key] = now
            self.cache.watch(key, describe(kind, query))

    def _advanced_by_another(self, key: str, entry: Entry, seq: int, good: Callable[[Entry], bool]) -> Entry | None:
        """The stored value once the advance of batch `seq` (advancer.py) has brought it there, in
        whichever instance runs it: None when no advance brings this value (then it is computed)
        or it did not come within ADVANCE_WAIT_S."""
        if not advanceable(entry) or not Advancer.brings(self.changes.announced(seq)):
            return None
        deadline = time.monotonic() + ADVANCE_WAIT_S
        pause = 0.002
        while time.monotonic() < deadline:
            stored = self.cache.get(key)
            if stored is not None and good(stored):
                return stored
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        return None

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
                        return self.recent.remember(key, hit(entry))
                    return self._compute_and_store(key, kind, query, compute)
                finally:
                    self.cache.release(lock)
            metrics.SINGLEFLIGHT_WAITS.inc()
            entry = self._wait_for_other(key, deadline, good)
            if entry is not None:
                return self.recent.remember(key, hit(entry))
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
        if not self.refresher.claim(key):
            return
        lock = self.cache.try_lock(key)
        if lock is None:  # another process is refreshing it
            self.refresher.release(key)
            return

        def refresh() -> None:
            try:
                # The refresh another process just finished may have released this lock.
                if self._good_or_none(key, _is_fresh) is None:
                    self._compute_and_store(key, kind, query, compute)
            except (DatabaseUnavailable, InvalidKpis) as error:
                log.warning("background refresh of %s failed: %s", key, error.__class__.__name__)
            except Exception:
                log.exception("background refresh of %s failed", key)
            finally:
                self.cache.release(lock)

        if not self.refresher.run(key, refresh):  # shutting down: leave it to another process
            self.cache.release(lock)

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
        seq, position, caught_up = self.cache.latest_change()
        self.db.observe_position(position)
        try:
            computed = compute(now)
        except DatabaseUnavailable as error:
            if not isinstance(error, DatabaseBusy | SchemaMissing | StatementTimeout):
                # The server itself, not one statement's own slowness (statement_timeout), a
                # full pool or a missing schema, none of which may mark every other window's
                # cached value as stale.
                self._db_unreachable = True
            raise
        finally:
            if probing:
                self._probe.release()
        self._db_unreachable = False
        return self.store_computed(key, kind, query, computed, now, seq, caught_up)

    def store_computed(
        self,
        key: str,
        kind: str,
        query: KpiQuery,
        computed: Computed,
        now: datetime,
        seq: int,
        caught_up: float | None = None,
    ) -> Served:
        """A computation's value, stored as including change batch `seq` (read before it ran)."""
        body = self.body_of(query, computed, now, caught_up)
        duration_ms, pending, state = computed[1], computed[3], computed[4]
        # Behind the applier: fresh only until about its next batch, whose value replaces it.
        entry = self.cache.put(key, kind, body, seq, ttl=self.pending_ttl if pending else None, state=state)
        if entry is None:
            # Another process computed the window later and stored it while this ran (two
            # computations overlapped: a lock lost in a failover, or expired): this value is
            # its requester's answer, but the newer stored one is what everyone else gets.
            return Served(body, "miss", time.time() + (self.pending_ttl if pending else self.cache.ttl), duration_ms)
        self.recent.remember(key, hit(entry))
        return Served(body, "miss", entry.fresh_until, duration_ms)

    def body_of(
        self, query: KpiQuery, computed: Computed, now: datetime, caught_up: float | None = None
    ) -> dict[str, Any]:
        """The response body of a computation at `now`."""
        data, duration_ms, answered_by, pending, _ = computed
        # Every write committed before this instant is in the numbers: the computation's start
        # when nothing was pending, else the last time an applier found the log empty (read
        # before the SQL ran, so that batch was committed before its snapshot; None: unknown).
        covered = now if pending == 0 else None
        if pending and caught_up is not None:
            covered = min(datetime.fromtimestamp(caught_up, UTC), now)
        meta = {
            "computed_at": format_instant(now),
            "cached": False,
            "stale": False,
            "duration_ms": round(duration_ms, 2),
            "window": query.describe(),
            "pending_changes": pending,
            "includes_commits_before": None if covered is None else format_instant(covered),
        }
        if answered_by is not None:  # a replica is configured: say which database answered
            meta["source"] = answered_by
        return {**data, "success": True, "message": None, "meta": meta}

    def changed(self, seq: int, changed: dict[str, Any]) -> None:
        """A batch was applied (the hub's listener heard it): the windows requested lately that it
        can change are refreshed in the background, each until its value includes the batch."""
        self.changes.heard(seq, changed)
        if self.advancer.heard(changed):
            return
        for key, kind, query in self.requested.changed_by(changed):
            self.refresh_changed(key, kind, query, seq)

    def refresh_changed(self, key: str, kind: str, query: KpiQuery, seq: int) -> None:
        """Compute a window again in the background until its value includes batch `seq`."""
        self._wanted[key] = max(self._wanted.get(key, 0), seq)
        claim = ("changed", key)
        if self.refresher.claim(claim):
            compute = self.compute_of(kind, query)
            self.refresher.run(claim, functools.partial(self._refresh_changed, key, kind, query, compute))

    def _refresh_changed(self, key: str, kind: str, query: KpiQuery, compute: Compute) -> None:
        done = 0
        while (wanted := self._wanted.get(key, 0)) > done:
            try:
                self._compute_once(key, kind, query, compute, lambda entry, want=wanted: entry.seq >= want)
            except (DatabaseUnavailable, InvalidKpis, TimeoutError) as error:
                log.warning("refresh of %s after a change failed: %s", key, error.__class__.__name__)
                return  # its next request computes it
            except Exception:
                log.exception("refresh of %s after a change failed", key)
                return
            done = wanted

    def close(self) -> None:
        self.targets.stop()
        self.advancer.stop()
        self.refresher.close()
