"""Upgrades in place: a database installed by the previous release (its SQL kept under
tests/fixtures/release_9a1bd6c, the commit before the manifest and schema versions) brought to
this one by init-db, with its numbers, its summaries and its service role's grants kept; and a
service refusing a database of a schema version it does not read."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiosql
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from kpi_service.app import create_app
from kpi_service.cli.seed import seed
from kpi_service.db.connections import Database
from kpi_service.db.errors import SchemaMismatch
from kpi_service.db.schema import SCHEMA_VERSION, apply_schema, service_version
from kpi_service.db.sql import in_applier_turn, kpi_statement_rows, windows_rows
from tests.helpers import make_settings

RELEASE = Path(__file__).parent / "fixtures" / "release_9a1bd6c"
# The last release with everything in the sales tables' schema (schema version 6).
IN_PUBLIC = Path(__file__).parent / "fixtures" / "release_ee69c64"
# kpi_sums' rows: their physical place and write, and the columns of that release (then this
# release's long sales).
SUMS = (
    "SELECT ctid::text, xmin::text, grain, bucket, listings, price_sum, scored, score_sum, unsold, leads, converted,"
    " costed, profit_sum, led, lead_seconds, buyer_buckets, buyer_links FROM kpi_sums ORDER BY grain, bucket"
)
SUMS_NOW = (
    "SELECT ctid::text, xmin::text, grain, bucket, listings, price_sum, scored, score_sum, unsold, leads, converted,"
    " costed, profit_sum, led, lead_seconds, buyer_buckets, buyer_links, long_listed, long_sold FROM kpi.kpi_sums"
)
UNTIL = datetime(2026, 11, 1, tzinfo=UTC)
WINDOWS = [
    (None, None, UNTIL),
    (UNTIL - timedelta(days=30), UNTIL, UNTIL),
    (UNTIL - timedelta(days=400), UNTIL - timedelta(days=100), UNTIL - timedelta(days=100)),
    (datetime(2026, 3, 1, 10, 7, tzinfo=UTC), datetime(2026, 6, 1, 3, tzinfo=UTC), UNTIL),  # off the grid
]


def install_previous_release(url: str) -> None:
    """What that release's `kpi-service init-db` and sql/ops/roles.sql did."""
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction():
            conn.execute((RELEASE / "schema.sql").read_text())
            conn.execute((RELEASE / "summary.sql").read_text())
        for line in (RELEASE / "indexes.sql").read_text().splitlines():
            if line.startswith(("CREATE INDEX", "DROP INDEX")):
                conn.execute(line)
        in_applier_turn(conn, "SELECT true FROM kpi_build()")
        conn.execute((RELEASE / "roles.sql").read_text())


def install_schema_version_6(url: str) -> None:
    """What the release of schema version 6 (everything in public) did: its init-db's transaction,
    indexes and build, and sql/ops/roles.sql."""
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction():
            for name in ("schema.sql", "summary.sql", "manifest.sql"):
                conn.execute((IN_PUBLIC / name).read_text())
            conn.execute("INSERT INTO kpi_schema VALUES (6, 2, 'schema version 6', now())")
        for name in ("indexes.sql", "summary_indexes.sql"):
            for line in (IN_PUBLIC / name).read_text().splitlines():
                if line.startswith(("CREATE INDEX", "DROP INDEX")):
                    conn.execute(line)
        in_applier_turn(conn, "SELECT true FROM kpi_build(60)")
        conn.execute((IN_PUBLIC / "roles.sql").read_text())


def left_in_public(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """What of the service's is still in public, but its indexes on the sales tables, which stay there."""
    return conn.execute(
        """
        SELECT 'function', oid::regprocedure::text FROM pg_proc
        WHERE pronamespace = 'public'::regnamespace AND proname LIKE 'kpi\\_%'
        UNION ALL
        SELECT 'relation', relname FROM pg_class
        WHERE relnamespace = 'public'::regnamespace AND relname LIKE 'kpi\\_%'
          AND relname NOT IN ('kpi_listings_listed_at_idx', 'kpi_leads_created_at_idx',
                              'kpi_purchases_purchased_at_idx')
        UNION ALL
        SELECT 'type', typname FROM pg_type WHERE typnamespace = 'public'::regnamespace AND typname LIKE '%kpi\\_%'
        """
    ).fetchall()


def kpis(url: str, mode: str) -> list[dict]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return kpi_statement_rows(conn, mode, WINDOWS, 60)


def previous_kpis(url: str) -> list[dict]:
    """The summaries' numbers as that release's own statement read them (this one's reads
    kpi_buyer_days, which it did not have)."""
    statement = aiosql.from_path(RELEASE / "kpi.sql", "psycopg").kpi_windows
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return windows_rows(statement, conn, WINDOWS, 60)


@pytest.fixture
def service_login(empty_database: str) -> Iterator[str]:
    """A login of the service's role (kpi_reader), for the database: its URL."""
    name = f"kpi_test_service_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    yield make_conninfo(empty_database, user=name)
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_init_db_upgrades_the_previous_release_in_place(empty_database: str, service_login: str) -> None:
    install_previous_release(empty_database)
    seed(empty_database, 400, seed=7, until=UNTIL)
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT kpi_reader TO {}").format(sql.Identifier(conninfo_user(service_login))))
        # Applied, then changes the summaries have not taken in yet.
        in_applier_turn(conn, "SELECT kpi_apply_changes()")
        conn.execute("UPDATE listings SET price = price + 10 WHERE id % 7 = 0")
        conn.execute("DELETE FROM purchases WHERE id % 11 = 0")
        conn.execute("UPDATE leads SET created_at = created_at - interval '3 days' WHERE id % 13 = 0")
        pending = conn.execute("SELECT count(*) FROM kpi_changes").fetchone()[0]
        sums = conn.execute(SUMS).fetchall()
        assert pending > 0 and sums
        before = previous_kpis(empty_database)

    # The service of this release refuses the old schema rather than guess.
    db = Database(make_settings(service_login))
    try:
        with pytest.raises(SchemaMismatch, match=r"schema version 1, older.*init-db"):
            db.kpi_rows(WINDOWS, 60)
    finally:
        db.close()

    apply_schema(empty_database)

    with psycopg.connect(empty_database, autocommit=True) as conn:
        # Not rebuilt: a rebuild empties the change log and rewrites every row of the sums. The
        # long sales are counted into the rows of their buckets (version 6), the rest stay.
        assert conn.execute("SELECT count(*) FROM kpi.kpi_changes").fetchone()[0] == pending
        had = {row[2:4]: row for row in sums}
        now = {row[2:4]: row for row in conn.execute(SUMS_NOW).fetchall()}
        assert all(now[key][2:-2] == row[2:] for key, row in had.items())
        assert all(now[key][:2] == row[:2] for key, row in had.items() if now[key][-2:] == (0, 0))
        assert all(row[4:-2] == (0,) * len(row[4:-2]) for key, row in now.items() if key not in had)
        assert any(row[-2:] == (0, 0) for row in now.values()) and any(row[-2] for row in now.values())
        assert conn.execute("SELECT version, service FROM kpi.kpi_schema").fetchall() == [
            (SCHEMA_VERSION, service_version())
        ]
        assert left_in_public(conn) == []
    # The numbers the summaries held are the ones they hold now (kpi_buyer_days counted from
    # kpi_buyer_buckets, nothing rebuilt).
    assert kpis(empty_database, "summaries") == before

    # The service's role still reads and applies; then the numbers are those of the raw rows.
    db = Database(make_settings(service_login))
    try:
        assert db.mode(refresh=True) == "summaries"
        assert db.apply_changes(wait=True) == pending
        rows, *_ = db.kpi_rows(WINDOWS, 60)
    finally:
        db.close()
    assert rows == kpis(empty_database, "raw")
    assert rows != before  # (the writes changed something the windows see)


def conninfo_user(url: str) -> str:
    return psycopg.conninfo.conninfo_to_dict(url)["user"]


def test_a_service_refuses_a_newer_schema_and_readyz_says_why(empty_database: str) -> None:
    apply_schema(empty_database)
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute("UPDATE kpi.kpi_schema SET version = %s, oldest_service = %s", [SCHEMA_VERSION + 1] * 2)
    app = create_app(make_settings(empty_database))
    try:
        response = app.test_client().get("/readyz")
        assert response.status_code == 503
        body = response.get_json()
        assert body["status"] == "incompatible"
        assert f"schema version {SCHEMA_VERSION + 1}" in body["message"] and "upgrade this service" in body["message"]
        assert body["version"] == {
            "service": service_version(),
            "schema": SCHEMA_VERSION,
            "database_schema": SCHEMA_VERSION + 1,
        }
        # Nor does it apply: an older applier could write what the newer schema reads wrong.
        with pytest.raises(SchemaMismatch):
            app.extensions["kpi"].db.mode(refresh=True, primary=True)
    finally:
        app.extensions["kpi"].close()

    # A newer schema that older services read right (it only added) is served.
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute("UPDATE kpi.kpi_schema SET oldest_service = %s", [SCHEMA_VERSION])
    app = create_app(make_settings(empty_database))
    try:
        assert app.test_client().get("/readyz").status_code == 200
    finally:
        app.extensions["kpi"].close()


def test_init_db_does_not_downgrade(empty_database: str) -> None:
    apply_schema(empty_database)
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute("UPDATE kpi.kpi_schema SET version = %s", [SCHEMA_VERSION + 1])
    with pytest.raises(SchemaMismatch, match="newer than this"):
        apply_schema(empty_database)


def test_an_upgrade_with_a_backlog_keeps_the_sold_listings(empty_database: str) -> None:
    """Issue 33, item 8: the previous release's applier looked a listing up ahead of its log (its
    kpi_sales row is the listing as it is), and its log still holds the images of the last sale
    moved; the upgrade must not count them again."""
    install_previous_release(empty_database)
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute("INSERT INTO listings (id, price, status, listed_at, sold_at) VALUES"
                     " (1, 100, 'sold', '2025-01-01T00:00Z', '2025-03-01T00:00Z')")  # fmt: skip
        in_applier_turn(conn, "SELECT kpi_apply_changes()")
        conn.execute("UPDATE listings SET sold_at = '2025-05-01T00:00Z' WHERE id = 1")
        conn.execute("UPDATE listings SET sold_at = '2025-08-01T00:00Z' WHERE id = 1")
        # The old applier takes the first move's rows, and looks the listing up.
        in_applier_turn(conn, "SELECT kpi_apply_changes(2)")
        assert conn.execute("SELECT count(*) FROM kpi_changes").fetchone() == (2,)
    apply_schema(empty_database)
    with psycopg.connect(empty_database, autocommit=True) as conn:
        in_applier_turn(conn, "SELECT kpi.kpi_apply_changes()")
        assert conn.execute("SELECT listing_id, sold_at, n FROM kpi.kpi_sales").fetchall() == [
            (1, datetime(2025, 8, 1, tzinfo=UTC), 1)
        ]
    # aged_inventory on 2025-07-15 (listed more than 60 days before, sold after it): 1.
    as_of = datetime(2025, 7, 15, tzinfo=UTC)
    window = [(None, as_of, as_of)]
    with psycopg.connect(empty_database, row_factory=dict_row) as conn:
        summed = kpi_statement_rows(conn, "summaries", window, 60)
        assert summed == kpi_statement_rows(conn, "raw", window, 60)
    assert summed[0]["aged_inventory"] == 1


def test_init_db_moves_schema_version_6_out_of_public_in_place(empty_database: str, service_login: str) -> None:
    """Issue 33, item 11: the objects of schema version 6, in public, move into kpi with
    ALTER ... SET SCHEMA: the summaries' rows where they were (no rewrite, no rebuild), the log's
    backlog kept, the triggers calling kpi's functions, nothing of the service's left in public,
    and the service's role still reading and applying."""
    install_schema_version_6(empty_database)
    seed(empty_database, 300, seed=11, until=UNTIL)
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT kpi_reader TO {}").format(sql.Identifier(conninfo_user(service_login))))
        in_applier_turn(conn, "SELECT kpi_apply_changes()")
        conn.execute("UPDATE listings SET price = price + 10 WHERE id % 5 = 0")
        conn.execute("UPDATE leads SET created_at = created_at + interval '2 days' WHERE id % 7 = 0")
        pending = conn.execute("SELECT count(*) FROM kpi_changes").fetchone()[0]
        sums = conn.execute("SELECT ctid::text, xmin::text, * FROM kpi_sums ORDER BY grain, bucket").fetchall()
        assert pending > 0 and sums

    apply_schema(empty_database)

    with psycopg.connect(empty_database, autocommit=True) as conn:
        assert (
            conn.execute("SELECT ctid::text, xmin::text, * FROM kpi.kpi_sums ORDER BY grain, bucket").fetchall() == sums
        )
        assert conn.execute("SELECT count(*) FROM kpi.kpi_changes").fetchone()[0] == pending
        assert left_in_public(conn) == []
        assert conn.execute(
            "SELECT DISTINCT p.pronamespace::regnamespace::text FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid"
            " WHERE NOT t.tgisinternal"
        ).fetchall() == [("kpi",)]
    db = Database(make_settings(service_login))
    try:
        assert db.mode(refresh=True) == "summaries"
        assert db.apply_changes(wait=True) == pending
        rows, *_ = db.kpi_rows(WINDOWS, 60)
    finally:
        db.close()
    assert rows == kpis(empty_database, "raw")
