"""kpi-service seed: rows consistent with the tables' rules, in time order, and reproducible."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql

from kpi_service.cli import seed as seeding
from kpi_service.cli.seed import NotEmpty, seed

UNTIL = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
LISTINGS = 3000

# Each query counts the rows that break one rule; all must be 0.
VIOLATIONS = {
    "sold listing without sold_at after listed_at": """
        SELECT count(*) FROM listings WHERE status = 'sold' AND (sold_at IS NULL OR sold_at <= listed_at)""",
    "unsold listing with sold_at": "SELECT count(*) FROM listings WHERE status <> 'sold' AND sold_at IS NOT NULL",
    "sold listing without exactly one purchase": """
        SELECT count(*) FROM listings l
        WHERE l.status = 'sold' AND (SELECT count(*) FROM purchases p WHERE p.listing_id = l.id) <> 1""",
    "purchase not at its listing's sold_at, or of an unsold listing": """
        SELECT count(*) FROM purchases p JOIN listings l ON l.id = p.listing_id
        WHERE l.status <> 'sold' OR p.purchased_at <> l.sold_at""",
    "purchase whose lead is another listing's, another buyer's, or not earlier": """
        SELECT count(*) FROM purchases p JOIN leads ld ON ld.id = p.lead_id
        WHERE ld.listing_id IS DISTINCT FROM p.listing_id OR ld.buyer_id <> p.buyer_id
           OR ld.created_at >= p.purchased_at""",
    "lead converted but unreferenced, or referenced but not converted": """
        SELECT count(*) FROM leads ld
        WHERE (ld.status = 'converted') <> EXISTS (SELECT FROM purchases p WHERE p.lead_id = ld.id)""",
    "dangling reference": """
        SELECT (SELECT count(*) FROM leads ld LEFT JOIN buyers b ON b.id = ld.buyer_id WHERE b.id IS NULL)
             + (SELECT count(*) FROM leads ld LEFT JOIN listings l ON l.id = ld.listing_id
                WHERE ld.listing_id IS NOT NULL AND l.id IS NULL)
             + (SELECT count(*) FROM purchases p LEFT JOIN buyers b ON b.id = p.buyer_id WHERE b.id IS NULL)""",
    "lead or purchase by a buyer who did not exist yet": """
        SELECT (SELECT count(*) FROM leads ld JOIN buyers b ON b.id = ld.buyer_id WHERE b.created_at > ld.created_at)
             + (SELECT count(*) FROM purchases p JOIN buyers b ON b.id = p.buyer_id
                WHERE b.created_at > p.purchased_at)""",
    "lead outside its listing's time on the market": """
        SELECT count(*) FROM leads ld JOIN listings l ON l.id = ld.listing_id
        WHERE ld.created_at < l.listed_at OR ld.created_at >= coalesce(l.sold_at, 'infinity')""",
    "ids not in time order": """
        SELECT (SELECT count(*) FROM (SELECT listed_at < lag(listed_at) OVER (ORDER BY id) AS back FROM listings) t
                WHERE back)
             + (SELECT count(*) FROM (SELECT created_at < lag(created_at) OVER (ORDER BY id) AS back FROM leads) t
                WHERE back)
             + (SELECT count(*) FROM (SELECT purchased_at < lag(purchased_at) OVER (ORDER BY id) AS back
                                      FROM purchases) t WHERE back)""",
    "event after the end of the history": """
        SELECT (SELECT count(*) FROM listings WHERE listed_at > %(until)s OR sold_at > %(until)s)
             + (SELECT count(*) FROM leads WHERE created_at > %(until)s)
             + (SELECT count(*) FROM buyers WHERE created_at > %(until)s)""",
    "listing before the two years": "SELECT count(*) FROM listings WHERE listed_at < %(until)s - interval '730 days'",
    "implausible price, cost or score": """
        SELECT count(*) FROM listings
        WHERE price NOT BETWEEN 2990 AND 80000 OR acquisition_cost > price OR score NOT BETWEEN 0 AND 100""",
}


def digest(conn: psycopg.Connection) -> tuple[str, ...]:
    query = sql.SQL("SELECT md5(string_agg(t::text, ',' ORDER BY t.id)) FROM {} t")
    return tuple(
        conn.execute(query.format(sql.Identifier(table))).fetchone()[0]
        for table in ("buyers", "listings", "leads", "purchases")
    )


def test_rows_keep_the_tables_rules(database_url: str, conn: psycopg.Connection) -> None:
    done = seed(database_url, LISTINGS, seed=7, until=UNTIL)
    assert done.rows["listings"] == LISTINGS
    broken = {rule: n for rule, q in VIOLATIONS.items() if (n := conn.execute(q, {"until": UNTIL}).fetchone()[0])}
    assert broken == {}


def test_rows_are_realistic_and_proportional(database_url: str, conn: psycopg.Connection) -> None:
    done = seed(database_url, LISTINGS, seed=7, until=UNTIL)
    assert done.rows["buyers"] == 1350
    assert 1.5 * LISTINGS < done.rows["leads"] < 2.5 * LISTINGS
    assert 0.6 * LISTINGS < done.rows["purchases"] < 0.9 * LISTINGS
    statuses = dict(conn.execute("SELECT status, count(*) FROM listings GROUP BY status").fetchall())
    assert set(statuses) == {"active", "pending", "sold", "withdrawn"}
    assert set(dict(conn.execute("SELECT status, count(*) FROM leads GROUP BY status").fetchall())) == {
        "open",
        "converted",
        "lost",
    }
    known_cost, scored, median = conn.execute(
        "SELECT avg((acquisition_cost IS NOT NULL)::int), avg((score IS NOT NULL)::int),"
        " percentile_cont(0.5) WITHIN GROUP (ORDER BY price) FROM listings"
    ).fetchone()
    assert 0.85 < known_cost < 0.97 and 0.78 < scored < 0.9 and 12000 < median < 30000
    walk_ins, general = conn.execute(
        "SELECT (SELECT count(*) FROM purchases WHERE lead_id IS NULL),"
        " (SELECT count(*) FROM leads WHERE listing_id IS NULL)"
    ).fetchone()
    assert walk_ins > 0 and general > 0


def test_later_inserts_continue_after_the_seeded_ids(database_url: str, conn: psycopg.Connection) -> None:
    seed(database_url, 200, until=UNTIL)
    buyer = conn.execute("INSERT INTO buyers (name) VALUES ('new') RETURNING id").fetchone()[0]
    listing = conn.execute(
        "INSERT INTO listings (price, status, listed_at) VALUES (1, 'active', now()) RETURNING id"
    ).fetchone()[0]
    assert (buyer, listing) == (91, 201)


def test_same_seed_same_rows_other_seed_other_rows(
    database_url: str, conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(database_url, 500, seed=3, until=UNTIL)
    first = digest(conn)
    # Neither the session time zone nor the foreign-key triggers (kept for a non-superuser)
    # may change a row.
    monkeypatch.setenv("PGTZ", "America/New_York")
    monkeypatch.setattr(seeding, "_skip_row_triggers", lambda conn: False)
    seed(database_url, 500, seed=3, until=UNTIL, truncate=True)
    assert digest(conn) == first
    seed(database_url, 500, seed=4, until=UNTIL, truncate=True)
    assert all(a != b for a, b in zip(digest(conn), first, strict=True))


def test_a_non_empty_database_is_refused_and_left_alone(database_url: str, conn: psycopg.Connection) -> None:
    conn.execute("INSERT INTO buyers (name) VALUES ('someone')")
    with pytest.raises(NotEmpty, match="--truncate"):
        seed(database_url, 100, until=UNTIL)
    assert conn.execute("SELECT count(*) FROM buyers").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM listings").fetchone()[0] == 0


def test_default_history_ends_at_the_current_hour() -> None:
    now = datetime(2026, 11, 25, 14, 59, 59, 999999, tzinfo=UTC)
    assert seeding.default_until(now) == now.replace(minute=0, second=0, microsecond=0)
    assert datetime.now(UTC) - seeding.default_until() < timedelta(hours=1)
