"""The one connection pool of the service, and the statements it runs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from importlib import resources
from typing import Any

import aiosql
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from kpi_service import metrics
from kpi_service.config import Settings

log = logging.getLogger(__name__)


def sql_text(name: str) -> str:
    """A file of sql/, read from the installed package (the checkout is not needed)."""
    return resources.files("kpi_service.sql").joinpath(name).read_text(encoding="utf-8")


queries = aiosql.from_str(sql_text("kpi.sql"), "psycopg")
# The only other statements the service sends: a read-write transaction (its sessions default
# to read-only) for the summaries' merge (sql/summary.sql).
COMPACTION = ("SET TRANSACTION READ WRITE", "SELECT kpi_compact() AS removed")


RECONNECT_TIMEOUT_S = 5.0
# Read-only, and no JIT: the KPI statement's estimates include the raw-row branch it rarely
# runs, which makes PostgreSQL spend more time compiling it (~0.6 s) than running it (ms).
SESSION_OPTIONS = "-c default_transaction_read_only=on -c jit=off"


class DatabaseUnavailable(Exception):
    """PostgreSQL could not answer in time: down, unreachable, pool exhausted or timed out."""


class Database:
    """Owns the pool. Connections are read-only, bounded in time, and checked on checkout so
    that a restarted server is noticed on the first request after it instead of failing one."""

    def __init__(self, settings: Settings) -> None:
        self._lock = threading.Lock()
        self._opened = False
        self.pool = ConnectionPool(
            settings.database_url,
            min_size=1,
            max_size=settings.db_pool_size,
            timeout=settings.db_pool_timeout,
            open=False,
            check=ConnectionPool.check_connection,
            # psycopg_pool retries a lost connection with a doubling delay (1, 2, 4, 8 ... s) and
            # no cap until reconnect_timeout (5 min by default), so after an outage of a minute
            # the next attempt could be a minute after the server is back. Giving up after a few
            # seconds ends that series; the next request then starts a new one at once.
            reconnect_timeout=RECONNECT_TIMEOUT_S,
            name="kpi",
            kwargs={
                "row_factory": dict_row,
                "connect_timeout": settings.db_connect_timeout,
                # statement_timeout is the server's: a server that hangs or a network that drops
                # packets is noticed by TCP keepalives and the user timeout instead.
                "keepalives": 1,
                "keepalives_idle": 5,
                "keepalives_interval": 2,
                "keepalives_count": 2,
                "tcp_user_timeout": 10_000,
                "application_name": "kpi-service",
                "options": f"{SESSION_OPTIONS} -c statement_timeout={settings.statement_timeout_ms}",
            },
        )

    def _ensure_open(self) -> None:
        # Opened on first use, not in create_app: the pool's worker threads must start in the
        # process that serves (after gunicorn forks), and a database that is down at start must
        # not stop the service from starting.
        if not self._opened:
            with self._lock:
                if not self._opened:
                    self.pool.open(wait=False)
                    self._opened = True

    def kpi_rows(
        self,
        windows: Sequence[tuple[datetime | None, datetime | None, datetime]],
        aged_days: int,
    ) -> tuple[list[dict[str, Any]], float]:
        """One execution of sql/kpi.sql: a row per (start, end, as_of) window, and its duration in ms."""
        self._ensure_open()
        try:
            with self.pool.connection() as conn:
                started = time.perf_counter()
                rows = list(
                    queries.kpi_windows(
                        conn,
                        starts=[w[0] for w in windows],
                        ends=[w[1] for w in windows],
                        as_ofs=[w[2] for w in windows],
                        aged_days=aged_days,
                    )
                )
                return rows, (time.perf_counter() - started) * 1000
        except psycopg.Error as error:
            metrics.DATABASE_ERRORS.labels(operation="query").inc()
            log.warning("database unavailable: %s", error.__class__.__name__)
            raise DatabaseUnavailable(str(error)) from error

    def compact_summaries(self) -> int | None:
        """Merge the rows the triggers added to kpi_sums into one per bucket (sql/summary.sql):
        the number of rows removed, None when it failed (logged; the sums stay exact, and a
        later call catches up). kpi_compact runs as its owner and writes only kpi_sums, so the
        service's read-only role needs nothing more than the right to call it."""
        self._ensure_open()
        try:
            with self.pool.connection() as conn, conn.transaction():
                conn.execute(COMPACTION[0])
                return conn.execute(COMPACTION[1]).fetchone()["removed"]
        except psycopg.Error as error:
            metrics.DATABASE_ERRORS.labels(operation="compact").inc()
            log.warning("summary compaction failed: %s: %s", error.__class__.__name__, error)
            return None

    def ping(self, timeout: float) -> bool:
        """`SELECT 1` through the pool, waiting at most `timeout` seconds for a connection."""
        self._ensure_open()
        try:
            with self.pool.connection(timeout=timeout) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error as error:
            metrics.DATABASE_ERRORS.labels(operation="ping").inc()
            log.warning("database ping failed: %s", error.__class__.__name__)
            return False

    def close(self) -> None:
        self.pool.close()


def apply_schema(conninfo: str) -> None:
    """Create the tables and indexes of sql/schema.sql, then the summaries of sql/summary.sql,
    built from the rows already there (idempotent; one transaction, so writers wait for it)."""
    with psycopg.connect(conninfo, autocommit=True) as conn, conn.transaction():
        conn.execute(sql_text("schema.sql"))
        conn.execute(sql_text("summary.sql"))
