"""The streaming replica that KPI reads go to (DATABASE_READ_URL), while it keeps up.

Lag is measured in WAL positions, not with the replay timestamp: an idle primary writes
nothing, so `now() - pg_last_xact_replay_timestamp()` grows on a replica that has everything.
Positions of the primary become known two ways: the monitor thread of every process reads
the primary's (`pg_current_wal_lsn()`) every CHECK_EVERY_S, and the applier stores the one
after each batch it commits in Redis, which every computation reads before its SQL
(serving/service.py). The replica lags by the age of the oldest known position it has not replayed
(`pg_last_wal_replay_lsn()`); with nothing unreplayed its lag is 0, however old its last
transaction.

- A read goes to the replica while it is "ok", and first waits until the replica has replayed
  every position known when the read began: a value computed there includes every batch
  announced before it (the stream's "includes batch n" holds on a replica too) and every
  commit older than CHECK_EVERY_S.
- A position older than KPI_REPLICA_MAX_LAG_MS still not replayed makes the replica
  "lagging"; a failure to connect or answer makes it "down". Either way the read that found
  out, and every read after it, goes to the primary.
- The monitor puts it back to "ok" as soon as it answers and is within the bound again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TypeVar

import psycopg

from kpi_service.config import Settings
from kpi_service.db.connections import Database
from kpi_service.db.errors import DatabaseBusy, DatabaseUnavailable, SchemaMissing, StatementTimeout
from kpi_service.db.sql import REPLAY_POSITION

log = logging.getLogger(__name__)
T = TypeVar("T")

CHECK_EVERY_S = 0.25
# A replica that cannot hand out a connection this fast is not waited for: the primary answers.
CHECKOUT_TIMEOUT_S = 0.5
# How often a read waiting for the replica to catch up looks at its position again.
WAIT_STEP_S = 0.005


class Positions:
    """Positions of the primary's WAL that reads must include, and since when each is known."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Bounded: a replica down for long is "down" whatever the oldest entries say.
        self._unreplayed: deque[tuple[float, int]] = deque(maxlen=4096)
        self.latest = 0

    def observe(self, position: int) -> None:
        with self._lock:
            if position > self.latest:
                self.latest = position
                self._unreplayed.append((time.monotonic(), position))

    def lag_ms(self, replayed: int | None) -> float | None:
        """How long the oldest position beyond `replayed` has been known; None when there is
        none (caught up). A server not in recovery (None: promoted) has nothing to catch up."""
        with self._lock:
            while self._unreplayed and (replayed is None or self._unreplayed[0][1] <= replayed):
                self._unreplayed.popleft()
            return (time.monotonic() - self._unreplayed[0][0]) * 1000 if self._unreplayed else None


class Replica:
    def __init__(self, settings: Settings, primary: Database) -> None:
        assert settings.database_read_url is not None
        self.db = Database(
            settings,
            url=settings.database_read_url,
            application_name="kpi-service-read",
            pool_timeout=min(settings.db_pool_timeout, CHECKOUT_TIMEOUT_S),
        )
        self.primary = primary
        self.max_lag_ms = settings.replica_max_lag_ms
        self.positions = Positions()
        # "unknown" until the first check, then "ok", "lagging" or "down".
        self.state = "unknown"
        self.lag_ms = 0.0  # at the last check
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the monitor (in the process that serves: after gunicorn's fork)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kpi-replica", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.db.close()

    def observe(self, position: int) -> None:
        """A position of the primary's WAL that reads from now on must include."""
        self.positions.observe(position)

    def run(self, operation: str, read: Callable[[psycopg.Connection], T]) -> tuple[T] | None:
        """`read` on the replica once it has caught up; None when the primary must answer."""
        if self.state != "ok":
            return None
        try:
            with self.db.connection(operation, quiet=True) as conn:
                if not self._caught_up(conn):
                    self._set("lagging", f"more than {self.max_lag_ms} ms behind")
                    return None
                return (read(conn),)
        except (DatabaseBusy, SchemaMissing):
            return None  # a state of this read, not of the replica: the primary answers it
        except StatementTimeout:
            raise  # the statement's own slowness: it would be as slow on the primary
        except DatabaseUnavailable as error:
            self._set("down", type(error.__cause__ or error).__name__)
            return None

    def _caught_up(self, conn: psycopg.Connection) -> bool:
        """Wait until the replica has replayed every position known now (not those that become
        known meanwhile: a replica steadily a little behind would never be done); False once it
        lags."""
        target = self.positions.latest
        while True:
            replayed = conn.execute(REPLAY_POSITION).fetchone()["position"]
            lag = self.positions.lag_ms(replayed)
            if replayed is None or replayed >= target or lag is None:
                return True
            if lag > self.max_lag_ms:
                self.lag_ms = round(lag, 1)  # /readyz shows the lag that made it "lagging"
                return False
            time.sleep(WAIT_STEP_S)

    def check(self) -> None:
        """One look at both servers: the primary's position, then the replica's lag."""
        # The primary down: what the replica has is all there is.
        with contextlib.suppress(DatabaseUnavailable):
            self.positions.observe(self.primary.wal_position())
        try:
            with self.db.connection("replica", quiet=True) as conn:
                replayed = conn.execute(REPLAY_POSITION).fetchone()["position"]
        except DatabaseBusy:
            return  # every connection reading: it answers
        except DatabaseUnavailable as error:
            self._set("down", type(error.__cause__ or error).__name__)
            return
        lag = self.positions.lag_ms(replayed)
        self.lag_ms = round(lag or 0.0, 1)
        if self.positions.latest == 0:
            # The primary down since this process started: the replica is all there is.
            self._set("ok", "the primary's position is not known")
            return
        self._set("ok" if lag is None or lag <= self.max_lag_ms else "lagging", f"{self.lag_ms} ms behind")

    def _set(self, state: str, reason: str) -> None:
        with self._lock:
            previous, self.state = self.state, state
        if state == previous:
            return
        if state == "ok":
            log.info("KPI reads go to the replica (it was %s)", previous)
        else:
            log.warning("KPI reads go to the primary: the replica is %s (%s)", state, reason)

    def _run(self) -> None:
        while True:
            try:
                self.check()
            except Exception:
                log.exception("replica check failed")
            if self._stop.wait(CHECK_EVERY_S):
                return
