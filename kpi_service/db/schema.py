"""`kpi-service init-db`: the tables, indexes and summaries of sql/schema/ applied to a database."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from importlib import metadata

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from kpi_service.db.decoding import STATEMENTS, Decoder, direct, refusal, slot_name
from kpi_service.db.errors import CaptureRefused, SchemaMismatch
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
# 7: every object of the service in its own schema, kpi (issue 33, item 11), which this service
# names in every statement. 8: the summaries' batches are numbered (kpi_applier_rest.batch, which
# the KPI statement reads) and announce their deltas (issue 37); the decoding capture mode
# (sql/schema/decoding.sql, capture.sql), whose tables stay empty in the trigger mode (issue 34);
# the owner's targets (kpi_targets, issue 36).
SCHEMA_VERSION = 8
# The oldest database schema this service computes right numbers from: 8, since its KPI statement
# reads the summaries' batch number (before 7 the objects were in the sales tables' schema).
OLDEST_DATABASE = 8
# The oldest service this version's objects are right for, recorded with them: raised to
# SCHEMA_VERSION when an older service would misread them (a column's meaning changed, a function
# it calls changed its result), left as it is when the change only adds. 7: a service before 7
# names the objects without a schema, and finds them no more once they are in kpi (it serves
# nothing then: no KPI schema; one whose login's search path reaches kpi reads this row and
# refuses, as it should): replace the instances right after init-db.
OLDEST_SERVICE = 7
# In the decoding mode: a service before 8 has no decoder, and would serve summaries that nothing
# feeds any more (the triggers are gone).
OLDEST_DECODING_SERVICE = 8


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
# The schema of the service's own objects (sql/schema/schema.sql makes it), named in every statement.
SERVICE_SCHEMA = "kpi"
SERVICE_TABLES = (
    "kpi.kpi_sums, kpi.kpi_buyer_buckets, kpi.kpi_sales, kpi.kpi_purchase_facts, kpi.kpi_conversions, kpi.kpi_changes"
)
# The search path of init-db's session: what its files create or name without a schema is kpi's
# or the catalog's, never that of a schema where another role may create.
INSTALL_SEARCH_PATH = "kpi, pg_catalog, pg_temp"


def sales_schema(conn: psycopg.Connection) -> str:
    """The schema of the sales tables: the one init-db (or uninstall) is pointed at, the first of
    its connection's search path that exists (public, normally)."""
    name = conn.execute("SELECT current_schema()").fetchone()[0]
    if name is None or name == SERVICE_SCHEMA:
        raise SchemaMismatch(
            f"the connection's search path finds {'no schema' if name is None else 'kpi, the service schema,'}"
            " first: point DATABASE_URL at the sales tables' schema (options=-c search_path=...)"
        )
    return name


def schema_text(conn: psycopg.Connection, name: str, sales: str) -> str:
    """A file of sql/ with the sales tables' schema filled in: @sales@ as an identifier and
    @sales_name@ as a string, each quoted by psycopg (the files name kpi's objects themselves)."""
    return (
        sql_text(name)
        .replace("@sales_name@", sql.Literal(sales).as_string(conn))
        .replace("@sales@", sql.Identifier(sales).as_string(conn))
    )


def apply_schema(
    conninfo: str,
    *,
    summaries: bool = True,
    aged_days: int = 60,
    progress: Callable[[str], None] | None = None,
    capture: str = "triggers",
    decoding_url: str | None = None,
) -> None:
    """Apply sql/schema/schema.sql, (unless told not to) summary.sql, manifest.sql and indexes.sql, then build
    the summaries from the rows already there, with aged_inventory's fast path for `aged_days`
    (KPI_AGED_DAYS: another value is answered exactly too, from the sales). Idempotent. The application keeps writing
    meanwhile: the tables, functions and triggers go in one short transaction, the indexes are
    built CONCURRENTLY, and the build only reads the sales tables; each step that locks the
    application's tables gives way to its transactions (db/giving_way.py). Then what it built is
    vacuumed and analyzed, so that the first reads have index-only scans and statistics
    without waiting for autovacuum. `progress` is told each step as it begins, with the seconds
    since the start (init-db prints them: at ten million listings the build takes minutes).
    `capture` "decoding" installs no trigger: the changes come from a logical slot on
    `decoding_url` (the primary itself by default, or a physical standby of it), checked first
    (CaptureRefused says what the owner must set), made before the build (kpi_service/db/decoding.py)."""
    started = time.monotonic()

    def step(what: str) -> None:
        if progress is not None:
            progress(f"{time.monotonic() - started:7.1f} s  {what}")

    with contextlib.ExitStack() as stack, psycopg.connect(conninfo, autocommit=True) as conn:
        sales = sales_schema(conn)
        own_path = conn.execute("SELECT current_setting('search_path')").fetchone()[0]
        # Every step, the indexes' expressions included, runs as the owner: what it names without
        # a schema is kpi's or the catalog's, never that of a schema where another role may create.
        conn.execute("SELECT set_config('search_path', %s, false)", [INSTALL_SEARCH_PATH])
        # An install of a version before 7 with summaries has triggers whose functions write the
        # log in the sales schema: summary.sql makes them anew in kpi, so it runs here too.
        summaries = (
            summaries
            or (
                conn.execute(
                    "SELECT EXISTS (SELECT FROM pg_class"
                    " WHERE relname = 'kpi_changes' AND relnamespace = %s::regnamespace)",
                    [sql.Identifier(sales).as_string(conn)],
                ).fetchone()[0]
            )
        )
        # The build's own steps (sql/schema/summary.sql raises them as notices).
        conn.add_notice_handler(
            lambda notice: (
                step(notice.message_primary.removeprefix("kpi-service: "))
                if (notice.message_primary or "").startswith("kpi-service: ")
                else None
            )
        )
        decoding = summaries and capture == "decoding"
        if decoding:
            step("checking the decoding mode's settings")
            server = psycopg.connect(decoding_url or conninfo, autocommit=True)
            stack.callback(server.close)
            if (why := refusal(conn, server)) is not None:
                raise CaptureRefused(why)
        slot = slot_name(conn.execute("SELECT current_database()").fetchone()[0])
        # Back to the triggers from the decoding mode: its slot, which nothing would read any
        # more and which would keep its server's WAL, is dropped once the triggers are in.
        leaving = None
        if summaries and not decoding and conn.execute("SELECT to_regclass('kpi.kpi_decoding')").fetchone()[0]:
            leaving = conn.execute("SELECT slot FROM kpi.kpi_decoding").fetchone()
        step("tables, functions and triggers")

        def objects() -> None:
            _refuse_downgrade(conn)
            conn.execute(schema_text(conn, "schema/schema.sql", sales))
            if summaries:
                conn.execute(
                    "SELECT set_config('kpi.capture', %s, true), set_config('kpi.slot', %s, true)",
                    [capture, slot],
                )
                conn.execute(schema_text(conn, "schema/decoding.sql", sales))
                conn.execute(schema_text(conn, "schema/summary.sql", sales))
                conn.execute(schema_text(conn, "schema/capture.sql", sales))
            conn.execute(schema_text(conn, "schema/manifest.sql", sales))
            conn.execute("DELETE FROM kpi.kpi_schema")
            conn.execute(
                "INSERT INTO kpi.kpi_schema VALUES (%s, %s, %s, now())",
                [SCHEMA_VERSION, OLDEST_DECODING_SERVICE if decoding else OLDEST_SERVICE, service_version()],
            )
            # The service's role keeps its grants through an upgrade (new functions, new forms).
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'kpi_reader'").fetchone():
                # (In the connection's own search path, as psql runs it: it grants the sales tables.)
                conn.execute("SELECT set_config('search_path', %s, true)", [own_path])
                conn.execute(sql_text("ops/roles.sql"))

        # The triggers' DDL locks listings, leads and purchases in turn, each against their writes.
        giving_way(conn, objects, "the tables, functions and triggers", command=AGAIN, say=step)
        step("indexes (built concurrently)")
        giving_way(
            conn,
            lambda: _build_indexes(conn, summaries, sales),
            "the indexes",
            command=AGAIN,
            transaction=False,
            say=step,
        )
        if decoding:
            step("the replication slot")
            _ensure_slot(conn, server, decoding_url or conninfo)
        elif leaving is not None:
            step(f"dropping the decoding mode's replication slot {leaving[0]}")
            with psycopg.connect(decoding_url or conninfo, autocommit=True) as server:
                server.execute(STATEMENTS["drop_slot"], {"slot": leaving[0]})
        if summaries:
            step("waiting for a running applier")
            # Waiting for a running applier (an upgrade beside live instances) before the
            # build's snapshot is taken.
            in_applier_turn(conn, "SELECT true FROM kpi.kpi_build(%s::integer)", [aged_days])
            step("vacuuming and analyzing the summaries")
            conn.execute(f"VACUUM (ANALYZE) {SERVICE_TABLES}")
        step("analyzing the sales tables")
        giving_way(
            conn,
            lambda: conn.execute(
                sql.SQL("ANALYZE {}").format(
                    sql.SQL(", ").join(sql.Identifier(sales, t) for t in ("buyers", "listings", "leads", "purchases"))
                )
            ),
            "analyzing the sales tables",
            command=AGAIN,
            transaction=False,
            say=step,
        )
        step("done")


def _build_indexes(conn: psycopg.Connection, summaries: bool, sales: str) -> None:
    """indexes.sql (and summary_indexes.sql, with the summaries), after dropping any index of
    their names that a build left invalid: IF NOT EXISTS would keep that one, which every write
    maintains and no query reads. (A build that gives way to the application's transactions
    leaves one too, for its next try.)"""
    invalid = conn.execute(
        "SELECT n.nspname, c.relname FROM kpi.kpi_manifest m JOIN pg_index i ON i.indexrelid = to_regclass(m.name)"
        " JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE m.kind = 'index' AND NOT i.indisvalid"
    ).fetchall()
    for schema, name in invalid:
        conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(schema, name)))
    for name in ("schema/indexes.sql", "schema/summary_indexes.sql") if summaries else ("schema/indexes.sql",):
        for statement in _statements(schema_text(conn, name, sales)):
            conn.execute(statement)


def _refuse_downgrade(conn: psycopg.Connection) -> None:
    """A newer release's objects are not replaced by this one's: its instances would stop serving."""
    # (A schema of a version before 7, in the sales tables' schema, is older than this one.)
    if conn.execute("SELECT to_regclass('kpi.kpi_schema') IS NOT NULL").fetchone()[0]:
        row = conn.execute("SELECT version, service FROM kpi.kpi_schema").fetchone()
        if row and row[0] > SCHEMA_VERSION:
            raise SchemaMismatch(
                f"the database holds KPI schema version {row[0]} (kpi-service {row[1]}), newer than this"
                f" kpi-service {service_version()} installs ({SCHEMA_VERSION}): run the newer release's init-db"
            )


def _statements(text: str) -> list[str]:
    """The statements of a file with one per line ending in ";" and no function bodies."""
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("--")]
    return [statement.strip() for statement in "\n".join(lines).split(";\n") if statement.strip()]


def _ensure_slot(conn: psycopg.Connection, server: psycopg.Connection, slot_url: str) -> None:
    """The slot of the decoding mode: kept when it is there and usable (an init-db run again),
    made anew otherwise, before the build, whose snapshot is then later than its consistent point."""
    decoder = Decoder(direct(conn), slot_url)
    try:
        state = decoder.primary("SELECT slot, slot_ok FROM kpi.kpi_decoding_state()")
        status = (
            server.cursor(row_factory=dict_row).execute(STATEMENTS["slot_status"], {"slot": state["slot"]}).fetchone()
        )
        if not state["slot_ok"] or Decoder.problem(state["slot"], status, promoted=False) is not None:
            decoder.make_slot(state["slot"])
    finally:
        decoder.close()
