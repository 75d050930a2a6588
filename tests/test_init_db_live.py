"""`kpi-service init-db` on a database the application is using: it gives way to the
application's transactions instead of making them wait or deadlock, and finishes what an
interrupted run left behind."""

from __future__ import annotations

import contextlib

import psycopg

from kpi_service.db import uninstall
from kpi_service.db.schema import apply_schema


def _index(conn: psycopg.Connection, name: str) -> tuple[bool, str] | None:
    return conn.execute(
        "SELECT i.indisvalid, pg_get_indexdef(i.indexrelid) FROM pg_index i WHERE i.indexrelid = to_regclass(%s)",
        [name],
    ).fetchone()


def test_an_invalid_index_left_by_a_failed_build_is_built_again(empty_database: str) -> None:
    apply_schema(empty_database, summaries=False)
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute("INSERT INTO buyers (id, name) VALUES (1, 'b')")
        conn.execute("INSERT INTO leads (buyer_id, created_at, status) VALUES (1, now(), 'open'), (1, now(), 'open')")
        # A concurrent build that fails leaves its index behind, invalid: as an init-db
        # interrupted in its CREATE INDEX CONCURRENTLY does.
        conn.execute("DROP INDEX kpi_leads_created_at_idx")
        with contextlib.suppress(psycopg.errors.UniqueViolation):
            conn.execute("CREATE UNIQUE INDEX CONCURRENTLY kpi_leads_created_at_idx ON leads (buyer_id)")
        assert _index(conn, "kpi_leads_created_at_idx")[0] is False
        installed = "SELECT installed FROM kpi_manifest WHERE name = 'kpi_leads_created_at_idx'"
        assert conn.execute(installed).fetchone() == (False,)
        assert ("kpi_leads_created_at_idx", "leads") in uninstall.plan(conn).indexes  # still there to remove

        apply_schema(empty_database, summaries=False)

        valid, definition = _index(conn, "kpi_leads_created_at_idx")
        assert valid
        assert definition.endswith("USING btree (created_at) INCLUDE (buyer_id)")
        assert conn.execute(installed).fetchone() == (True,)
