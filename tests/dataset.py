"""Rows a test inserts, kept in Python so the reference can compute from the same data."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TypeVar

import psycopg

from kpi_service.db.sql import in_applier_turn, waiting_for_the_applier

T = TypeVar("T")


@dataclass
class Listing:
    id: int
    price: Decimal
    status: str
    listed_at: datetime
    acquisition_cost: Decimal | None = None
    sold_at: datetime | None = None
    score: Decimal | None = None


@dataclass
class Lead:
    id: int
    buyer_id: int
    created_at: datetime
    listing_id: int | None = None
    status: str = "open"


@dataclass
class Purchase:
    id: int
    listing_id: int
    buyer_id: int
    sale_price: Decimal
    purchased_at: datetime
    lead_id: int | None = None


@dataclass
class Dataset:
    buyers: list[int] = field(default_factory=list)
    listings: list[Listing] = field(default_factory=list)
    leads: list[Lead] = field(default_factory=list)
    purchases: list[Purchase] = field(default_factory=list)

    def insert(self, conn: psycopg.Connection) -> None:
        """Replace the tables' contents with this dataset."""
        retrying_deadlocks(conn, "TRUNCATE purchases, leads, listings, buyers RESTART IDENTITY CASCADE")
        self.add_rows(conn)
        catch_up(conn)

    def add_rows(self, conn: psycopg.Connection) -> None:
        """This dataset's rows inserted into the tables."""
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO buyers (id, name) VALUES (%s, %s)", [(b, f"buyer {b}") for b in self.buyers])
            cur.executemany(
                "INSERT INTO listings (id, price, acquisition_cost, status, listed_at, sold_at, score)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                [(x.id, x.price, x.acquisition_cost, x.status, x.listed_at, x.sold_at, x.score) for x in self.listings],
            )
            cur.executemany(
                "INSERT INTO leads (id, buyer_id, listing_id, created_at, status) VALUES (%s, %s, %s, %s, %s)",
                [(x.id, x.buyer_id, x.listing_id, x.created_at, x.status) for x in self.leads],
            )
            cur.executemany(
                "INSERT INTO purchases (id, listing_id, buyer_id, lead_id, sale_price, purchased_at)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                [(x.id, x.listing_id, x.buyer_id, x.lead_id, x.sale_price, x.purchased_at) for x in self.purchases],
            )


def catch_up(conn: psycopg.Connection) -> None:
    """What the service's applier does within its interval, done now: the summaries take in every
    committed change (waiting for an applier that holds the lock, then applying what it left), and
    are built anew where that stopped them (a TRUNCATE: the service waits for every instance to
    notice first). Nothing to do in a database without the summaries."""
    if conn.execute("SELECT to_regprocedure('kpi.kpi_apply_changes(integer, double precision)')").fetchone()[0]:
        in_applier_turn(conn, "SELECT kpi.kpi_apply_changes()")
        if conn.execute("SELECT to_regprocedure('kpi.kpi_rebuild_if_needed(integer)')").fetchone()[0]:
            in_applier_turn(conn, "SELECT kpi.kpi_rebuild_if_needed(60)")


def retrying_deadlocks(conn: psycopg.Connection, *statements: str) -> None:
    """The statements in one transaction, again if the deadlock detector cancelled it. A service
    under test may read the tables in the background (a window refreshed after an applied batch),
    and a TRUNCATE here, or the rebuild it makes the applier run, takes its locks in another order."""
    for attempt in range(5):
        try:
            with conn.transaction():
                for statement in statements:
                    conn.execute(statement)
            return
        except psycopg.errors.DeadlockDetected:
            if attempt == 4:
                raise


def audit_pass(conn: psycopg.Connection) -> list[dict]:
    """A whole pass of the summaries' audit from its start, as the applier runs it (kpi_audit, a
    slice per call): what each slice found, and last, the pass's end with its repairs."""
    conn.execute("SET kpi.audit_seconds = 0")
    conn.execute("UPDATE kpi.kpi_audit_state SET slice = NULL, next_at = '-infinity'")
    found: list[dict] = []
    try:
        while not found or "pass_ended" not in found[-1]:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                conn.execute("SELECT kpi.kpi_apply_changes()")
                audited = conn.execute("SELECT current_setting('kpi.audited', true)").fetchone()[0]
            found.append(json.loads(audited))
    finally:
        conn.execute("RESET kpi.audit_seconds")
    return found


def beside_a_rebuild(conn: psycopg.Connection, read: Callable[[psycopg.Connection], T]) -> tuple[T, T]:
    """read() of the summaries as they are, and as kpi_rebuild() makes them from the sales tables
    (rolled back), in one snapshot that holds the applier's lock, so that no batch commits in
    between (a service's applier may be at work beside the caller)."""

    def attempt() -> tuple[T, T] | None:
        with conn.transaction(force_rollback=True):
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            if not conn.execute("SELECT kpi.kpi_applier_lock()").fetchone()[0]:
                return None
            applied = read(conn)
            conn.execute("SELECT kpi.kpi_rebuild()")
            return applied, read(conn)

    return waiting_for_the_applier(attempt)
