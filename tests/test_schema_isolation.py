"""Issue 33, item 11: the service's objects in a schema of their own (kpi), where nobody but
their owner may create, and every SECURITY DEFINER function searching kpi, then pg_catalog:
a role allowed to create in the sales tables' schema (public, as PostgreSQL 14 allowed every
role, and pg_upgrade kept) can no longer make the applier run its code as the summaries' owner.

Before, the functions searched `public, pg_temp`, and the applier called
kpi_buyer_link(..., 1) with an integer: public.kpi_buyer_link(timestamptz, timestamptz, integer)
was the closer match, and the next lead applied made its author a superuser."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from kpi_service.db.connections import Database
from kpi_service.db.schema import apply_schema
from tests.helpers import make_settings

SUMMARIES = (
    "SELECT * FROM kpi.kpi_sums ORDER BY grain, bucket",
    "SELECT buyer_id, bucket, prev_bucket FROM kpi.kpi_buyer_buckets ORDER BY 1, 2",
    "SELECT * FROM kpi.kpi_sales ORDER BY listing_id",
    "SELECT * FROM kpi.kpi_buyer_days ORDER BY day, gap",
)


@pytest.fixture
def attacker(empty_database: str) -> Iterator[tuple[str, psycopg.Connection]]:
    """A login allowed to create in public (as on PostgreSQL 14), connected: its name and session."""
    name = f"kpi_test_attacker_{uuid.uuid4().hex[:8]}"
    apply_schema(empty_database)
    with psycopg.connect(empty_database, autocommit=True) as owner:
        owner.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        owner.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(name)))
        try:
            with psycopg.connect(make_conninfo(empty_database, user=name), autocommit=True) as conn:
                yield name, conn
        finally:
            owner.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            owner.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def escalation(name: str) -> str:
    """What the attacker's code does if it ever runs as the summaries' owner: makes itself a superuser."""
    return sql.SQL("EXECUTE {}").format(sql.Literal(f'ALTER ROLE "{name}" SUPERUSER')).as_string()


def superuser(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", [name]).fetchone()[0]


def applied_and_rebuilt(conn: psycopg.Connection) -> tuple[tuple, tuple]:
    applied = tuple(conn.execute(query).fetchall() for query in SUMMARIES)
    with conn.transaction(force_rollback=True):
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        conn.execute("SELECT kpi.kpi_rebuild()")
        rebuilt = tuple(conn.execute(query).fetchall() for query in SUMMARIES)
    return applied, rebuilt


def test_an_overload_or_operator_in_public_never_runs_as_the_owner(
    empty_database: str, attacker: tuple[str, psycopg.Connection]
) -> None:
    name, mallory = attacker
    # The attacker's function returns a row of the type the applier expects where it can name it
    # (before schema version 7, public.kpi_buyer_days), or one of its own of that shape: either
    # way the applier's transaction would commit what the function did.
    mallory.execute(
        """
        DO $$
        BEGIN
            IF to_regtype('public.kpi_buyer_days') IS NULL THEN
                CREATE TYPE public.kpi_buyer_days AS (day timestamptz, gap integer, n bigint);
            END IF;
        END
        $$
        """
    )
    mallory.execute(
        f"""
        CREATE FUNCTION public.kpi_buyer_link(bucket timestamptz, prev timestamptz, n integer)
        RETURNS public.kpi_buyer_days LANGUAGE plpgsql AS $fn$
        BEGIN
            {escalation(name)};
            RETURN ROW(date_bin('1 day', bucket, timestamptz 'epoch'), 0, n::bigint);
        END
        $fn$
        """
    )
    # An operator with no exact match in pg_catalog: the applier multiplies each log row's sign
    # (smallint) by its price (numeric).
    mallory.execute(
        f"""
        CREATE FUNCTION public.kpi_times(a smallint, b numeric) RETURNS numeric LANGUAGE plpgsql AS $fn$
        BEGIN
            {escalation(name)};
            RETURN a::numeric * b;
        END
        $fn$
        """
    )
    mallory.execute("CREATE OPERATOR public.* (LEFTARG = smallint, RIGHTARG = numeric, FUNCTION = public.kpi_times)")

    at = datetime(2026, 3, 2, 10, tzinfo=UTC)
    db = Database(make_settings(empty_database))
    with psycopg.connect(empty_database, autocommit=True) as owner:
        try:
            owner.execute("INSERT INTO buyers (id, name) VALUES (1, 'b')")
            owner.execute("INSERT INTO listings (id, price, status, listed_at) VALUES (1, 100, 'active', %s)", [at])
            owner.execute(
                "INSERT INTO leads (buyer_id, listing_id, created_at, status) VALUES (1, 1, %s, 'open')", [at]
            )
            assert db.apply_changes(wait=True) == 2
            # An ordinary lead of the same buyer a day later: a link to the buyer's previous bucket.
            owner.execute(
                "INSERT INTO leads (buyer_id, listing_id, created_at, status) VALUES (1, 1, %s, 'open')",
                [at + timedelta(days=1)],
            )
            assert db.apply_changes(wait=True) == 1
        finally:
            db.close()
        assert not superuser(owner, name)
        applied, rebuilt = applied_and_rebuilt(owner)
        assert applied == rebuilt
        assert applied[3] == [(datetime(2026, 3, 3, tzinfo=UTC), 1, 1)]  # the link, by the service's own function


def test_nobody_but_the_owner_may_create_in_the_service_schema(
    empty_database: str, attacker: tuple[str, psycopg.Connection]
) -> None:
    name, mallory = attacker
    with psycopg.connect(empty_database, autocommit=True) as owner:
        # Granted by mistake, and PUBLIC's too: init-db takes both back.
        owner.execute(sql.SQL("GRANT CREATE ON SCHEMA kpi TO {}, PUBLIC").format(sql.Identifier(name)))
        apply_schema(empty_database)
        creators = owner.execute(
            """
            SELECT a.grantee::regrole::text FROM pg_namespace n CROSS JOIN LATERAL aclexplode(n.nspacl) a
            WHERE n.nspname = 'kpi' AND a.privilege_type = 'CREATE'
            UNION
            SELECT r.rolname FROM pg_roles r
            WHERE NOT r.rolsuper AND has_schema_privilege(r.oid, 'kpi', 'CREATE')
            """
        ).fetchall()
        assert creators == [(owner.execute("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'kpi'")
                             .fetchone()[0],)]  # fmt: skip
        # And every SECURITY DEFINER function searches kpi, then pg_catalog: no schema others write to.
        paths = owner.execute(
            "SELECT DISTINCT array_to_string(proconfig, ',') FROM pg_proc"
            " WHERE prosecdef AND pronamespace = 'kpi'::regnamespace"
        ).fetchall()
        assert paths == [("search_path=kpi, pg_catalog, pg_temp",)]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        mallory.execute("CREATE FUNCTION kpi.kpi_buyer_link(timestamptz, timestamptz, integer) RETURNS int"
                        " LANGUAGE sql AS 'SELECT 1'")  # fmt: skip


def test_the_services_own_sessions_choose_no_operator_of_public(
    empty_database: str, attacker: tuple[str, psycopg.Connection]
) -> None:
    """Its statements' functions run as the service's role in its sessions: an operator of public
    with an exact match where pg_catalog has none (numeric * bigint, in kpi_metrics) would be
    chosen on a search path that holds public. The sessions search kpi and pg_catalog alone."""
    _, mallory = attacker
    mallory.execute(
        "CREATE FUNCTION public.kpi_chosen(a numeric, b bigint) RETURNS numeric LANGUAGE plpgsql"
        " AS $fn$ BEGIN RAISE EXCEPTION 'public.* was chosen'; END $fn$"
    )
    mallory.execute("CREATE OPERATOR public.* (LEFTARG = numeric, RIGHTARG = bigint, FUNCTION = public.kpi_chosen)")
    at = datetime(2026, 3, 2, 10, tzinfo=UTC)
    with psycopg.connect(empty_database, autocommit=True) as owner:
        owner.execute("INSERT INTO listings (price, status, listed_at, score) VALUES (100, 'active', %s, 50)", [at])
        with pytest.raises(psycopg.errors.RaiseException, match="was chosen"):  # on public's search path
            owner.execute("SELECT * FROM kpi.kpi_metrics(1, 100, 1, 50, 0, 0, 0, 0, 0, 0, 0, 0)")
    db = Database(make_settings(empty_database))
    try:
        db.apply_changes(wait=True)
        rows, *_ = db.kpi_rows([(at - timedelta(days=1), at + timedelta(days=1), at + timedelta(days=1))], 60)
        assert rows[0]["scoring_rate"] == 100 and rows[0]["total_listings"] == 1
    finally:
        db.close()
