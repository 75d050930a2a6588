"""The SQL the service runs: the files of sql/ (shipped inside the package as kpi_service.sql, so
the checkout is not needed), the named statements of sql/runtime/kpi.sql, and the few constant
statements of the pool's maintenance."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime
from importlib import resources
from typing import Any, TypeVar

import aiosql
import psycopg
from psycopg.rows import tuple_row

from kpi_service.db.errors import LockNotGranted


def sql_text(name: str) -> str:
    """A file of sql/, read from the installed package (the checkout is not needed)."""
    return resources.files("kpi_service.sql").joinpath(name).read_text(encoding="utf-8")


queries = aiosql.from_str(sql_text("runtime/kpi.sql"), "psycopg")
# Every statement names the service's objects with their schema, kpi (sql/schema/schema.sql), and
# passes its arguments typed: no function or table of another schema on the session's search
# path can be chosen instead, and the sessions need no search path of their own. (The sales
# tables, which the application's own sessions find on theirs, are the only names left bare.)
# The only writes the service makes: its applier, in a read-write transaction (its sessions
# default to read-only), through a function that runs as the summaries' owner.
# Its own statement timeout: a batch after downtime may take longer than a request may wait.
# One snapshot for the log rows it takes and the rows it reads (sql/schema/summary.sql).
APPLY = (
    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ WRITE",
    "SET LOCAL statement_timeout = '60s'",
    "SELECT kpi.kpi_apply_changes(%s::integer, %s::double precision) AS taken",
)
# What the batch changed (sql/schema/summary.sql leaves it in a setting of its transaction).
# And what the audit found, when it ran in the applier's transaction (kpi.audit_seconds set).
CHANGED = "SELECT current_setting('kpi.changed', true) AS changed, current_setting('kpi.audited', true) AS audited"
# The mode, "summaries" or "raw" (sql/schema/schema.sql, kpi_source(): the name /readyz shows
# it under; meta.source is another thing, which database answered), and the version of the schema
# (kpi_schema: no row, or no table before schema version 2).
MODE = "SELECT kpi.kpi_source() AS mode, version, oldest_service FROM kpi.kpi_schema"
# A schema of a version before 7 had its objects in the sales tables' schema, which the service's
# sessions do not search: only its version is read there (this service reads none of them), from
# its kpi_schema ({}: that table, with its schema), and before version 2 it had none, only
# kpi_source().
OLD_LAYOUT_SCHEMA = (
    "SELECT n.nspname AS schema FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.relname = 'kpi_schema' AND c.relkind = 'r' AND n.nspname <> 'kpi' LIMIT 1"
)
OLD_LAYOUT_MODE = "SELECT NULL AS mode, version, oldest_service FROM {}"
LEGACY_SOURCE = "SELECT FROM pg_proc WHERE proname = 'kpi_source' LIMIT 1"
# Whether the sales tables still have every column the KPIs read, and whether there is a change
# log (the summaries installed): looked up with the mode, on a schema this service reads.
# And whether the changes come from a slot (the decoding mode's publication, sql/schema/capture.sql:
# a catalog row, there whatever version made the schema).
SALES_TABLES = (
    "SELECT kpi.kpi_missing_columns() AS missing, to_regclass('kpi.kpi_changes') IS NOT NULL AS logged,"
    " EXISTS (SELECT FROM pg_publication p WHERE p.pubname = 'kpi'"
    " AND obj_description(p.oid, 'pg_publication') = 'kpi-service: made by kpi-service init-db') AS decoding"
)
PENDING = "SELECT kpi.kpi_pending_changes() AS pending"
AUDIT_STATE = "SELECT last_pass_at, last_repairs, repairs FROM kpi.kpi_audit_state"
# The summaries built anew where they stopped (a TRUNCATE; sql/schema/summary.sql), by the applier,
# with no statement timeout: at ten million listings the build takes many minutes.
REBUILD = ("SELECT kpi.kpi_rebuild_if_needed(%s::integer)", "SET LOCAL statement_timeout = 0")
# Which database this is (db/identity.py, scope_of): pg_control_system() is PUBLIC's to run by
# default, and a physical standby has its primary's system identifier.
IDENTITY = "SELECT system_identifier::text AS system_identifier, current_database() AS name FROM pg_control_system()"
# Positions in the WAL as byte offsets, comparable across a primary and its streaming replicas
# (replica.py): where the primary has written to, and what a replica has replayed (NULL when
# the server is not in recovery).
WAL_POSITION = "SELECT (pg_current_wal_lsn() - '0/0')::bigint AS position"
REPLAY_POSITION = "SELECT (pg_last_wal_replay_lsn() - '0/0')::bigint AS position"
APPLY_BATCH = 50_000
# How long a caller that must apply or build waits for a running applier's turn to end.
APPLIER_WAIT_S = 60.0
T = TypeVar("T")


def kpi_statement_rows(
    conn: psycopg.Connection,
    mode: str,
    windows: Sequence[tuple[datetime | None, datetime | None, datetime]],
    aged_days: int,
) -> list[dict[str, Any]]:
    """sql/runtime/kpi.sql on a database whose KPIs come from `mode` ("summaries" or "raw"): the
    statement and parameters of every cache miss, which the benches time as they are."""
    return [metrics_of(row) for row in kpi_statement_parts(conn, mode, windows, aged_days)]


def kpi_statement_parts(
    conn: psycopg.Connection,
    mode: str,
    windows: Sequence[tuple[datetime | None, datetime | None, datetime]],
    aged_days: int,
) -> list[dict[str, Any]]:
    """kpi_statement_rows' rows as the statement gives them: with the summaries, each also holds
    the sums its KPIs divide and the summaries' batch number (serving/advance.py)."""
    statement = queries.kpi_windows if mode == "summaries" else queries.kpi_windows_raw
    return windows_rows(statement, conn, windows, aged_days)


# The ten KPIs of a row of sql/runtime/kpi.sql, in its order.
KPI_NAMES = (
    "total_listings",
    "average_price",
    "total_value",
    "scoring_rate",
    "average_score",
    "aged_inventory",
    "average_profit_per_unit",
    "lead_to_purchase_time",
    "conversion_rate",
    "active_buyers",
)


def metrics_of(row: dict[str, Any]) -> dict[str, Any]:
    return {name: row[name] for name in KPI_NAMES}


def windows_rows(
    statement: Callable[..., Any],
    conn: psycopg.Connection,
    windows: Sequence[tuple[datetime | None, datetime | None, datetime]],
    aged_days: int,
) -> list[dict[str, Any]]:
    """An aiosql statement of kpi.sql's form (windows' starts, ends, as_ofs, aged_days) run on `windows`."""
    return list(
        statement(
            conn,
            starts=[w[0] for w in windows],
            ends=[w[1] for w in windows],
            as_ofs=[w[2] for w in windows],
            aged_days=aged_days,
        )
    )


def waiting_for_the_applier(attempt: Callable[[], T | None], timeout: float = APPLIER_WAIT_S) -> T:
    """attempt() (a transaction that takes the summaries' applier lock) again until it gets its
    turn, that is, answers other than None; each try is a new transaction, with a snapshot taken
    after the holder's commit (sql/schema/summary.sql, kpi_applier_lock). LockNotGranted after
    `timeout` seconds of tries."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while (value := attempt()) is None:
        if time.monotonic() > deadline:
            raise LockNotGranted(f"another applier held the summaries' lock for {timeout:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    return value


def in_applier_turn(conn: psycopg.Connection, statement: str, params: Sequence[Any] = (), *setup: str) -> Any:
    """The statement (kpi_apply_changes, kpi_build) in a REPEATABLE READ transaction of its own
    that holds the applier lock, waiting for its turn (kpi_apply_changes answers NULL while another
    has it, kpi_build raises lock_not_available; a deadlock or a serialization failure is tried
    again as well), after the
    `setup` statements: the first column of its row."""

    def attempt() -> Any:
        try:
            with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ WRITE")
                for line in setup:
                    cur.execute(line)
                return cur.execute(statement, params).fetchone()[0]
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
            # (A deadlock: with a reader of the tables the rebuild locks, which goes on; a
            # serialization failure: another applier's commit met this snapshot.)
            return None

    return waiting_for_the_applier(attempt)


def in_one_snapshot(conn: psycopg.Connection, statement: str, params: Sequence[Any] = ()) -> None:
    """The statement in a REPEATABLE READ transaction of its own: the summaries' build, rebuild
    and applier read the change log and the rows it names from one snapshot (sql/schema/summary.sql)."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        conn.execute(statement, params)
