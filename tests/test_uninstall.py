"""`kpi-service uninstall`: a database that had the service, written to through its triggers, is
afterwards what a copy that never had it is (tables, rows, indexes, triggers, functions, types,
grants); the roles the service's scripts made are gone; a second removal finds nothing; the
application's writes never wait behind a removal that waits for a lock.

On a PostgreSQL server of this module's own (tests/servers.py): roles belong to the whole server,
and dropping kpi_reader on the shared one would pull it from under the other tests."""

from __future__ import annotations

import io
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from kpi_service.cli import commands
from kpi_service.cli.seed import seed
from kpi_service.db.schema import apply_schema
from kpi_service.db.sql import sql_text
from tests.dataset import catch_up
from tests.helpers import wait_until
from tests.servers import PostgresServer

pytestmark = pytest.mark.slow

UNTIL = datetime(2026, 11, 1, tzinfo=UTC)
APPLICATION_TABLES = ("buyers", "listings", "leads", "purchases")
# The application's own objects besides its tables (schema.sql's first part): they must survive.
APPLICATION_EXTRAS = """
CREATE INDEX listings_status_idx ON listings (status);
CREATE INDEX listings_listed_at_idx ON listings (listed_at);
CREATE FUNCTION app_lead_touched() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER app_lead_touched BEFORE UPDATE ON leads FOR EACH ROW EXECUTE FUNCTION app_lead_touched();
"""
WRITES = (
    "UPDATE listings SET price = price + 5 WHERE id % 5 = 0",
    "UPDATE listings SET status = 'withdrawn' WHERE id % 17 = 0 AND status = 'active'",
    "DELETE FROM purchases WHERE id % 9 = 0",
    "UPDATE leads SET created_at = created_at + interval '1 hour' WHERE id % 4 = 0",
    "INSERT INTO listings (price, status, listed_at) VALUES (999, 'active', '2026-10-30T10:00Z')",
)


def application_schema() -> str:
    """The application's tables as sql/schema/schema.sql defines them (before the service's functions)."""
    text = sql_text("schema/schema.sql").replace("@sales@", "public")
    start = text.index("CREATE TABLE IF NOT EXISTS public.buyers")
    return text[start : text.index("-- The service's indexes on them")] + APPLICATION_EXTRAS


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


def database(server: PostgresServer, name: str) -> str:
    """A database holding the application's tables and rows (the same rows for the same name's seed)."""
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(server.url, dbname=name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(application_schema())
    seed(url, 300, seed=5, until=UNTIL)
    return url


def install(server: PostgresServer, url: str) -> None:
    """init-db, then the owner's two role scripts (docs/operations.md, "Read-only database role")."""
    apply_schema(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql_text("ops/roles.sql"))
    psql = server.bindir / "psql"
    login = Path(__file__).parents[1] / "sql" / "ops" / "service_login.sql"
    subprocess.run(
        [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", "pw=s3cret", "-d", url, "-f", login],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def write(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in WRITES:
            conn.execute(statement)
        catch_up(conn)


def catalog(url: str) -> dict[str, object]:
    """What the database holds, as a comparison sees it (ACLs as their effective value: a grant
    revoked leaves the owner's default written out)."""
    with psycopg.connect(url) as conn:

        def rows(query: str) -> list[tuple]:
            return conn.execute(query).fetchall()

        return {
            "relations": rows(
                "SELECT relname, relkind, coalesce(relacl, acldefault('r', relowner))::text FROM pg_class"
                " WHERE relnamespace = 'public'::regnamespace ORDER BY 1"
            ),
            "columns": rows(
                "SELECT attrelid::regclass::text, attnum, attname, format_type(atttypid, atttypmod) FROM pg_attribute"
                " WHERE attrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'public'::regnamespace)"
                " AND attnum > 0 AND NOT attisdropped ORDER BY 1, 2"
            ),
            "indexes": rows("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"),
            "constraints": rows(
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2"
            ),
            "triggers": rows(
                "SELECT tgrelid::regclass::text, tgname, tgenabled FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2"
            ),
            "functions": rows(
                "SELECT oid::regprocedure::text, prosrc, proacl::text FROM pg_proc"
                " WHERE pronamespace = 'public'::regnamespace ORDER BY 1"
            ),
            "types": rows("SELECT typname FROM pg_type WHERE typnamespace = 'public'::regnamespace ORDER BY 1"),
            "schema": rows(
                "SELECT coalesce(nspacl, acldefault('n', nspowner))::text FROM pg_namespace WHERE nspname = 'public'"
            ),
            "database": rows(
                "SELECT coalesce(datacl, acldefault('d', datdba))::text FROM pg_database"
                " WHERE datname = current_database()"
            ),
            "sequences": rows(
                "SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'public' ORDER BY 1"
            ),
            "rows": {
                table: rows(f"SELECT * FROM {table} ORDER BY id")  # noqa: S608 - the four table names above
                for table in APPLICATION_TABLES
            },
        }


def roles(server: PostgresServer) -> list[str]:
    with psycopg.connect(server.url) as conn:
        return [r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_' ORDER BY 1")]


def uninstall(url: str, *, yes: bool = True, answer: str = "") -> tuple[bool, str]:
    out = io.StringIO()
    done = commands.uninstall_command({"DATABASE_URL": url}, yes=yes, out=out, ask=lambda _: answer)
    return done, out.getvalue()


def test_removal_leaves_what_a_database_that_never_had_the_service_holds(server: PostgresServer) -> None:
    before = roles(server)
    never = database(server, "never_had_it")
    had = database(server, "had_it")
    install(server, had)
    assert set(roles(server)) == {*before, "kpi", "kpi_reader"}
    write(never)
    write(had)
    with psycopg.connect(had) as conn:
        assert conn.execute("SELECT count(*) FROM kpi.kpi_manifest WHERE installed").fetchone()[0] > 50
    assert catalog(had) != catalog(never)

    done, printed = uninstall(had)

    assert done
    for line in (
        "trigger  kpi_listings_insert on public.listings",
        "function kpi.kpi_apply_changes(integer, double precision)",
        "table    kpi.kpi_sums",
        "view     kpi.kpi_manifest",
        "schema   kpi",
        "index    public.kpi_leads_created_at_idx on public.leads",
        "role     kpi_reader",
        "role     kpi",
    ):
        assert line in printed
    assert catalog(had) == catalog(never)
    assert roles(server) == before

    # Idempotent: nothing left, nothing dropped, nothing asked.
    done, printed = uninstall(had, yes=False)
    assert done and "nothing to do" in printed
    assert catalog(had) == catalog(never)


def test_nothing_is_dropped_without_a_yes(server: PostgresServer) -> None:
    url = database(server, "declined")
    apply_schema(url)
    installed = catalog(url)
    done, printed = uninstall(url, yes=False, answer="no")
    assert not done and "nothing dropped" in printed and "trigger  kpi_leads_update on public.leads" in printed
    assert catalog(url) == installed


def test_a_role_the_service_did_not_make_stays(server: PostgresServer) -> None:
    """A kpi_reader the DBA made beforehand (no mark of sql/ops/roles.sql): its grants here go, it stays."""
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS kpi_reader")
        conn.execute("CREATE ROLE kpi_reader NOLOGIN")
    try:
        url = database(server, "dba_role")
        apply_schema(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql_text("ops/roles.sql"))
        done, printed = uninstall(url)
        assert done and "role kpi_reader stays" in printed
        assert "kpi_reader" in roles(server)
        with psycopg.connect(url) as conn:
            assert not conn.execute("SELECT has_table_privilege('kpi_reader', 'listings', 'SELECT')").fetchone()[0]
        assert "nothing to do" in uninstall(url)[1]
    finally:
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("DROP ROLE IF EXISTS kpi_reader")


def test_the_application_writes_while_a_removal_waits_for_its_lock(server: PostgresServer) -> None:
    url = database(server, "live")
    apply_schema(url)
    with psycopg.connect(url) as blocker, psycopg.connect(url, autocommit=True) as app:
        # A long transaction of the application holds its write lock on listings.
        blocker.execute("UPDATE listings SET score = score WHERE id = 1")
        result: list[tuple[bool, str]] = []
        removal = threading.Thread(target=lambda: result.append(uninstall(url)))
        removal.start()
        wait_until(
            lambda: app.execute(
                "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE query LIKE 'DROP TRIGGER%%')"
            ).fetchone()[0]
        )
        # Behind a DROP TRIGGER that waited for its lock, these would wait until the blocker ends.
        app.execute("SET lock_timeout = '2s'")
        for n in range(20):
            app.execute("INSERT INTO listings (price, status, listed_at) VALUES (%s, 'active', now())", [n])
        assert removal.is_alive()
        blocker.rollback()
        removal.join()
    assert result and result[0][0]
    assert "nothing to do" in uninstall(url)[1]


def test_a_login_another_database_still_uses_stays(server: PostgresServer) -> None:
    """Roles belong to the whole server: two databases ran the role scripts, and the service of
    the second still logs in and reads after the first removed the service."""
    before = roles(server)
    first, second = database(server, "shared_first"), database(server, "shared_second")
    install(server, first)
    install(server, second)

    done, printed = uninstall(first)

    assert done
    assert "role     kpi\n" not in printed and "role     kpi_reader\n" not in printed
    for role in ("kpi", "kpi_reader"):
        assert f"kept role {role}: still used in database shared_second" in printed
    assert set(roles(server)) == {*before, "kpi", "kpi_reader"}
    with psycopg.connect(make_conninfo(second, user="kpi", password="s3cret")) as service:
        assert service.execute("SELECT kpi.kpi_source(), count(*) > 0 FROM listings").fetchone() == ("summaries", True)
    with psycopg.connect(first) as conn:
        assert not conn.execute("SELECT has_table_privilege('kpi_reader', 'listings', 'SELECT')").fetchone()[0]
        granted_here = (
            "SELECT EXISTS (SELECT FROM pg_database d CROSS JOIN LATERAL aclexplode(d.datacl) a"
            " WHERE d.datname = current_database() AND a.grantee = 'kpi_reader'::regrole)"
        )
        assert conn.execute(granted_here).fetchone() == (False,)

    # The last database to remove the service drops them.
    done, printed = uninstall(second)
    assert done and "dropped role kpi_reader" in printed and "dropped role kpi" in printed
    assert roles(server) == before
