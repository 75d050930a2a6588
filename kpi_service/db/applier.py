"""The summaries' applier: turns the change log into current sums, in the background.

The application's writes only append their rows' images to kpi_changes (sql/schema/summary.sql); this
loop, in every instance, calls kpi_apply_changes() every KPI_APPLY_INTERVAL_MS, and across instances
once per interval (Cache.applier_turn; each call's batch costs a refresh of every polled window it
changes). One applies at a time (the function's try-lock); the others wait for the next tick.
A committed change therefore reaches the summaries within about one interval plus one apply
(docs/design.md, "Freshness"). While a backlog remains (after downtime: a full batch was
taken) it goes on without waiting. Through Database.mode it notices within MODE_EVERY_S when
the summaries appear or disappear (init-db run later, a trigger disabled), so that
Database.kpi_rows picks the right statement.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kpi_service.db.connections import Database
from kpi_service.db.decoding import Decoder, Primary
from kpi_service.db.errors import DatabaseUnavailable, LockNotGranted, SalesTablesChanged, StatementTimeout
from kpi_service.db.sql import APPLY_BATCH
from kpi_service.ops import metrics

log = logging.getLogger(__name__)
# After every instance's mode lookup has found the summaries stopped: their build truncates them.
REBUILD_MARGIN_S = 5.0

MIN_BATCH = 500
# How long a paced batch lasts: its rest (sql/schema/summary.sql, "Pacing") is at most 5 s, so a
# batch of more than half a second would take more than a tenth of the time.
PACED_BATCH_S = 0.25


def paced_batch(taken: int, seconds: float) -> int:
    """The batch that lasts about PACED_BATCH_S at the rate of the last one."""
    return int(min(APPLY_BATCH, max(MIN_BATCH, taken / max(seconds, 1e-3) * PACED_BATCH_S)))


def audited(found: dict[str, Any]) -> None:
    """What a slice of the audit found (sql/schema/summary.sql, kpi_audit), counted and logged."""
    if "skipped" in found:
        log.warning("audit: the day from %s took longer than a batch may and was skipped", found["skipped"])
        return
    if found.get("pass_ended"):
        metrics.AUDIT_PASS_END.set(time.time())
        log.info("audit: a pass over the summaries ended, %s rows repaired", found["repairs"])
        return
    metrics.AUDIT_SLICES.inc()
    for part, rows in found["found"].items():
        if rows:
            metrics.AUDIT_REPAIRS.labels(part=part).inc(rows)
    if found["repairs"]:
        differ = {part: rows for part, rows in found["found"].items() if rows}
        log.error(
            "audit: the summaries of the day from %s differed from the rows, repaired: %s", found["slice"], differ
        )


def pooled(db: Database) -> Primary:
    """The decoder's primary (db/decoding.py): a connection of the service's pool (read-only by
    default) for each statement, in a read-write transaction."""

    def run(statement: str, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
        with db.connection("decode", quiet=True) as conn, conn.transaction():
            conn.execute("SET TRANSACTION READ WRITE")
            return conn.execute(statement, params).fetchone()

    return run


class Applier:
    def __init__(
        self,
        db: Database,
        interval: float,
        busy_share: float = 1.0,
        on_changed: Callable[[dict[str, Any]], None] | None = None,
        on_caught_up: Callable[[float], None] | None = None,
        caught_up_at: Callable[[], float | None] | None = None,
        turn: Callable[[float], bool] | None = None,
        aged_days: int = 60,
        decoder: Decoder | None = None,
    ) -> None:
        self.db = db
        self.interval = interval
        self.busy_share = busy_share  # KPI_APPLY_BUSY_PERCENT: the pacing of sql/schema/summary.sql
        self.on_changed = on_changed  # told what each batch changed, after its commit (live updates)
        # Told when a call found the log empty (or emptied it), and asked when one last did,
        # whichever instance's applier that was (Redis): the applier's lag, for the metrics.
        self.on_caught_up = on_caught_up
        self.caught_up_at = caught_up_at
        # Asked before each tick's call whether it is this instance's turn (Redis: one call per
        # interval across instances); not asked while a backlog is worked off.
        self.turn = turn
        self.aged_days = aged_days  # KPI_AGED_DAYS: the summaries' fast path, when it builds them
        # KPI_CAPTURE=decoding: moves the slot's changes into the log before each tick's batch
        # (db/decoding.py), in every instance, the applier's lock taking turns.
        self.decoder = decoder
        # Since when the summaries have been found stopped (raw, with a change log): built anew
        # once every instance's mode lookup has noticed, so that no read waits on the build.
        self._unbuilt_since: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        # Halved after a batch ran into the statement timeout, doubled back after a success: a
        # backlog is worked off in what fits, instead of retrying a batch that cannot.
        self.batch = APPLY_BATCH

    def start(self) -> None:
        """Start the loop in a daemon thread (nothing when the interval is 0: applied elsewhere)."""
        if self.interval > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kpi-applier", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.decoder is not None:
            self.decoder.close()

    def run_forever(self) -> None:
        """The loop in the calling thread, until stop() (`kpi-service apply`)."""
        self._run()

    def apply_once(self) -> int | None:
        """One call of the applier: log rows applied, None when another session is applying or
        the database failed (logged once per outage; the next tick tries again)."""
        batch = self.batch
        try:
            # Before the batch's snapshot: every write committed before it is in that snapshot.
            began = time.time()
            started = time.perf_counter()
            taken = self.db.apply_changes(
                batch, busy_share=self.busy_share, on_changed=self.on_changed, on_audited=audited
            )
        except DatabaseUnavailable as error:
            if isinstance(error, StatementTimeout):
                self.batch = max(MIN_BATCH, self.batch // 2)
            self._failed(error)
            return None
        if self._failing:
            log.info("summaries applied again")
        self._failing = False
        elapsed = time.perf_counter() - started
        if taken and self.busy_share < 1:
            self.batch = paced_batch(taken, elapsed)
        elif taken is not None:
            self.batch = min(APPLY_BATCH, self.batch * 2)
        if taken:
            metrics.CHANGES_APPLIED.inc(taken)
            metrics.APPLY_DURATION.observe(elapsed)
        if taken is not None:
            self._observe_lag(began, caught_up=taken < batch)
        return taken

    def _observe_lag(self, began: float, *, caught_up: bool) -> None:
        """A batch smaller than asked for took every row there was: the log was empty at its
        snapshot. Otherwise rows remain, committed after the last time it was found empty."""
        if caught_up:
            if self.on_caught_up is not None:
                self.on_caught_up(began)
            metrics.APPLIER_LAG.set(0)
            return
        since = self.caught_up_at() if self.caught_up_at is not None else None
        if since is not None:
            metrics.APPLIER_LAG.set(max(0.0, time.time() - since))

    def _rebuild_when_noticed(self) -> None:
        """The summaries built anew where they stopped (sql/schema/summary.sql, kpi_rebuild_if_needed),
        once every instance reads the rows instead (Database.mode_every), and again at that pace."""
        now = time.monotonic()
        if self._unbuilt_since is None:
            self._unbuilt_since = now
            return
        if now - self._unbuilt_since < self.db.mode_every + REBUILD_MARGIN_S:
            return
        self._unbuilt_since = now
        try:
            if self.db.rebuild_if_needed(self.aged_days):
                log.info("summaries built anew from the rows")
                self.db.mode(refresh=True, quiet=True, primary=True)
        except (DatabaseUnavailable, LockNotGranted) as error:
            log.warning("summaries not built anew: %s", error)

    def _failed(self, error: DatabaseUnavailable) -> None:
        if not self._failing:
            log.warning("summaries not applied: %s", error)
        self._failing = True

    def _run(self) -> None:
        backlog = False
        while not self._stop.is_set():
            if self.decoder is not None:
                self.decoder.step()
            try:
                mode = self.db.mode(quiet=True, primary=True)
            except SalesTablesChanged:
                mode = "raw"  # no KPI can be read; the log is still emptied (and the summaries stopped)
            except DatabaseUnavailable as error:
                self._failed(error)
                mode = None
            if mode == "raw" and self.db.logged:
                self._rebuild_when_noticed()
            else:
                self._unbuilt_since = None
            batch = self.batch
            taken = None
            # In the raw mode too, where there is a change log: the applier empties it (it is of
            # no use until init-db builds the summaries, and must not grow meanwhile).
            applying = mode == "summaries" or (mode == "raw" and self.db.logged)
            if applying and (backlog or self.turn is None or self.turn(self.interval)):
                taken = self.apply_once()
            # A full batch, of the log or of the slot: more is waiting, go on at once.
            backlog = taken == batch or (self.decoder is not None and self.decoder.full)
            if not backlog:
                self._stop.wait(self.interval)
