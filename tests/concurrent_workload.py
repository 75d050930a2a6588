"""Concurrent writers against the service's own applier, and the check that, once the writes stop
and the change log drains, every window computed from the summaries equals the raw rows (issue
33, "Numbers that cannot drift").

Shared by tests/test_concurrent_exactness.py (a few seconds, in `make test`) and
bench/concurrent_exactness.py (the full run). A run: a scratch database after init-db, with the
server's TimeZone set for it; ~3,000 listings seeded around March 2026 (both DST changes of
Europe/Berlin and America/New_York); the service (create_app) running its applier at the default
interval and pacing; writers of every kind, and a thread that vacuums the log and the sales
tables, for a fixed time; then the log drained, and the KPI statement on the summaries compared
with the raw statement, with the service's HTTP answer, and the summaries' tables with a rebuild.
"""

from __future__ import annotations

import contextlib
import heapq
import multiprocessing
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import jwt
import psycopg
from prometheus_client import REGISTRY
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from kpi_service.app import create_app
from kpi_service.config import Settings
from kpi_service.db.schema import apply_schema
from kpi_service.db.sql import kpi_statement_rows
from kpi_service.serving.windows import Window
from tests.dataset import beside_a_rebuild

# The seeded and written instants: around March 2026, with both DST changes inside.
FIRST = datetime(2026, 2, 20, tzinfo=UTC)
LAST = datetime(2026, 4, 15, tzinfo=UTC)
# Some stock listed long before, so that aged_inventory is not 0 at the windows' ends.
OLD = datetime(2025, 12, 1, tzinfo=UTC)
# America/New_York at 2026-03-08 02:00 EST, Europe/Berlin at 2026-03-29 02:00 CET.
DST_CHANGES = (datetime(2026, 3, 8, 7, tzinfo=UTC), datetime(2026, 3, 29, 1, tzinfo=UTC))
# Moves of leads and purchases, as intervals: in a zone with DST, "1 day" across a change is 23
# or 25 hours, so the server's TimeZone changes what the writers write.
MOVES = ("1 hour", "-1 hour", "3 hours", "-5 hours", "1 day", "-1 day", "2 days", "-3 days", "23 hours", "25 hours")
WRITER_NAME = "kpi-concurrent-writer"
JWT_SECRET = "concurrent-exactness-secret-of-at-least-32-bytes"
SUMMARY_TABLES = (
    "kpi_sums",
    "kpi_buyer_buckets",
    "kpi_buyer_days",
    "kpi_sales",
    "kpi_purchase_facts",
    "kpi_conversions",
)
AGED_DAYS = (60, 30)  # the recorded one (bucket path) and another (sales path)


def instant(rng: random.Random) -> datetime:
    """A written instant: often within a day and a half of a DST change, else anywhere in range."""
    if rng.random() < 0.4:
        return rng.choice(DST_CHANGES) + timedelta(seconds=rng.uniform(-36 * 3600, 36 * 3600))
    return FIRST + (LAST - FIRST) * rng.random()


def money(rng: random.Random, low: int, high: int) -> Decimal:
    return Decimal(rng.randrange(low * 100, high * 100)) / 100


# --- the scratch database and its seed --------------------------------------------------------


@contextlib.contextmanager
def scratch_database(server_url: str, timezone: str, prefix: str = "kpi_conc") -> Iterator[str]:
    """A database of its own, its sessions' TimeZone set to `timezone`, after init-db; dropped after."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        # ALTER DATABASE takes no parameters: the zone is a literal, quoted by psycopg.sql.
        conn.execute(sql.SQL("ALTER DATABASE {} SET timezone = {}").format(sql.Identifier(name), sql.Literal(timezone)))
    url = make_conninfo(server_url, dbname=name)
    try:
        apply_schema(url)
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@dataclass(frozen=True)
class Seeded:
    """The id ranges the seed made: writers pick rows to change from them (and their own rows)."""

    listings: int
    buyers: int
    leads: int


def seed(url: str, listings: int, rng: random.Random) -> Seeded:
    """`listings` listings with buyers, two leads each and a purchase for about a third, by COPY."""
    buyers = max(10, listings // 2)
    lead_count = 2 * listings
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction(), conn.cursor() as cur:
        with cur.copy("COPY buyers (id, name) FROM STDIN") as copy:
            for b in range(1, buyers + 1):
                copy.write_row((b, f"buyer {b}"))
        unused_leads = list(range(1, lead_count + 1))
        rng.shuffle(unused_leads)
        lead_at = {i: instant(rng) for i in range(1, lead_count + 1)}
        with cur.copy("COPY leads (id, buyer_id, listing_id, created_at, status) FROM STDIN") as copy:
            for i, at in lead_at.items():
                copy.write_row((i, rng.randint(1, buyers), None, at, "open"))
        purchases = []
        with cur.copy(
            "COPY listings (id, price, acquisition_cost, status, listed_at, sold_at, score) FROM STDIN"
        ) as copy:
            for i in range(1, listings + 1):
                listed_at = OLD + (FIRST - OLD) * rng.random() if rng.random() < 0.2 else instant(rng)
                status = rng.choices(("sold", "active", "pending", "withdrawn"), (35, 45, 10, 10))[0]
                sold_at = listed_at + timedelta(hours=rng.uniform(1, 40 * 24)) if status == "sold" else None
                cost = money(rng, 3000, 40000) if rng.random() < 0.7 else None
                score = money(rng, 0, 100) if rng.random() < 0.8 else None
                copy.write_row((i, money(rng, 5000, 60000), cost, status, listed_at, sold_at, score))
                if sold_at is not None:
                    lead = unused_leads.pop() if rng.random() < 0.7 else None
                    buyer = rng.randint(1, buyers)
                    purchases.append((i, i, buyer, lead, money(rng, 4000, 65000), sold_at))
        with cur.copy(
            "COPY purchases (id, listing_id, buyer_id, lead_id, sale_price, purchased_at) FROM STDIN"
        ) as copy:
            for row in purchases:
                copy.write_row(row)
        for table in ("buyers", "listings", "leads", "purchases"):
            cur.execute(
                sql.SQL("SELECT setval(pg_get_serial_sequence({t}, 'id'), (SELECT max(id) FROM {i}))").format(
                    t=sql.Literal(table), i=sql.Identifier(table)
                )
            )
        conn.execute("ANALYZE buyers, listings, leads, purchases")
    return Seeded(listings=listings, buyers=buyers, leads=lead_count)


# --- the writers -------------------------------------------------------------------------------


@dataclass
class WriterCounts:
    transactions: int = 0
    failed: Counter[str] = field(default_factory=Counter)  # by error and kind of change
    kinds: Counter[str] = field(default_factory=Counter)  # committed transactions by kind

    def add(self, other: WriterCounts) -> None:
        self.transactions += other.transactions
        self.failed.update(other.failed)
        self.kinds.update(other.kinds)


class Writer:
    """One application session writing a random mix of every kind of change, in autocommit
    transactions. It changes rows by id from the seeded ranges and the rows it made itself; a
    row another writer deleted is simply not found."""

    def __init__(self, conn: psycopg.Connection, seeded: Seeded, rng: random.Random) -> None:
        self.conn = conn
        self.seeded = seeded
        self.rng = rng
        self.counts = WriterCounts()
        self.listings: list[int] = []
        self.leads: list[int] = []
        # New buyers' leads waiting to be deleted, a fraction of a second after their commit (a
        # heap by due time).
        self.fleeting: list[tuple[float, int, int]] = []
        # Kinds of change and their weights: about a transaction a step each (fleeting leads make
        # two, their deletion coming later), the bulk ones rare.
        self.kinds: list[tuple[str, Callable[[], None]]] = [
            ("new_listing", self.new_listing),
            ("new_lead", self.new_lead),
            ("sale", self.sale),
            ("twice_in_one", self.twice_in_one),
            ("twice_in_two", self.twice_in_two),
            ("fleeting_lead", self.fleeting_lead),
            ("move_lead", self.move_lead),
            ("move_purchase", self.move_purchase),
            ("restatus", self.restatus),
            ("cost", self.cost),
            ("bulk_price", self.bulk_price),
            ("upsert_listing", self.upsert_listing),
            ("upsert_purchase", self.upsert_purchase),
            ("copy", self.copy),
            ("delete_purchase", self.delete_purchase),
            ("delete_lead", self.delete_lead),
            ("delete_listing", self.delete_listing),
            ("rebuy", self.rebuy),
        ]
        self.weights = [10, 12, 8, 6, 6, 8, 8, 6, 6, 5, 1, 4, 3, 1, 3, 3, 1, 4]

    # Ids: mostly seeded rows, sometimes one this writer made.
    def listing(self) -> int:
        if self.listings and self.rng.random() < 0.2:
            return self.rng.choice(self.listings)
        return self.rng.randint(1, self.seeded.listings)

    def lead(self) -> int:
        if self.leads and self.rng.random() < 0.2:
            return self.rng.choice(self.leads)
        return self.rng.randint(1, self.seeded.leads)

    def buyer(self) -> int:
        return self.rng.randint(1, self.seeded.buyers)

    def move(self) -> str:
        return self.rng.choice(MOVES)

    def step(self) -> None:
        """One unit of work: a due deletion of a fleeting lead, or a change of a random kind."""
        if self.fleeting and self.fleeting[0][0] <= time.monotonic():
            _, lead, buyer = heapq.heappop(self.fleeting)
            self.run("fleeting_delete", lambda: self.delete_fleeting(lead, buyer))
            return
        name, change = self.rng.choices(self.kinds, self.weights)[0]
        self.run(name, change)

    def run(self, name: str, change: Callable[[], None]) -> None:
        try:
            change()
        except psycopg.errors.Error as error:
            # Deadlocks, serialization failures and foreign keys racing another writer's delete:
            # the application's own business, counted. The session is in autocommit, so nothing
            # is left open.
            self.counts.failed[f"{type(error).__name__} ({name})"] += 1
            return
        self.counts.kinds[name] += 1

    def commit(self, statements: list[tuple[str, list[Any]]]) -> list[Any]:
        """The statements in one transaction; their first rows."""
        rows = []
        # A single statement commits by itself (autocommit): no BEGIN and COMMIT round trips.
        with self.conn.transaction() if len(statements) > 1 else contextlib.nullcontext():
            for statement, params in statements:
                cur = self.conn.execute(statement, params)
                rows.append(cur.fetchone() if cur.description else None)
        self.counts.transactions += 1
        return rows

    def new_listing(self) -> None:
        rng = self.rng
        sold = rng.random() < 0.2
        listed_at = instant(rng)
        (row,) = self.commit(
            [
                (
                    "INSERT INTO listings (price, acquisition_cost, status, listed_at, sold_at, score)"
                    " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                    [
                        money(rng, 5000, 60000),
                        money(rng, 3000, 40000) if rng.random() < 0.7 else None,
                        "sold" if sold else "active",
                        listed_at,
                        listed_at + timedelta(hours=rng.uniform(0, 500)) if sold else None,
                        money(rng, 0, 100) if rng.random() < 0.5 else None,
                    ],
                )
            ]
        )
        self.listings.append(row[0])

    def new_lead(self) -> None:
        (row,) = self.commit(
            [
                (
                    "INSERT INTO leads (buyer_id, listing_id, created_at, status) VALUES (%s, NULL, %s, 'open')"
                    " RETURNING id",
                    [self.buyer(), instant(self.rng)],
                )
            ]
        )
        self.leads.append(row[0])

    def sale(self) -> None:
        """A purchase of a listing (none if it has one, or its lead made another sale), the
        listing marked sold at the same instant."""
        listing, at = self.listing(), instant(self.rng)
        lead = self.lead() if self.rng.random() < 0.7 else None
        self.commit(
            [
                (
                    "INSERT INTO purchases (listing_id, buyer_id, lead_id, sale_price, purchased_at)"
                    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    [listing, self.buyer(), lead, money(self.rng, 4000, 65000), at],
                ),
                ("UPDATE listings SET status = 'sold', sold_at = %s WHERE id = %s", [at, listing]),
            ]
        )

    def twice_in_one(self) -> None:
        listing = self.listing()
        self.commit(
            [
                ("UPDATE listings SET price = price + %s WHERE id = %s", [money(self.rng, 1, 500), listing]),
                (
                    "UPDATE listings SET score = %s, listed_at = listed_at + %s::interval WHERE id = %s",
                    [money(self.rng, 0, 100), self.move(), listing],
                ),
            ]
        )
        lead = self.lead()
        self.commit(
            [
                ("UPDATE leads SET created_at = created_at + %s::interval WHERE id = %s", [self.move(), lead]),
                ("UPDATE leads SET buyer_id = %s WHERE id = %s", [self.buyer(), lead]),
            ]
        )

    def twice_in_two(self) -> None:
        """A row updated in two transactions in a row, the first leaving what the second changes
        as it was: a listing's cost (which its purchase's profit reads), the instant of a lead a
        purchase names (its lead time), and a listing's instant."""
        listing = self.listing()
        if self.rng.random() < 0.5:
            self.commit([("UPDATE listings SET price = price + 1, score = NULL WHERE id = %s", [listing])])
            self.commit(
                [("UPDATE listings SET listed_at = %s, score = %s WHERE id = %s", [instant(self.rng), 50, listing])]
            )
            return
        cost = money(self.rng, 3000, 40000) if self.rng.random() < 0.8 else None
        self.commit([("UPDATE listings SET price = price + 1 WHERE id = %s", [listing])])
        self.commit([("UPDATE listings SET acquisition_cost = %s WHERE id = %s", [cost, listing])])
        self.commit(
            [
                (
                    "UPDATE leads SET status = 'converted'"
                    " WHERE id = (SELECT lead_id FROM purchases WHERE listing_id = %s)",
                    [listing],
                )
            ]
        )
        self.commit(
            [
                (
                    "UPDATE leads SET created_at = created_at + %s::interval"
                    " WHERE id = (SELECT lead_id FROM purchases WHERE listing_id = %s)",
                    [self.move(), listing],
                )
            ]
        )

    def fleeting_lead(self) -> None:
        """A new buyer's lead, deleted with the buyer a fraction of a second later (step())."""
        buyer, lead = self.commit(
            [
                ("INSERT INTO buyers (name) VALUES ('fleeting') RETURNING id", []),
                (
                    "INSERT INTO leads (buyer_id, created_at, status)"
                    " VALUES (currval(pg_get_serial_sequence('buyers', 'id')), %s, 'open') RETURNING id",
                    [instant(self.rng)],
                ),
            ]
        )
        heapq.heappush(self.fleeting, (time.monotonic() + self.rng.uniform(0.02, 0.5), lead[0], buyer[0]))

    def delete_fleeting(self, lead: int, buyer: int) -> None:
        self.commit(
            [
                ("DELETE FROM leads WHERE id = %s", [lead]),
                ("DELETE FROM buyers WHERE id = %s", [buyer]),
            ]
        )

    def move_lead(self) -> None:
        if self.rng.random() < 0.5:
            self.commit(
                [("UPDATE leads SET created_at = created_at + %s::interval WHERE id = %s", [self.move(), self.lead()])]
            )
        else:
            self.commit([("UPDATE leads SET created_at = %s WHERE id = %s", [instant(self.rng), self.lead()])])

    def move_purchase(self) -> None:
        listing, move = self.listing(), self.move()
        self.commit(
            [
                (
                    "UPDATE purchases SET purchased_at = purchased_at + %s::interval WHERE listing_id = %s",
                    [move, listing],
                ),
                ("UPDATE listings SET sold_at = sold_at + %s::interval WHERE id = %s", [move, listing]),
            ]
        )

    def restatus(self) -> None:
        """Sold, withdrawn or relisted: the stock of aged_inventory."""
        listing = self.listing()
        choice = self.rng.randrange(3)
        if choice == 0:
            statement = "UPDATE listings SET status = 'sold', sold_at = listed_at + %s::interval WHERE id = %s"
            self.commit([(statement, [self.rng.choice(("5 days", "40 days", "70 days", "3 hours")), listing])])
        elif choice == 1:
            self.commit([("UPDATE listings SET status = 'withdrawn' WHERE id = %s", [listing])])
        else:
            self.commit([("UPDATE listings SET status = 'active', sold_at = NULL WHERE id = %s", [listing])])

    def cost(self) -> None:
        cost = money(self.rng, 3000, 40000) if self.rng.random() < 0.6 else None
        self.commit([("UPDATE listings SET acquisition_cost = %s WHERE id = %s", [cost, self.listing()])])

    def bulk_price(self) -> None:
        low = self.rng.randint(1, self.seeded.listings)
        self.commit([("UPDATE listings SET price = price + 1 WHERE id BETWEEN %s AND %s", [low, low + 300])])

    def upsert_listing(self) -> None:
        """An existing id (or one another writer deleted, then inserted again)."""
        listing = self.rng.randint(1, self.seeded.listings)
        self.commit(
            [
                (
                    "INSERT INTO listings (id, price, status, listed_at, score) VALUES (%s, %s, 'active', %s, %s)"
                    " ON CONFLICT (id) DO UPDATE SET price = EXCLUDED.price, listed_at = EXCLUDED.listed_at,"
                    " score = EXCLUDED.score",
                    [listing, money(self.rng, 5000, 60000), instant(self.rng), money(self.rng, 0, 100)],
                )
            ]
        )

    def upsert_purchase(self) -> None:
        listing, at = self.listing(), instant(self.rng)
        self.commit(
            [
                (
                    "INSERT INTO purchases (listing_id, buyer_id, sale_price, purchased_at) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT (listing_id) DO UPDATE SET sale_price = EXCLUDED.sale_price,"
                    " purchased_at = EXCLUDED.purchased_at, buyer_id = EXCLUDED.buyer_id",
                    [listing, self.buyer(), money(self.rng, 4000, 65000), at],
                )
            ]
        )

    def copy(self) -> None:
        """A small load by COPY: listings, and leads of existing buyers."""
        rng = self.rng
        with self.conn.transaction(), self.conn.cursor() as cur:
            with cur.copy("COPY listings (price, acquisition_cost, status, listed_at, score) FROM STDIN") as copy:
                for _ in range(20):
                    copy.write_row((money(rng, 5000, 60000), money(rng, 3000, 40000), "active", instant(rng), None))
            with cur.copy("COPY leads (buyer_id, created_at, status) FROM STDIN") as copy:
                for _ in range(20):
                    copy.write_row((self.buyer(), instant(rng), "open"))
        self.counts.transactions += 1

    def delete_purchase(self) -> None:
        listing = self.listing()
        self.commit(
            [
                ("DELETE FROM purchases WHERE listing_id = %s", [listing]),
                ("UPDATE listings SET status = 'active', sold_at = NULL WHERE id = %s", [listing]),
            ]
        )

    def delete_lead(self) -> None:
        self.commit(
            [
                (
                    "DELETE FROM leads l WHERE l.id = %s"
                    " AND NOT EXISTS (SELECT FROM purchases p WHERE p.lead_id = l.id)",
                    [self.lead()],
                )
            ]
        )

    def delete_listing(self) -> None:
        """One of this writer's listings without a purchase or lead (those of others may race it)."""
        if not self.listings:
            return
        listing = self.listings.pop(self.rng.randrange(len(self.listings)))
        self.commit(
            [
                (
                    "DELETE FROM listings l WHERE l.id = %s"
                    " AND NOT EXISTS (SELECT FROM purchases p WHERE p.listing_id = l.id)"
                    " AND NOT EXISTS (SELECT FROM leads d WHERE d.listing_id = l.id)",
                    [listing],
                )
            ]
        )

    def rebuy(self) -> None:
        """A purchase's buyer or lead changed: active_buyers and conversions move between buyers."""
        if self.rng.random() < 0.5:
            self.commit([("UPDATE purchases SET buyer_id = %s WHERE listing_id = %s", [self.buyer(), self.listing()])])
        else:
            lead = self.lead() if self.rng.random() < 0.5 else None
            self.commit([("UPDATE purchases SET lead_id = %s WHERE listing_id = %s", [lead, self.listing()])])


def write(url: str, seeded: Seeded, seconds: float, seed: int, start: Any) -> WriterCounts:
    """One writer for `seconds`, from when every writer is connected (`start`, a barrier).
    Fleeting leads still due at the end are deleted before returning."""
    with psycopg.connect(url, autocommit=True, application_name=WRITER_NAME) as conn:
        writer = Writer(conn, seeded, random.Random(seed))
        start.wait()
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            writer.step()
        for _, lead, buyer in writer.fleeting:
            writer.run("fleeting_delete", lambda lead=lead, buyer=buyer: writer.delete_fleeting(lead, buyer))
        return writer.counts


def vacuum(url: str, stop: threading.Event, rng: random.Random) -> int:
    """VACUUM the change log and the sales tables every 1-4 s until stopped; how many rounds."""
    rounds = 0
    with psycopg.connect(url, autocommit=True, application_name=WRITER_NAME) as conn:
        while not stop.wait(rng.uniform(1, 4)):
            conn.execute("VACUUM kpi.kpi_changes")
            conn.execute("VACUUM listings, leads, purchases")
            rounds += 1
    return rounds


# --- the service ---------------------------------------------------------------------------------


def service_settings(url: str, redis_url: str | None, busy_percent: int | None = None) -> Settings:
    """The service as deployed: the applier at its default interval and pacing (KPI_APPLY_INTERVAL_MS
    and, unless `busy_percent` is given, KPI_APPLY_BUSY_PERCENT unset). Without Redis, the
    development stand-in in the process."""
    environ = {"KPI_APPLY_BUSY_PERCENT": str(busy_percent)} if busy_percent is not None else {}
    if redis_url:
        return Settings.from_env(
            environ, jwt_secret_key=JWT_SECRET, database_url=url, redis_url=redis_url, log_level="WARNING"
        )
    return Settings.from_env(
        environ, jwt_secret_key=JWT_SECRET, database_url=url, env="development", log_level="WARNING"
    )


def bearer() -> dict[str, str]:
    claims = {"sub": "concurrent-exactness", "exp": datetime.now(UTC) + timedelta(hours=1)}
    return {"Authorization": f"Bearer {jwt.encode(claims, JWT_SECRET, algorithm='HS256')}"}


# --- the comparison ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Shown:
    """A window as a dashboard asks for it, and as the statement takes it."""

    name: str
    first: date | None
    last: date | None
    tz: str

    @property
    def window(self) -> Window:
        return Window.of_dates(self.first, self.last, self.tz)

    def query(self, aged_days: int) -> str:
        days = "".join(f"&{k}={v}" for k, v in (("from", self.first), ("to", self.last)) if v is not None)
        return f"/api/kpi?tz={self.tz}&aged_days={aged_days}{days}"


def shown_windows() -> list[Shown]:
    """The three Berlin weeks of March 2026 in three zones, both DST days, and all time."""
    weeks = [
        (date(2026, 3, 16), date(2026, 3, 22)),
        (date(2026, 3, 23), date(2026, 3, 29)),
        (date(2026, 3, 30), date(2026, 4, 5)),
    ]
    shown = [
        Shown(f"{first:%d %b}-{last:%d %b} {tz}", first, last, tz)
        for tz in ("Europe/Berlin", "UTC", "America/New_York")
        for first, last in weeks
    ]
    shown.append(Shown("29 Mar (DST) Europe/Berlin", date(2026, 3, 29), date(2026, 3, 29), "Europe/Berlin"))
    shown.append(Shown("08 Mar (DST) America/New_York", date(2026, 3, 8), date(2026, 3, 8), "America/New_York"))
    shown.append(Shown("all time UTC", None, None, "UTC"))
    return shown


@dataclass
class Comparison:
    windows: int = 0  # window and aged_days pairs compared
    http: int = 0  # of them also compared with the HTTP answer
    mismatches: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)  # per window: the summaries' numbers


def plain(metrics: dict[str, Any]) -> dict[str, float]:
    """Numbers as JSON carries them: the statement's Decimals and the body's floats compared alike."""
    return {k: float(v) for k, v in metrics.items()}


def compare_windows(url: str, client: Any | None, stopped_at: datetime) -> Comparison:
    """Every shown window, for each aged_days, from the summaries against the raw rows and (with
    a Flask test client) the service's answer, once that answer includes every commit before
    `stopped_at`, the end of the writes."""
    result = Comparison()
    shown = shown_windows()
    now = datetime.now(UTC)
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        source = conn.execute("SELECT kpi.kpi_source() AS source").fetchone()["source"]
        if source != "summaries":
            result.mismatches.append(f"the service reads {source!r}, not the summaries: they were stopped")
            return result
        for aged_days in AGED_DAYS:
            windows = [(s.window.start, s.window.end, s.window.as_of(now)) for s in shown]
            summed = kpi_statement_rows(conn, "summaries", windows, aged_days)
            raw = kpi_statement_rows(conn, "raw", windows, aged_days)
            for s, from_sums, from_rows in zip(shown, summed, raw, strict=True):
                result.windows += 1
                result.rows.append({"window": s.name, "aged_days": aged_days, **plain(from_sums)})
                if from_sums != from_rows:
                    diff = {k: (from_sums[k], from_rows[k]) for k in from_sums if from_sums[k] != from_rows[k]}
                    result.mismatches.append(f"{s.name}, aged_days {aged_days}: summaries vs rows {diff}")
                if client is not None:
                    body = answer(client, s.query(aged_days), stopped_at)
                    result.http += 1
                    if plain(body["metrics"]) != plain(from_rows):
                        served = plain(body["metrics"])
                        diff = {k: (served[k], float(from_rows[k])) for k in served if served[k] != float(from_rows[k])}
                        result.mismatches.append(f"{s.name}, aged_days {aged_days}: HTTP vs rows {diff} {body['meta']}")
    return result


def answer(client: Any, query: str, stopped_at: datetime, seconds: float = 30.0) -> dict[str, Any]:
    """The service's body for `query` once it says it includes every commit before `stopped_at`
    (meta.includes_commits_before): a value cached while the applier was behind is served until
    its next batch refreshes it, and says so."""
    deadline = time.monotonic() + seconds
    while True:
        response = client.get(query, headers=bearer())
        body = response.get_json()
        if response.status_code != 200:
            raise AssertionError(f"{query}: {response.status_code} {body}")
        included = datetime.fromisoformat(body["meta"]["includes_commits_before"].replace("Z", "+00:00"))
        if included >= stopped_at or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def summaries(conn: psycopg.Connection) -> dict[str, list[tuple]]:
    return {
        table: conn.execute(sql.SQL("SELECT * FROM {} ORDER BY 1, 2").format(sql.Identifier("kpi", table))).fetchall()
        for table in SUMMARY_TABLES
    }


def compare_rebuild(url: str) -> list[str]:
    """The summaries' tables against what kpi_rebuild() makes of the sales tables, in one snapshot
    (rolled back), with the applier lock held so that no batch commits in between."""
    with psycopg.connect(url, autocommit=True) as conn:
        applied, rebuilt = beside_a_rebuild(conn, summaries)
    differences = []
    for table in SUMMARY_TABLES:
        a, b = set(applied[table]), set(rebuilt[table])
        if a != b or len(applied[table]) != len(rebuilt[table]):
            differences.append(
                f"{table}: {len(a - b)} rows only applied, {len(b - a)} only rebuilt;"
                f" e.g. applied {sorted(a - b)[:3]}, rebuilt {sorted(b - a)[:3]}"
            )
    return differences


def pending(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT kpi.kpi_pending_changes()").fetchone()[0]


def drain(url: str, seconds: float) -> float:
    """Wait for the service's applier to empty the log (it rests while the application works,
    and works a backlog off batch after batch once it is idle); the seconds it took. There is no
    event to wait on but the log's count, polled."""
    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        while conn.execute("SELECT kpi.kpi_pending_changes()").fetchone()[0]:
            if time.monotonic() - started > seconds:
                raise TimeoutError(f"the change log was not drained in {seconds} s")
            time.sleep(0.1)
    return time.monotonic() - started


# --- a run -------------------------------------------------------------------------------------


@dataclass
class RunResult:
    timezone: str
    listings: int
    writers: int
    processes: bool
    seconds: float
    counts: WriterCounts
    vacuums: int
    backlog_max: int
    left_at_stop: int  # log rows the applier had not taken when the writes stopped
    # What the service's applier did meanwhile (paced: it rests while the application works).
    applied_during_writes: int
    batches_during_writes: int
    drain_seconds: float
    comparison: Comparison
    rebuild_differences: list[str]

    @property
    def tx_per_s(self) -> float:
        return self.counts.transactions / self.seconds

    @property
    def rebuild_tables(self) -> tuple[str, ...]:
        return SUMMARY_TABLES

    @property
    def mismatches(self) -> list[str]:
        return self.comparison.mismatches + self.rebuild_differences


def run(
    server_url: str,
    timezone: str,
    *,
    listings: int = 3000,
    writers: int = 2,
    processes: bool = False,
    seconds: float = 40.0,
    redis_url: str | None = None,
    busy_percent: int | None = None,
    seed_value: int = 1,
    drain_seconds: float = 600.0,
    progress: Callable[[str], None] = lambda _: None,
) -> RunResult:
    """One whole run in a scratch database whose TimeZone is `timezone`."""
    rng = random.Random(seed_value)
    with scratch_database(server_url, timezone) as url:
        progress(f"{timezone}: seeding {listings:,} listings")
        seeded = seed(url, listings, rng)
        app = create_app(service_settings(url, redis_url, busy_percent))
        state = app.extensions["kpi"]
        try:
            drain(url, drain_seconds)  # the seed's log, before the measured writes
            progress(f"{timezone}: {writers} writers ({'processes' if processes else 'threads'}) for {seconds:g} s")
            stop = threading.Event()
            backlog = [0]
            with ThreadPoolExecutor(2) as helpers:
                vacuums = helpers.submit(vacuum, url, stop, random.Random(seed_value))
                watch = helpers.submit(watch_backlog, url, stop, backlog)
                applied_before = applied()
                counts = run_writers(url, seeded, writers, processes, seconds, seed_value)
                elapsed = seconds
                applied_during = tuple(b - a for a, b in zip(applied_before, applied(), strict=True))
                stopped_at = datetime.now(UTC)
                stop.set()
                rounds = vacuums.result()
                watch.result()
            left = pending(url)
            progress(f"{timezone}: {counts.transactions / elapsed:,.0f} tx/s; draining {left:,} log rows")
            drained = drain(url, drain_seconds)
            comparison = compare_windows(url, app.test_client(), stopped_at)
            rebuild = compare_rebuild(url)
        finally:
            # The streams' hub first: closing the service's Redis under its listener would be
            # logged as an outage.
            app.extensions["kpi_stream"].hub.close()
            state.close()
    return RunResult(
        timezone=timezone,
        listings=listings,
        writers=writers,
        processes=processes,
        seconds=elapsed,
        counts=counts,
        vacuums=rounds,
        backlog_max=backlog[0],
        left_at_stop=left,
        applied_during_writes=applied_during[0],
        batches_during_writes=applied_during[1],
        drain_seconds=drained,
        comparison=comparison,
        rebuild_differences=rebuild,
    )


def applied() -> tuple[int, int]:
    """Log rows this process's appliers have applied, and their batches (the service's metrics)."""
    rows = REGISTRY.get_sample_value("kpi_summary_changes_applied_total") or 0
    batches = REGISTRY.get_sample_value("kpi_summary_apply_duration_seconds_count") or 0
    return int(rows), int(batches)


def watch_backlog(url: str, stop: threading.Event, peak: list[int]) -> None:
    """The largest log backlog seen during the writes, once a second (for the report)."""
    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.wait(1.0):
            peak[0] = max(peak[0], conn.execute("SELECT kpi.kpi_pending_changes()").fetchone()[0])


def run_writers(
    url: str, seeded: Seeded, writers: int, processes: bool, seconds: float, seed_value: int
) -> WriterCounts:
    """`writers` concurrent writers for `seconds`, started together once all are connected:
    threads of this process, or processes of their own (spawned: this process runs the service's
    threads, which a fork would copy half-way)."""
    total = WriterCounts()
    with contextlib.ExitStack() as stack:
        if processes:
            context = multiprocessing.get_context("spawn")
            start = stack.enter_context(context.Manager()).Barrier(writers)
            pool: Executor = stack.enter_context(ProcessPoolExecutor(writers, mp_context=context))
        else:
            start = threading.Barrier(writers)
            pool = stack.enter_context(ThreadPoolExecutor(writers))
        futures: list[Future[WriterCounts]] = [
            pool.submit(write, url, seeded, seconds, seed_value * 1000 + i, start) for i in range(writers)
        ]
        for future in futures:
            total.add(future.result())
    return total
