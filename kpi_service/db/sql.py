"""The SQL the service runs: the files of sql/ (shipped inside the package as kpi_service.sql, so
the checkout is not needed), the named statements of sql/runtime/kpi.sql, and the few constant
statements of the pool's maintenance."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from importlib import resources
from typing import Any

import aiosql
import psycopg


def sql_text(name: str) -> str:
    """A file of sql/, read from the installed package (the checkout is not needed)."""
    return resources.files("kpi_service.sql").joinpath(name).read_text(encoding="utf-8")


queries = aiosql.from_str(sql_text("runtime/kpi.sql"), "psycopg")
# The only writes the service makes: its applier, in a read-write transaction (its sessions
# default to read-only), through a function that runs as the summaries' owner.
# Its own statement timeout: a batch after downtime may take longer than a request may wait.
# One snapshot for the log rows it takes and the rows it reads (sql/schema/summary.sql).
APPLY = (
    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ WRITE",
    "SET LOCAL statement_timeout = '60s'",
    "SELECT kpi_apply_changes(%s, %s) AS taken",
)
# What the batch changed (sql/schema/summary.sql leaves it in a setting of its transaction).
CHANGED = "SELECT current_setting('kpi.changed', true) AS changed"
APPLIER_LOCK = "SELECT kpi_applier_session_lock(%s)"
# The mode, "summaries" or "raw" (sql/schema/schema.sql, kpi_source(): the name /readyz shows
# it under; meta.source is another thing, which database answered), and the version of the schema
# (kpi_schema: no row, or no table before schema version 2).
MODE = "SELECT kpi_source() AS mode, version, oldest_service FROM kpi_schema"
LEGACY_MODE = "SELECT kpi_source() AS mode"
PENDING = "SELECT kpi_pending_changes() AS pending"
# Which database this is (serving/keys.py, scope_of): pg_control_system() is PUBLIC's to run by
# default, and a physical standby has its primary's system identifier.
IDENTITY = "SELECT system_identifier::text AS system_identifier, current_database() AS name FROM pg_control_system()"
# Positions in the WAL as byte offsets, comparable across a primary and its streaming replicas
# (replica.py): where the primary has written to, and what a replica has replayed (NULL when
# the server is not in recovery).
WAL_POSITION = "SELECT (pg_current_wal_lsn() - '0/0')::bigint AS position"
REPLAY_POSITION = "SELECT (pg_last_wal_replay_lsn() - '0/0')::bigint AS position"
APPLY_BATCH = 50_000


def kpi_statement_rows(
    conn: psycopg.Connection,
    mode: str,
    windows: Sequence[tuple[datetime | None, datetime | None, datetime]],
    aged_days: int,
) -> list[dict[str, Any]]:
    """sql/runtime/kpi.sql on a database whose KPIs come from `mode` ("summaries" or "raw"): the
    statement and parameters of every cache miss, which the benches time as they are."""
    statement = queries.kpi_windows if mode == "summaries" else queries.kpi_windows_raw
    return windows_rows(statement, conn, windows, aged_days)


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


@contextlib.contextmanager
def applier_lock(conn: psycopg.Connection) -> Iterator[None]:
    """The summaries' applier lock, held by this session for the block: whoever applies, builds
    or rebuilds inside waits here for a running applier, before its snapshot is taken, so that
    it never works from a snapshot older than that applier's commit."""
    conn.execute(APPLIER_LOCK, [True])
    conn.commit()  # the snapshot comes later, in a transaction of its own (a no-op in autocommit)
    try:
        yield
    finally:
        conn.execute(APPLIER_LOCK, [False])
        conn.commit()


def in_one_snapshot(conn: psycopg.Connection, statement: str, params: Sequence[Any] = ()) -> None:
    """The statement in a REPEATABLE READ transaction of its own: the summaries' build, rebuild
    and applier read the change log and the rows it names from one snapshot (sql/schema/summary.sql)."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        conn.execute(statement, params)
