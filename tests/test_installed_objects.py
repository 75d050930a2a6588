"""What the service installs in the application's database (sql/schema/manifest.sql): nothing
more than its manifest lists, in its own schema kpi but for the triggers and indexes on the sales
tables, executable by nobody but the roles that need it, with pinned search paths; the
application's own indexes left alone; the mode followed while it runs."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from flask import Flask
from psycopg import sql
from psycopg.conninfo import make_conninfo

from kpi_service.db.schema import apply_schema, schema_text
from kpi_service.db.sql import sql_text
from tests.helpers import wait_until


@pytest.fixture
def installed(empty_database: str) -> Iterator[psycopg.Connection]:
    """A database of its own as init-db leaves it, with the service's role granted."""
    apply_schema(empty_database)
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute(sql_text("ops/roles.sql"))
        yield conn


@pytest.fixture
def login(installed: psycopg.Connection) -> Iterator[Callable[..., psycopg.Connection]]:
    """Logins made for the test, each with a schema of its own (as any role may be given)."""
    names: list[str] = []
    conns: list[psycopg.Connection] = []

    def make(*, reader: bool = False) -> psycopg.Connection:
        name = f"kpi_test_login_{uuid.uuid4().hex[:8]}"
        names.append(name)
        installed.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        if reader:
            installed.execute(sql.SQL("GRANT kpi_reader TO {}").format(sql.Identifier(name)))
        installed.execute(sql.SQL("CREATE SCHEMA {0} AUTHORIZATION {0}").format(sql.Identifier(name)))
        conns.append(psycopg.connect(make_conninfo(installed.info.dsn, user=name), autocommit=True))
        return conns[-1]

    yield make
    for conn in conns:
        conn.close()
    for name in names:
        installed.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
        installed.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        installed.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def manifest(conn: psycopg.Connection, kind: str) -> dict[str, str | None]:
    """name -> callers of the manifest's objects of a kind, as the database names them."""
    rows = conn.execute(
        "SELECT CASE WHEN kind = 'function' THEN to_regprocedure(name)::text ELSE name END, callers"
        " FROM kpi.kpi_manifest WHERE kind = %s AND installed",
        [kind],
    ).fetchall()
    return dict(rows)


# The search path every SECURITY DEFINER function runs with: none where another role may create.
PINNED = ["search_path=kpi, pg_catalog, pg_temp"]


def functions(conn: psycopg.Connection) -> list[tuple[str, bool, list[str] | None, bool, bool]]:
    """Every function of the service's schema (kpi) and every kpi_ one of the sales tables' (public):
    signature, SECURITY DEFINER, settings, PUBLIC's and kpi_reader's EXECUTE."""
    return conn.execute(
        """
        SELECT p.oid::regprocedure::text, p.prosecdef, p.proconfig,
               has_function_privilege('public', p.oid, 'EXECUTE'),
               has_function_privilege('kpi_reader', p.oid, 'EXECUTE')
        FROM pg_proc p
        WHERE p.pronamespace = 'kpi'::regnamespace
           OR (p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'kpi\\_%')
        ORDER BY 1
        """
    ).fetchall()


def test_the_manifest_lists_every_function_with_its_grants_and_search_path(installed: psycopg.Connection) -> None:
    listed = manifest(installed, "function")
    found = functions(installed)
    assert sorted(listed) == [signature for signature, *_ in found]
    for signature, definer, config, public, reader in found:
        assert not public, signature
        assert reader == (listed[signature] == "reader"), signature
        assert config == (PINNED if definer else None), signature
    definers = {s for s, definer, *_ in found if definer}
    assert definers >= {"kpi.kpi_apply_changes(integer,double precision)", "kpi.kpi_truncated()"}


def test_the_manifest_lists_every_table_index_and_trigger(installed: psycopg.Connection) -> None:
    relations = installed.execute(
        """
        SELECT c.relnamespace::regnamespace || '.' || c.relname, c.relkind FROM pg_class c
        WHERE (c.relnamespace = 'kpi'::regnamespace
               OR (c.relnamespace = 'public'::regnamespace AND c.relname LIKE 'kpi\\_%'))
          AND NOT EXISTS (SELECT FROM pg_constraint k WHERE k.conindid = c.oid)  -- a key's own index
        """
    ).fetchall()
    listed = {
        **manifest(installed, "table"),
        **manifest(installed, "index"),
        **manifest(installed, "view"),
        **manifest(installed, "type"),
    }
    assert sorted(name for name, _ in relations) == sorted(listed)
    triggers = installed.execute("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1").fetchall()
    assert [name for (name,) in triggers] == sorted(manifest(installed, "trigger"))
    # (The decoding mode's publication is made by init-db --capture decoding alone.)
    assert installed.execute("SELECT kind, name FROM kpi.kpi_manifest WHERE NOT installed").fetchall() == [
        ("publication", "kpi")
    ]


def call(conn: psycopg.Connection, signature: str) -> None:
    """The function called with NULL for every argument."""
    name, _, arguments = signature.partition("(")
    types = [t for t in arguments.rstrip(")").split(",") if t]
    conn.execute(f"SELECT {name}({', '.join(f'NULL::{t}' for t in types)})")


def test_no_role_can_attach_or_call_the_service_functions(
    installed: psycopg.Connection, login: Callable[..., psycopg.Connection]
) -> None:
    """A login with a schema of its own once attached kpi_listings_inserted() to a table of its
    own and forged a listing worth 1,000,000,000 into the sums; kpi_truncated() the same way
    forced a rebuild at every applier tick."""
    mallory = login()
    mallory.execute("CREATE TABLE t (id bigint, listed_at timestamptz, price numeric, status text)")
    for signature, *_ in functions(installed):
        if signature.endswith("()"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                mallory.execute(
                    f"CREATE TRIGGER forged AFTER INSERT ON t REFERENCING NEW TABLE AS new_rows"
                    f" FOR EACH STATEMENT EXECUTE FUNCTION {signature}"
                )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            call(mallory, signature)
    assert installed.execute("SELECT count(*) FROM kpi.kpi_sums").fetchone() == (0,)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        mallory.execute("CREATE FUNCTION kpi.kpi_source() RETURNS text LANGUAGE sql AS $$ SELECT 'raw' $$")


def test_the_service_role_calls_what_roles_sql_grants_and_nothing_else(
    installed: psycopg.Connection, login: Callable[..., psycopg.Connection]
) -> None:
    reader = login(reader=True)
    granted = {s for s, callers in manifest(installed, "function").items() if callers == "reader"}
    for signature, *_ in functions(installed):
        if signature in granted:
            try:
                with reader.transaction():
                    call(reader, signature)
            except psycopg.errors.InsufficientPrivilege:  # pragma: no cover - the failure itself
                pytest.fail(f"kpi_reader may not run {signature}")
            except psycopg.Error:
                pass  # NULL arguments, or the applier's refusal outside REPEATABLE READ
        else:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                call(reader, signature)


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
def test_search_paths_are_pinned_when_the_files_are_run_with_plain_psql(empty_database: str) -> None:
    """psql -f commits statement by statement: nothing of one statement's settings reaches the next."""
    with psycopg.connect(empty_database) as conn:
        texts = [
            schema_text(conn, f"schema/{name}", "public")
            for name in ("schema.sql", "decoding.sql", "summary.sql", "capture.sql", "manifest.sql")
        ]
    for text in texts:
        subprocess.run(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", empty_database, "-f", "-"],
            input=text,
            text=True,
            check=True,
            capture_output=True,
        )
    with psycopg.connect(empty_database) as conn:
        for signature, definer, config, public, _ in functions(conn):
            assert not public, signature
            assert config == (PINNED if definer else None), signature


def test_init_db_keeps_the_applications_own_indexes(empty_database: str) -> None:
    """Names earlier versions of the service used, made here by the application itself: init-db
    cannot prove they are its own, so it leaves them."""
    apply_schema(empty_database, summaries=False)
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute("CREATE INDEX ON listings (listed_at)")  # PostgreSQL names it listings_listed_at_idx
        conn.execute("CREATE INDEX leads_buyer_idx ON leads (buyer_id)")
        for _ in range(2):
            apply_schema(empty_database)
        found = conn.execute(
            "SELECT indexname FROM pg_indexes WHERE indexname IN ('listings_listed_at_idx', 'leads_buyer_idx')"
            " ORDER BY 1"
        ).fetchall()
    assert found == [("leads_buyer_idx",), ("listings_listed_at_idx",)]


def running(make_app: Callable[..., Flask], url: str) -> Flask:
    """A service on `url` with its applier running and the mode looked up every 0.1 s."""
    app = make_app(database_url=url, apply_interval=0.02)
    app.extensions["kpi"].db.mode_every = 0.1
    return app


def kpis(app: Flask, auth: dict[str, str], **params: str) -> dict:
    response = app.test_client().get("/api/kpi", query_string=params, headers=auth)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["metrics"]


def test_a_trigger_disabled_under_a_running_service_switches_it_to_the_raw_rows(
    installed: psycopg.Connection, make_app: Callable[..., Flask], auth: dict[str, str]
) -> None:
    app = running(make_app, installed.info.dsn)
    db = app.extensions["kpi"].db
    wait_until(lambda: db._mode == "summaries")
    installed.execute("ALTER TABLE leads DISABLE TRIGGER kpi_leads_insert")
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    installed.execute("INSERT INTO buyers (id, name) VALUES (1, 'b')")
    installed.execute("INSERT INTO leads (buyer_id, created_at, status) VALUES (1, %s, 'open')", [at])
    # Nobody asks for the mode here: the service's own re-check must find it.
    wait_until(lambda: db._mode == "raw")
    window = {"from": "2026-03-01", "to": "2026-03-02"}
    assert kpis(app, auth, **window)["active_buyers"] == 1
    # The summaries missed that lead: enabling the trigger again does not bring them back
    # until init-db builds them anew.
    installed.execute("ALTER TABLE leads ENABLE ALWAYS TRIGGER kpi_leads_insert")
    assert installed.execute("SELECT kpi.kpi_source()").fetchone() == ("raw",)
    apply_schema(installed.info.dsn)
    wait_until(lambda: db._mode == "summaries")
    assert kpis(app, auth, **window, aged_days="61")["active_buyers"] == 1  # another key: computed anew


def test_summaries_installed_under_a_running_service_are_applied(
    empty_database: str, make_app: Callable[..., Flask], auth: dict[str, str]
) -> None:
    apply_schema(empty_database, summaries=False)
    app = running(make_app, empty_database)
    db = app.extensions["kpi"].db
    wait_until(lambda: db._mode == "raw")
    apply_schema(empty_database)
    wait_until(lambda: db._mode == "summaries")
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO listings (price, status, listed_at) VALUES (100, 'active', %s)",
            [datetime.now(UTC) - timedelta(days=1)],
        )
        wait_until(lambda: conn.execute("SELECT kpi.kpi_pending_changes()").fetchone() == (0,))
        assert conn.execute("SELECT sum(listings) FROM kpi.kpi_sums WHERE grain = 900").fetchone() == (1,)
    assert kpis(app, auth)["total_listings"] == 1
