"""Data shapes the repository's seeder never produces, for the benches of the service's cost.

    .venv/bin/python bench/shapes.py --listings 1000000 --stock 0.35 --years 2 --order random --db NAME \
        [--server postgresql://postgres@127.0.0.1:5432/postgres]

Creates database NAME with the four application tables exactly as the application has them (the
CREATE TABLE statements of sql/schema/schema.sql, read at run time; none of the service's indexes,
summaries or triggers) and fills them in SQL:

- `--listings` listings spread uniformly over `--years` years ending at UNTIL (2026-11-25T00:00Z),
  so that reruns measure the same thing; `--stock` of them still in stock (active or pending),
  5% withdrawn, the rest sold 1 to 120 days after listing (before UNTIL), each with a purchase
  near its price; 80% of purchases have a lead of the same buyer 1 to 60 days before the sale;
  about 2 more leads per listing never convert (open or lost); cost known for 85% of listings,
  score for 70%; buyers: half the listings.
- `--order time` inserts rows in the order of their instant, as the application does;
  `--order random` in random physical order (a table after years of updates and reused space).
  Ids follow the instants either way: only the physical order differs.

Every draw is a hash of (stream, row key), not random(): the same arguments give the same rows
whatever plan PostgreSQL picks (parallel or not). ANALYZE at the end, as the application's
autovacuum would do, but no VACUUM: the visibility map stays empty, as it is before autovacuum
first visits a freshly loaded table. A database that already holds the same shape (recorded
in its table bench_meta) is kept.

Other benches import `ensure()` and `clone()`.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "sql" / "schema" / "schema.sql"
SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
UNTIL = datetime(2026, 11, 25, tzinfo=UTC)
TABLES = ("buyers", "listings", "leads", "purchases")
ORDERS = ("time", "random")
# Bump when the generator's SQL changes, so that databases built by an older one are rebuilt.
VERSION = 1
WITHDRAWN = 0.05


def table_ddl() -> str:
    """The four CREATE TABLE statements of sql/schema/schema.sql, as they are there (not copied here, so
    that a change of the tables reaches the benches)."""
    # (Named there with the placeholder of their schema, which init-db fills in: here, none.)
    text = SCHEMA.read_text(encoding="utf-8").replace("@sales@.", "")
    # Everything after the first index is the service's own; the tables come before it.
    head = text.split("CREATE INDEX", 1)[0]
    statements = re.findall(r"^CREATE TABLE\b.*?^\);", head, flags=re.DOTALL | re.MULTILINE)
    named = {re.search(r"CREATE TABLE\s+(?:IF NOT EXISTS\s+)?(\w+)", s).group(1): s for s in statements}
    # The service's own tables (kpi_schema) may come before the first index too: only the
    # application's are wanted.
    if not set(TABLES) <= set(named):
        raise SystemExit(f"shapes: expected CREATE TABLE of {', '.join(TABLES)} in {SCHEMA}, found {list(named)}")
    return "\n\n".join(named[t] for t in TABLES)


def url_for(server: str, name: str) -> str:
    """The server's URL with database `name`, in the form it was given (a URL stays a URL, so
    that it can be printed and passed as DATABASE_URL or to pgbench as it is)."""
    if "://" in server:
        parts = urlsplit(server)
        return urlunsplit(parts._replace(path="/" + name))
    return make_conninfo(server, dbname=name)


def default_name(listings: int, stock: float, years: int, order: str) -> str:
    """A database name that says the shape, e.g. shape_1000000_s35_y2_random (at most 63 bytes
    with the benches' suffixes)."""
    return f"shape_{listings}_s{round(stock * 100):02d}_y{years}_{order}"


# Session settings of the build: UTC for the timestamptz arithmetic, memory for the sorts.
SETTINGS = (
    "SET LOCAL TimeZone TO 'UTC'",
    "SET LOCAL synchronous_commit TO off",
    "SET LOCAL work_mem TO '256MB'",
    "SET LOCAL maintenance_work_mem TO '512MB'",
)

HELPERS = """
-- A uniform double in [0, 1) from (stream, key): 53 bits of a 64-bit hash.
CREATE FUNCTION pg_temp.u(stream integer, k bigint) RETURNS double precision
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN (hashint8extended(k, 1000003 * stream + 17) & 9007199254740991)::double precision
           / 9007199254740992.0;
"""

# One row per listing with everything later tables need from it; dropped at commit.
PLAN = """
CREATE TEMP TABLE shape_plan ON COMMIT DROP AS
WITH drawn AS (
    SELECT id,
           %(start)s::timestamptz + (%(until)s::timestamptz - %(start)s::timestamptz)
               * ((id - 1 + pg_temp.u(1, id)) / %(listings)s::double precision) AS listed_at,
           pg_temp.u(2, id) AS fate
    FROM generate_series(1, %(listings)s::bigint) AS id
),
fated AS (
    SELECT id, listed_at,
           CASE WHEN fate < %(stock)s THEN CASE WHEN pg_temp.u(3, id) < 0.8 THEN 'active' ELSE 'pending' END
                WHEN fate < %(stock)s + %(withdrawn)s THEN 'withdrawn'
                ELSE 'sold' END AS status,
           listed_at + make_interval(secs => 86400 * (1 + 119 * pg_temp.u(4, id))) AS due
    FROM drawn
)
SELECT id, listed_at, status,
       -- A sale due after UNTIL happened instead at a uniform instant between listing and UNTIL.
       CASE WHEN status <> 'sold' THEN NULL
            WHEN due < %(until)s THEN due
            ELSE listed_at + (%(until)s::timestamptz - listed_at) * (0.999 * pg_temp.u(5, id)) END AS sold_at,
       -- The end of its time on the market: leads arrive before it.
       CASE WHEN status = 'sold' THEN NULL
            WHEN status = 'withdrawn' THEN least(due, %(until)s::timestamptz)
            ELSE %(until)s::timestamptz END AS off_market
FROM fated
"""

LISTINGS = """
INSERT INTO listings (id, make, model, year, price, acquisition_cost, status, listed_at, sold_at, score)
SELECT id,
       (ARRAY['Volkswagen', 'Toyota', 'Ford', 'BMW', 'Audi', 'Skoda', 'Renault', 'Kia', 'Tesla', 'Dacia'])[car],
       (ARRAY['Golf', 'Corolla', 'Focus', '3 Series', 'A4', 'Octavia', 'Clio', 'Sportage', 'Model 3', 'Sandero'])[car],
       date_part('year', listed_at)::integer - floor(13 * pg_temp.u(7, id))::integer,
       price,
       CASE WHEN pg_temp.u(8, id) < 0.85 THEN round((price * (0.70 + 0.22 * pg_temp.u(9, id)))::numeric, 2) END,
       status, listed_at, sold_at,
       CASE WHEN pg_temp.u(10, id) < 0.70
            THEN round((50 * (pg_temp.u(11, id) + pg_temp.u(12, id)))::numeric, 2) END
FROM (
    SELECT p.*, 1 + floor(10 * pg_temp.u(6, id))::integer AS car,
           -- 3,000 to 63,000, mostly cheaper cars, in whole hundreds less 10
           round((3000 + 60000 * pg_temp.u(13, id) * pg_temp.u(14, id))::numeric, -2) - 10 AS price
    FROM shape_plan p
) x
ORDER BY {order}
"""

BUYERS = """
INSERT INTO buyers (id, name, email, created_at)
SELECT b,
       (ARRAY['Anna', 'Ben', 'Clara', 'David', 'Emma', 'Felix', 'Grace', 'Hugo', 'Ida', 'Jonas'])
           [1 + floor(10 * pg_temp.u(40, b))::integer]
       || ' ' ||
       (ARRAY['Adams', 'Becker', 'Costa', 'Dubois', 'Evans', 'Fischer', 'Garcia', 'Hansen', 'Meyer', 'Nowak'])
           [1 + floor(10 * pg_temp.u(41, b))::integer],
       CASE WHEN pg_temp.u(42, b) < 0.9 THEN 'buyer' || b || '@example.com' END,
       -- Every buyer exists before the history starts: no lead or sale predates its buyer.
       %(start)s::timestamptz - make_interval(secs => 86400 * 365 * (1 - (b - 1 + pg_temp.u(43, b)) / %(buyers)s))
FROM generate_series(1, %(buyers)s::bigint) AS b
ORDER BY {order}
"""

# The converting lead of a sale (n = 0) and 0 to 4 others per listing (2 on average) that
# never convert. Ids follow created_at, as the application would have assigned them.
LEADS = """
INSERT INTO leads (id, buyer_id, listing_id, created_at, status)
SELECT id, buyer_id, listing_id, created_at, status
FROM (
    SELECT row_number() OVER (ORDER BY created_at, listing_id, n) AS id, *
    FROM (
        SELECT p.id AS listing_id, 0 AS n,
               1 + floor(%(buyers)s * pg_temp.u(20, p.id))::bigint AS buyer_id,
               p.sold_at - least(make_interval(secs => 86400 * (1 + 59 * pg_temp.u(23, p.id))),
                                 (p.sold_at - p.listed_at) * 0.999) AS created_at,
               'converted' AS status
        FROM shape_plan p
        WHERE p.status = 'sold' AND pg_temp.u(22, p.id) < 0.8
        UNION ALL
        SELECT p.id, n,
               1 + floor(%(buyers)s * pg_temp.u(32, p.id * 8 + n))::bigint,
               t,
               CASE WHEN p.status IN ('active', 'pending') AND t >= %(until)s::timestamptz - interval '45 days'
                    THEN 'open' ELSE 'lost' END
        FROM shape_plan p
        CROSS JOIN LATERAL generate_series(1, floor(5 * pg_temp.u(30, p.id))::integer) AS n
        CROSS JOIN LATERAL (
            SELECT p.listed_at + (coalesce(p.sold_at, p.off_market) - p.listed_at)
                   * (0.999 * pg_temp.u(31, p.id * 8 + n)) AS t
        ) drawn
    ) all_leads
) numbered
ORDER BY {order}
"""

# A purchase per sold listing at its sold_at, by its converting lead's buyer (a walk-in, the
# same draw, when it has no lead), so that the lead and the purchase agree.
PURCHASES = """
INSERT INTO purchases (id, listing_id, buyer_id, lead_id, sale_price, purchased_at)
SELECT row_number() OVER (ORDER BY p.sold_at, p.id) AS id, p.id,
       1 + floor(%(buyers)s * pg_temp.u(20, p.id))::bigint,
       ld.id,
       round((l.price * (0.90 + 0.10 * pg_temp.u(21, p.id)))::numeric, 2),
       p.sold_at
FROM shape_plan p
JOIN listings l ON l.id = p.id
LEFT JOIN leads ld ON ld.listing_id = p.id AND ld.status = 'converted'
WHERE p.status = 'sold'
ORDER BY {order}
"""

# The foreign keys the build skipped (session_replication_role = replica), checked at once.
DANGLING = """
SELECT (SELECT count(*) FROM leads ld WHERE NOT EXISTS (SELECT FROM buyers b WHERE b.id = ld.buyer_id))
     + (SELECT count(*) FROM leads ld
        WHERE ld.listing_id IS NOT NULL AND NOT EXISTS (SELECT FROM listings l WHERE l.id = ld.listing_id))
     + (SELECT count(*) FROM purchases p WHERE NOT EXISTS (SELECT FROM buyers b WHERE b.id = p.buyer_id))
"""


def _meta(listings: int, stock: float, years: int, order: str) -> tuple:
    return (listings, stock, years, order, UNTIL, VERSION, hashlib.md5(table_ddl().encode()).hexdigest())


def _recorded(url: str) -> tuple | None:
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            if conn.execute("SELECT to_regclass('bench_meta')").fetchone()[0] is None:
                return None
            row = conn.execute("SELECT listings, stock, years, ord, until, version, ddl_md5 FROM bench_meta").fetchone()
            return tuple(row) if row else None
    except psycopg.OperationalError:
        return None


def _exists(server: str, name: str) -> bool:
    with psycopg.connect(server, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None


def drop(server: str, name: str) -> None:
    """Drop database `name` if it exists, ending its sessions."""
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def build(url: str, listings: int, stock: float, years: int, order: str) -> dict[str, int]:
    """Fill the empty database at `url` with the shape; the row counts."""
    start = UNTIL.replace(year=UNTIL.year - years)
    params = {
        "listings": listings,
        "stock": stock,
        "withdrawn": WITHDRAWN,
        "start": start,
        "until": UNTIL,
        "buyers": max(20, listings // 2),  # at least the 20 busy buyers of the write benches
    }
    by = {
        "listings": "listed_at, id" if order == "time" else "pg_temp.u(90, id)",
        "buyers": "b" if order == "time" else "pg_temp.u(91, b)",
        "leads": "created_at, id" if order == "time" else "pg_temp.u(92, id)",
        "purchases": "p.sold_at, p.id" if order == "time" else "pg_temp.u(93, p.id)",
    }
    with psycopg.connect(url) as conn:
        for setting in SETTINGS:
            conn.execute(setting)
        superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]
        if superuser:
            # The foreign-key triggers cost one lookup per row; DANGLING checks them all at once.
            conn.execute("SET LOCAL session_replication_role TO replica")
        conn.execute(table_ddl())
        conn.execute(HELPERS)
        conn.execute(PLAN, params)
        conn.execute(LISTINGS.format(order=by["listings"]))
        conn.execute(BUYERS.format(order=by["buyers"]), params)
        conn.execute(LEADS.format(order=by["leads"]), params)
        conn.execute(PURCHASES.format(order=by["purchases"]), params)
        if superuser:
            conn.execute("SET LOCAL session_replication_role TO origin")
            dangling = conn.execute(DANGLING).fetchone()[0]
            if dangling:
                raise SystemExit(f"shapes: {dangling} rows break a foreign key (a bug of the generator)")
        # Later INSERTs without ids (the benches' write mix) continue after the generated ones.
        for table in TABLES:
            conn.execute(
                sql.SQL("SELECT setval(pg_get_serial_sequence({t}, 'id'), max(id)) FROM {i}").format(
                    t=sql.Literal(table), i=sql.Identifier(table)
                )
            )
        conn.execute("ANALYZE buyers, listings, leads, purchases")
        counts = {
            table: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0]
            for table in TABLES
        }
        conn.execute(
            "CREATE TABLE bench_meta (listings bigint, stock double precision, years integer, ord text,"
            " until timestamptz, version integer, ddl_md5 text)"
        )
        conn.execute("INSERT INTO bench_meta VALUES (%s, %s, %s, %s, %s, %s, %s)", _meta(listings, stock, years, order))
    return counts


def ensure(
    server: str, name: str | None, listings: int, stock: float, years: int, order: str, quiet: bool = False
) -> str:
    """The URL of database `name` (default: default_name()) holding the shape: kept when it
    already does, built afresh otherwise."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, not {order!r}")
    if not 0 <= stock <= 1 - WITHDRAWN:
        raise ValueError(f"stock must be between 0 and {1 - WITHDRAWN}, not {stock}")
    if listings < 40:
        raise ValueError("at least 40 listings (the write benches use 20 busy buyers)")
    name = name or default_name(listings, stock, years, order)
    url = url_for(server, name)
    wanted = _meta(listings, stock, years, order)
    if _exists(server, name) and _recorded(url) == wanted:
        if not quiet:
            print(f"{name}: reusing the shape ({listings:,} listings, stock {stock}, {years} years, {order} order)")
        return url
    drop(server, name)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    print(f"{name}: generating {listings:,} listings, stock {stock}, {years} years, {order} order ...", flush=True)
    started = time.perf_counter()
    try:
        counts = build(url, listings, stock, years, order)
    except BaseException:
        drop(server, name)  # a half-built database must not be mistaken for a shape
        raise
    print(f"{name}: generated in {time.perf_counter() - started:.1f} s {counts}", flush=True)
    return url


def clone(server: str, template_name: str, new_name: str) -> str:
    """A copy of database `template_name` as `new_name` (replaced if it exists); its URL."""
    with psycopg.connect(server, autocommit=True) as conn:
        # CREATE DATABASE ... TEMPLATE fails while anyone is connected to the template.
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            [template_name],
        )
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(new_name)))
        # FILE_COPY: one file copy after a checkpoint, instead of WAL for every block (WAL_LOG,
        # PostgreSQL 15's default), which at 1M listings writes a gigabyte of WAL and checkpoints.
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY file_copy").format(
                sql.Identifier(new_name), sql.Identifier(template_name)
            )
        )
    return url_for(server, new_name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose a shape (every bench that builds one takes them)."""
    parser.add_argument("--listings", type=int, default=1_000_000)
    parser.add_argument("--stock", type=float, default=0.35, help="fraction of listings still in stock")
    parser.add_argument("--years", type=int, default=2, help="years of history ending at 2026-11-25T00:00Z")
    parser.add_argument("--order", choices=ORDERS, default="random", help="physical order of the rows")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--db", help="database name (default: shape_<listings>_s<stock%%>_y<years>_<order>)")
    parser.add_argument("--server", default=SERVER, help="a URL of the server (its database is not used)")
    args = parser.parse_args()
    url = ensure(args.server, args.db, args.listings, args.stock, args.years, args.order)
    print(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
