"""`kpi-service init-db`: the tables, indexes and summaries of sql/schema/ applied to a database."""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import metadata

import psycopg
from psycopg import sql

from kpi_service.db.errors import SchemaMismatch
from kpi_service.db.giving_way import giving_way
from kpi_service.db.sql import in_applier_turn, sql_text

# The version of what sql/schema/ installs, recorded in the database's kpi_schema row. Raised
# with every release that changes those objects; version 1 is the releases before the row existed.
# (The summaries' own build version, kpi_summary_state in sql/schema/summary.sql, is another
# number: it changes only when the summaries' rows change shape, and only then does init-db
# rebuild them. Most schema versions leave it alone.)
# 2: the manifest and its privileges; 3: kpi_buyer_days, which this service's statement reads;
# 4: kpi_sums.long_listed and long_sold with kpi_summary_state.aged_days, which it reads too;
# 5: kpi_sales counts each image (n), kept by the applier from the log's images, which this
# service's statement sums. (An older service counts the rows: the same number once the log is
# applied, so it may serve on until it is replaced.) 6: the log's rows are jsonb images, the
# triggers' state is recorded with the summaries, kpi_missing_columns(), which this service calls.
SCHEMA_VERSION = 6
# The oldest database schema this service computes right numbers from.
OLDEST_DATABASE = 6
# The oldest service this version's objects are right for, recorded with them: raised to
# SCHEMA_VERSION when an older service would misread them (a column's meaning changed, a function
# it calls changed its result), left as it is when the change only adds.
OLDEST_SERVICE = 2


def service_version() -> str:
    """This kpi-service release (setup.cfg)."""
    return metadata.version("kpi-service")


def compatibility(version: int, oldest_service: int) -> str | None:
    """Why this service may not serve from a database holding schema `version` (None: it may)."""
    if version < OLDEST_DATABASE:
        return (
            f"the database holds KPI schema version {version}, older than this service reads"
            f" ({OLDEST_DATABASE} to {SCHEMA_VERSION}): run kpi-service init-db to upgrade it"
        )
    if oldest_service > SCHEMA_VERSION:
        return (
            f"the database holds KPI schema version {version}, made for services of schema version"
            f" {oldest_service} or later, and this service is {service_version()} (schema version"
            f" {SCHEMA_VERSION}): upgrade this service"
        )
    return None


AGAIN = "kpi-service init-db"
SERVICE_TABLES = "kpi_sums, kpi_buyer_buckets, kpi_sales, kpi_purchase_facts, kpi_conversions, kpi_changes"


def apply_schema(
    conninfo: str, *, summaries: bool = True, aged_days: int = 60, progress: Callable[[str], None] | None = None
) -> None:
    """Apply sql/schema/schema.sql, (unless told not to) summary.sql, manifest.sql and indexes.sql, then build
    the summaries from the rows already there, with aged_inventory's fast path for `aged_days`
    (KPI_AGED_DAYS: another value is answered exactly too, from the sales). Idempotent. The application keeps writing
    meanwhile: the tables, functions and triggers go in one short transaction, the indexes are
    built CONCURRENTLY, and the build only reads the sales tables; each step that locks the
    application's tables gives way to its transactions (db/giving_way.py). Then what it built is
    vacuumed and analyzed, so that the first reads have index-only scans and statistics
    without waiting for autovacuum. `progress` is told each step as it begins, with the seconds
    since the start (init-db prints them: at ten million listings the build takes minutes)."""
    started = time.monotonic()

    def step(what: str) -> None:
        if progress is not None:
            progress(f"{time.monotonic() - started:7.1f} s  {what}")

    with psycopg.connect(conninfo, autocommit=True) as conn:
        # The build's own steps (sql/schema/summary.sql raises them as notices).
        conn.add_notice_handler(
            lambda notice: (
                step(notice.message_primary.removeprefix("kpi-service: "))
                if (notice.message_primary or "").startswith("kpi-service: ")
                else None
            )
        )
        step("tables, functions and triggers")

        def objects() -> None:
            _refuse_downgrade(conn)
            conn.execute(sql_text("schema/schema.sql"))
            if summaries:
                conn.execute(sql_text("schema/summary.sql"))
            conn.execute(sql_text("schema/manifest.sql"))
            conn.execute("DELETE FROM kpi_schema")
            conn.execute(
                "INSERT INTO kpi_schema VALUES (%s, %s, %s, now())",
                [SCHEMA_VERSION, OLDEST_SERVICE, service_version()],
            )
            # The service's role keeps its grants through an upgrade (new functions, new forms).
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'kpi_reader'").fetchone():
                conn.execute(sql_text("ops/roles.sql"))

        # The triggers' DDL locks listings, leads and purchases in turn, each against their writes.
        giving_way(conn, objects, "the tables, functions and triggers", command=AGAIN, say=step)
        step("indexes (built concurrently)")
        giving_way(
            conn, lambda: _build_indexes(conn, summaries), "the indexes", command=AGAIN, transaction=False, say=step
        )
        if summaries:
            step("waiting for a running applier")
            # Waiting for a running applier (an upgrade beside live instances) before the
            # build's snapshot is taken.
            in_applier_turn(conn, "SELECT true FROM kpi_build(%s)", [aged_days])
            step("vacuuming and analyzing the summaries")
            conn.execute(f"VACUUM (ANALYZE) {SERVICE_TABLES}")
        step("analyzing the sales tables")
        giving_way(
            conn,
            lambda: conn.execute("ANALYZE buyers, listings, leads, purchases"),
            "analyzing the sales tables",
            command=AGAIN,
            transaction=False,
            say=step,
        )
        step("done")


def _build_indexes(conn: psycopg.Connection, summaries: bool) -> None:
    """indexes.sql (and summary_indexes.sql, with the summaries), after dropping any index of
    their names that a build left invalid: IF NOT EXISTS would keep that one, which every write
    maintains and no query reads. (A build that gives way to the application's transactions
    leaves one too, for its next try.)"""
    invalid = conn.execute(
        "SELECT m.name FROM kpi_manifest m JOIN pg_index i ON i.indexrelid = to_regclass(m.name)"
        " WHERE m.kind = 'index' AND NOT i.indisvalid"
    ).fetchall()
    for (name,) in invalid:
        conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(name)))
    for name in ("schema/indexes.sql", "schema/summary_indexes.sql") if summaries else ("schema/indexes.sql",):
        for statement in _statements(sql_text(name)):
            conn.execute(statement)


def _refuse_downgrade(conn: psycopg.Connection) -> None:
    """A newer release's objects are not replaced by this one's: its instances would stop serving."""
    if conn.execute("SELECT to_regclass('kpi_schema') IS NOT NULL").fetchone()[0]:
        row = conn.execute("SELECT version, service FROM kpi_schema").fetchone()
        if row and row[0] > SCHEMA_VERSION:
            raise SchemaMismatch(
                f"the database holds KPI schema version {row[0]} (kpi-service {row[1]}), newer than this"
                f" kpi-service {service_version()} installs ({SCHEMA_VERSION}): run the newer release's init-db"
            )


def _statements(text: str) -> list[str]:
    """The statements of a file with one per line ending in ";" and no function bodies."""
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("--")]
    return [statement.strip() for statement in "\n".join(lines).split(";\n") if statement.strip()]
