"""`kpi-service init-db`: the tables, indexes and summaries of sql/schema/ applied to a database."""

from __future__ import annotations

import psycopg

from kpi_service.db.sql import APPLIER_LOCK, sql_text

SERVICE_TABLES = "kpi_sums, kpi_buyer_buckets, kpi_sales, kpi_purchase_facts, kpi_conversions, kpi_changes"


def apply_schema(conninfo: str, *, summaries: bool = True) -> None:
    """Apply sql/schema/schema.sql, (unless told not to) summary.sql, manifest.sql and indexes.sql, then build
    the summaries from the rows already there. Idempotent. The application keeps writing
    meanwhile: the tables, functions and triggers go in one short transaction, the indexes are
    built CONCURRENTLY, and the build only reads the sales tables. Then what it built is
    vacuumed and analyzed, so that the first reads have index-only scans and statistics
    without waiting for autovacuum."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        with conn.transaction():
            conn.execute(sql_text("schema/schema.sql"))
            if summaries:
                conn.execute(sql_text("schema/summary.sql"))
            conn.execute(sql_text("schema/manifest.sql"))
            # The service's role keeps its grants through an upgrade (new functions, new forms).
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'kpi_reader'").fetchone():
                conn.execute(sql_text("ops/roles.sql"))
        for statement in _statements(sql_text("schema/indexes.sql")):
            conn.execute(statement)
        if summaries:
            # Waiting for a running applier (an upgrade beside live instances) before the
            # build's snapshot is taken.
            conn.execute(APPLIER_LOCK, [True])
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                conn.execute("SELECT kpi_build()")
            conn.execute(APPLIER_LOCK, [False])
            conn.execute(f"VACUUM (ANALYZE) {SERVICE_TABLES}")
        conn.execute("ANALYZE buyers, listings, leads, purchases")


def _statements(text: str) -> list[str]:
    """The statements of a file with one per line ending in ";" and no function bodies."""
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("--")]
    return [statement.strip() for statement in "\n".join(lines).split(";\n") if statement.strip()]
