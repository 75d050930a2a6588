"""Keeping the windows people read fresh at a cost that follows the changes, not the windows
(docs/design.md, "Freshness"): after each batch of the summaries, one process across all
instances brings every watched window's stored value up to it by adding the batch's deltas
(serving/advance.py), with a fixed number of statements whatever the number of windows:

- one probe per aged_days of the watched windows that hold the present (usually one): the
  summaries' batch number in its snapshot, the change log's pending rows, and aged_inventory
  now, which is the same for every window whose as-of instant is now;
- one kpi_metrics_of for every window's sums (arithmetic, no table read);
- one window computed in full, the one checked longest ago, and compared with its advanced
  value: every watched window is checked in turn, and a mismatch is counted
  (kpi_refresh_mismatches_total), logged, and repaired by the computed value.

A window the deltas cannot bring forward (read from the rows: edges off the 15-minute grid; a
batch not heard, or announced without deltas; a window that ended since its value was
computed) is computed by a statement of its own, as before. When a poll finds a watched value's
TTL ended, a tick does the same for all of them with no batch (at most once per TTL across
instances): aged_inventory "now" follows the clock, and a window no batch changes stays fresh,
for the same statements. The watched windows are shared
in Redis (Cache.watch): one process advances each batch (Cache.claim), and the others' pollers
and streams wait for its values instead of computing them.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Protocol

from kpi_service.db.connections import Database
from kpi_service.db.errors import DatabaseUnavailable
from kpi_service.ops import metrics
from kpi_service.serving.advance import Span, Sums, advanced, decode, encode, metrics_arguments, microseconds_of
from kpi_service.serving.cache import Cache, Entry
from kpi_service.serving.changes import affected
from kpi_service.serving.errors import InvalidKpis
from kpi_service.serving.freshness import Changes
from kpi_service.serving.query import KpiQuery, windows_of
from kpi_service.serving.responses import Served, data_of
from kpi_service.serving.windows import Window

log = logging.getLogger(__name__)

# How long a poller or stream waits for the advance of a batch before computing the value itself.
ADVANCE_WAIT_S = 1.0


def describe(kind: str, query: KpiQuery) -> str:
    """A watched window as JSON: enough for any instance to compute it (Cache.watch)."""
    return json.dumps({"kind": kind, **query.describe()}, sort_keys=True, separators=(",", ":"))


@functools.lru_cache(maxsize=4096)
def described(text: str) -> tuple[str, KpiQuery] | None:
    try:
        found = json.loads(text)
        query = KpiQuery(
            date_from=None if found["from"] is None else date.fromisoformat(found["from"]),
            date_to=None if found["to"] is None else date.fromisoformat(found["to"]),
            tz=found["tz"],
            aged_days=int(found["aged_days"]),
            interval=found.get("interval"),
            compare=found.get("compare"),
        )
        return found["kind"], query
    except (ValueError, KeyError, TypeError):
        return None


def holds_now(plan: _Plan, now: datetime) -> bool:
    """Whether a span of the window holds the present (its aged_inventory is at "now")."""
    return any(window.end is None or window.end > now for window, _ in plan.spans)


def advanceable(entry: Entry | None) -> bool:
    state = entry.state if entry is not None else None
    return state is not None and state.get("batch") is not None and all(s is not None for s in state["sums"])


class Host(Protocol):
    """What the advance needs of the service (serving/service.py, KpiService)."""

    cache: Cache
    db: Database
    changes: Changes

    def kpi_rows(
        self, endpoint: str, spans: list[tuple[datetime | None, datetime | None, datetime]], aged_days: int
    ) -> tuple[list[dict[str, Any]], float, str | None, int, list[dict[str, Any]]]: ...

    def compute_of(self, kind: str, query: KpiQuery) -> Callable[[datetime], tuple[Any, ...]]: ...

    def store_computed(
        self, key: str, kind: str, query: KpiQuery, computed: Any, now: datetime, seq: int
    ) -> Served: ...

    def body_of(self, query: KpiQuery, computed: Any, now: datetime) -> dict[str, Any]: ...

    def refresh_changed(self, key: str, kind: str, query: KpiQuery, seq: int) -> None: ...


@dataclass
class _Plan:
    key: str
    kind: str
    query: KpiQuery
    entry: Entry
    sums: list[Sums] | None = None

    @functools.cached_property
    def spans(self) -> list[tuple[Window, tuple[date, date] | None]]:
        """Its windows (query.windows_of), built once per advance, not at each step."""
        return windows_of(self.kind, self.query)


class Advancer:
    def __init__(self, service: Host) -> None:
        self.service = service
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._tick = False  # a tick is wanted (expired)
        self._pending = False  # an advance is wanted: done even when stopping (close waits for it)
        self._busy = False  # one is running

    def heard(self, changed: dict[str, Any]) -> bool:
        """A batch was announced: True when its deltas bring the watched windows forward (in this
        process, if it is the one to advance it), so that they need no statement each."""
        if not self.brings(changed):
            return False
        if self.service.cache.claim(f"advance:{changed['batch']}", 60):
            self._wanted(tick=False)
        return True

    def expired(self) -> None:
        """A watched value's TTL ended (a poll found it so): all of them are moved on at once, by
        one process across instances, instead of one statement each (a tick)."""
        if self.service.cache.claim("tick", self.service.cache.ttl):
            self._wanted(tick=True)

    @staticmethod
    def brings(changed: dict[str, Any] | None) -> bool:
        """Whether a batch's announcement carries deltas the watched windows can be advanced by."""
        return (
            changed is not None
            and not changed.get("all")
            and bool(changed.get("caught_up"))
            and isinstance(changed.get("deltas"), dict)
            and isinstance(changed.get("batch"), int)
        )

    def _wanted(self, *, tick: bool) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            self._tick = self._tick or tick
            self._pending = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kpi-advance", daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                tick, self._tick = self._tick, False
                pending, self._pending = self._pending, False
                self._busy = pending
            if pending:
                try:
                    self.advance(tick=tick)
                except (DatabaseUnavailable, InvalidKpis) as error:
                    log.warning("advancing the watched windows failed: %s", error.__class__.__name__)
                except Exception:
                    log.exception("advancing the watched windows failed")
                with self._lock:
                    self._busy = False
            if self._stop.is_set():
                return

    @property
    def idle(self) -> bool:
        """No advance running or wanted in this process (its check done too)."""
        with self._lock:
            return not (self._pending or self._busy)

    def stop(self) -> None:
        with self._lock:
            self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    def advance(self, *, tick: bool = False) -> int:
        """Bring every watched window's value up to the summaries' latest batch; the number of
        windows advanced by deltas."""
        service = self.service
        cache = service.cache
        watched = cache.watched()
        keys = list(watched)
        plans, fallback = [], []
        for key, entry in zip(keys, cache.get_many(keys), strict=True):
            found = described(watched[key])
            if entry is None or found is None:
                continue  # its next request computes it
            plan = _Plan(key, *found, entry)
            (plans if advanceable(entry) else fallback).append(plan)
        if not plans and not fallback:
            return 0
        now = datetime.now(UTC)
        probe = self._probe(plans, now)
        if probe is None:
            return 0
        batch, aged_now, pending, answered_by, duration_ms = probe
        announced = service.changes.numbered(batch)
        if announced is None and not tick:
            return 0  # not heard yet: its announcement brings another advance
        # (A tick before any batch was heard moves on the values already at the probe's batch.)
        seq, latest = announced or (0, {"all": True})
        ready, relabelled = [], []
        for plan in plans:
            state = plan.entry.state
            assert state is not None
            if state["batch"] >= batch and plan.entry.seq < seq:
                # Computed after the batch was applied, before it was announced: it holds the
                # batch, and now says so (whoever waits for the batch takes it as it is).
                relabelled.append((plan.key, plan.kind, plan.entry.body, seq, state))
                continue
            batches = service.changes.numbered_between(state["batch"], batch)
            # A batch moves on the windows it changes; a tick moves on all of them, "now" and their
            # freshness (a window no batch changes would otherwise be computed at its TTL).
            changed = batches is None or any(affected(plan.query, c, now) for c in batches)
            if state["batch"] > batch or not (tick or changed):
                continue
            plan.sums = None if batches is None else self._advanced(plan, batches, aged_now, now)
            (ready if plan.sums is not None else fallback).append(plan)
        if ready:
            started = time.perf_counter()
            rows = service.db.metrics_of_sums(metrics_arguments([s for plan in ready for s in plan.sums or []]))
            metrics.KPI_STATEMENTS.labels(endpoint="advance").inc()
            duration_ms += (time.perf_counter() - started) * 1000
            rows_left = iter(rows)
            values = []
            for plan in ready:
                data, state = self._value(plan, [next(rows_left) for _ in plan.sums or []], batch, now)
                body = plan.entry.body
                # The same numbers keep the same body (its ETag, its computed_at), fresh for longer.
                if data != {name: body.get(name) for name in data}:
                    body = service.body_of(plan.query, (data, duration_ms, answered_by, pending, state), now)
                values.append((plan.key, plan.kind, body, max(seq, plan.entry.seq), state))
            service.cache.put_many(relabelled + values)
            metrics.REFRESH_ADVANCED.inc(len(ready))
            checked = min(ready, key=lambda plan: plan.entry.state["verified"])  # type: ignore[index]
            self._verify(checked, max(seq, checked.entry.seq))
        else:
            service.cache.put_many(relabelled)
        # The others, by a statement each: after a batch, those it changes; at a tick, those expired.
        for plan in fallback:
            if (not plan.entry.fresh) if tick else affected(plan.query, latest, now):
                service.refresh_changed(plan.key, plan.kind, plan.query, max(seq, plan.entry.seq + 1))
        return len(ready)

    def _probe(self, plans: list[_Plan], now: datetime) -> tuple[int, dict[int, int], int, str | None, float] | None:
        """The probes: one statement per aged_days of a window holding the present (or one at
        any aged_days). None when they saw different batches, or no summaries."""
        present = {plan.query.aged_days for plan in plans if holds_now(plan, now)}
        days = sorted(present) or [plans[0].query.aged_days if plans else 60]
        batches, aged_now, pending, answered_by, duration_ms = set(), {}, 0, None, 0.0
        for aged_days in days:
            rows, ms, answered_by, count, parts = self.service.kpi_rows("advance", [(now, now, now)], aged_days)
            batches.add(parts[0].get("batch"))
            aged_now[aged_days] = rows[0]["aged_inventory"]
            pending = max(pending, count)
            duration_ms += ms
        if len(batches) != 1 or None in batches:
            return None
        return batches.pop(), aged_now, pending, answered_by, duration_ms

    def _advanced(
        self, plan: _Plan, batches: list[dict[str, Any]], aged_now: dict[int, int], now: datetime
    ) -> list[Sums] | None:
        state = plan.entry.state
        assert state is not None
        deltas = [c["deltas"] for c in batches]
        result = []
        for i, (window, _) in enumerate(plan.spans):
            span = Span(microseconds_of(window.start), microseconds_of(window.end), plan.query.aged_days)
            if not span.aligned or i >= len(state["sums"]):
                return None
            sums = decode(state["sums"][i])
            if window.end is None or window.end > now:
                result.append((*advanced(sums, span, None, deltas)[:11], Decimal(aged_now[plan.query.aged_days])))
            elif state["as_ofs"][i] == span.hi:
                result.append(advanced(sums, span, span.hi, deltas))
            else:
                return None  # it ended since: its aged_inventory is now at its end
        return result

    def _value(
        self, plan: _Plan, rows: list[dict[str, Any]], batch: int, now: datetime
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The body's data of an advanced window (its metrics, or its series), and its new state."""
        spans = plan.spans
        state = plan.entry.state
        assert state is not None and plan.sums is not None
        return data_of(plan.kind, plan.query, spans, rows), {
            "batch": batch,
            "sums": [encode(s) for s in plan.sums],
            "as_ofs": [microseconds_of(window.as_of(now)) for window, _ in spans],
            "verified": state["verified"],
        }

    def _verify(self, plan: _Plan, seq: int) -> None:
        """The window checked longest ago, computed in full and compared with its advanced sums."""
        service = self.service
        now = datetime.now(UTC)
        try:
            computed = service.compute_of(plan.kind, plan.query)(now)
        except (DatabaseUnavailable, InvalidKpis) as error:
            log.warning("checking an advanced window failed: %s", error.__class__.__name__)
            return
        state = computed[4]
        held = service.cache.get(plan.key)
        if state is None or held is None or held.state is None or held.state["batch"] != state["batch"]:
            return  # another batch came between: compared next time round
        metrics.REFRESH_VERIFIED.inc()
        for i, (window, _) in enumerate(plan.spans):
            kept, fresh = decode(held.state["sums"][i]), decode(state["sums"][i])
            # aged_inventory "now" is taken at two instants: compared only for a span that ended.
            compared = slice(None) if window.end is not None and window.end <= now else slice(0, 11)
            if kept[compared] != fresh[compared]:
                metrics.REFRESH_MISMATCHES.inc()
                log.error(
                    "an advanced window differed from its computation, repaired: %s %s: %s != %s",
                    plan.kind,
                    plan.query.describe(),
                    kept,
                    fresh,
                )
                service.store_computed(plan.key, plan.kind, plan.query, computed, now, seq)
                return
        # The same: the value stays (its ETag too), checked now.
        service.cache.put(plan.key, plan.kind, held.body, held.seq, state={**held.state, "verified": now.timestamp()})
