"""sql/ops/roles.sql: a member of kpi_reader runs the KPI query and cannot write."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from kpi_service.db.connections import Database
from kpi_service.db.schema import apply_schema
from kpi_service.db.sql import sql_text
from tests.helpers import make_settings, two_listings


@pytest.fixture
def reader_url(database_url: str, conn: psycopg.Connection):
    """A LOGIN user in kpi_reader, as docs/operations.md shows; dropped afterwards (roles are per cluster)."""
    for _ in range(2):  # idempotent
        conn.execute(sql_text("ops/roles.sql"))
    name, password = f"kpi_test_reader_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    conn.execute(
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE kpi_reader").format(
            sql.Identifier(name), sql.Literal(password)
        )
    )
    yield make_conninfo(database_url, user=name, password=password)
    conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_reader_runs_the_kpi_query(reader_url: str, conn: psycopg.Connection) -> None:
    two_listings(conn)
    db = Database(make_settings(reader_url))
    try:
        rows, *_ = db.kpi_rows([(None, None, datetime.now(UTC))], 60)
    finally:
        db.close()
    assert rows[0]["total_listings"] == 2


def test_reader_cannot_write(reader_url: str) -> None:
    # A plain session, not the service's read-only one: the privileges alone must refuse.
    with psycopg.connect(reader_url, autocommit=True) as reader:
        assert conninfo_to_dict(reader_url)["user"] == reader.info.user
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("INSERT INTO buyers (name) VALUES ('mallory')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("DELETE FROM listings")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("CREATE TABLE public.intruder (id int)")


def test_reader_applies_the_summaries_but_cannot_change_them(reader_url: str, conn: psycopg.Connection) -> None:
    two_listings(conn)
    conn.execute("UPDATE listings SET price = price + 1")  # logs the old and new rows of both
    db = Database(make_settings(reader_url))
    try:
        assert db.pending_changes() == 4
        assert db.apply_changes(wait=True) == 4
        rows, *_ = db.kpi_rows([(None, None, datetime.now(UTC))], 60)
    finally:
        db.close()
    assert rows[0]["total_listings"] == 2
    with psycopg.connect(reader_url, autocommit=True) as reader:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("DELETE FROM kpi.kpi_sums")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("INSERT INTO kpi.kpi_changes DEFAULT VALUES")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("SELECT kpi.kpi_rebuild()")


def test_an_upgrade_by_init_db_keeps_the_readers_right_to_apply(
    reader_url: str, database_url: str, conn: psycopg.Connection
) -> None:
    """Versions before the applier's pacing had kpi_apply_changes(integer), and versions before 7
    had it in the sales tables' schema, granted to kpi_reader by the owner's DBA: init-db replaces
    it with kpi's and passes the grant on."""
    conn.execute("DROP FUNCTION kpi.kpi_apply_changes(integer, double precision)")
    conn.execute(
        "CREATE FUNCTION public.kpi_apply_changes(max_rows integer) RETURNS bigint LANGUAGE sql AS 'SELECT 0::bigint'"
    )
    conn.execute("REVOKE ALL ON FUNCTION public.kpi_apply_changes(integer) FROM PUBLIC")
    conn.execute("GRANT EXECUTE ON FUNCTION public.kpi_apply_changes(integer) TO kpi_reader")
    apply_schema(database_url)
    assert conn.execute("SELECT to_regprocedure('public.kpi_apply_changes(integer)')").fetchone() == (None,)
    two_listings(conn)
    conn.execute("UPDATE listings SET price = price + 1")  # logs the old and new rows of both
    db = Database(make_settings(reader_url))
    try:
        assert db.apply_changes(wait=True) == 4
    finally:
        db.close()
