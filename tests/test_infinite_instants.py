"""Instants at ±infinity, which the tables' timestamptz columns accept (issue 33, item 3): an
instant compares as PostgreSQL compares it, -infinity before and +infinity after every other, so
with a window's open side standing for ±infinity and its end excluded, a row at -infinity is in
every window with no start and a row at +infinity in none; a lead time from or to one is no
number of days, and is left out of lead_to_purchase_time. Applied, rebuilt and read raw alike."""

from __future__ import annotations

from datetime import UTC, date, datetime

import psycopg
from psycopg.abc import Buffer
from psycopg.rows import dict_row, tuple_row
from psycopg.types.datetime import TimestamptzLoader

from kpi_service.db.schema import apply_schema
from kpi_service.db.sql import kpi_statement_rows
from kpi_service.serving.windows import Window
from tests.dataset import catch_up
from tests.test_summary import applied_and_rebuilt

AT = datetime(2026, 3, 10, 12, tzinfo=UTC)
NOW = datetime(2026, 12, 1, tzinfo=UTC)


class InfiniteLoader(TimestamptzLoader):
    """±infinity as the first and last instants Python holds, for reading the summaries."""

    def load(self, data: Buffer) -> datetime:
        if bytes(data) in (b"infinity", b"-infinity"):
            return (datetime.max if bytes(data) == b"infinity" else datetime.min).replace(tzinfo=UTC)
        return super().load(data)


def rows(conn: psycopg.Connection, mode: str, windows: list[Window]) -> list[dict]:
    conn.row_factory = dict_row
    try:
        return kpi_statement_rows(conn, mode, [(w.start, w.end, w.as_of(NOW)) for w in windows], 60)
    finally:
        conn.row_factory = tuple_row


def test_infinite_instants_are_applied_rebuilt_and_read_alike(database_url: str, conn: psycopg.Connection) -> None:
    conn.adapters.register_loader("timestamptz", InfiniteLoader)
    conn.execute("INSERT INTO buyers (id, name) VALUES (1, 'a'), (2, 'b'), (5, 'c')")
    conn.execute(
        "INSERT INTO listings (id, price, acquisition_cost, status, listed_at, sold_at) VALUES"
        " (1, 100, NULL, 'active', '-infinity', NULL),"  # in stock since ever: aged
        " (2, 200, NULL, 'active', 'infinity', NULL),"  # in no window, never aged
        " (3, 300, 100, 'sold', %s, 'infinity'),"  # sold at +infinity: in stock at every instant
        " (4, 400, 100, 'sold', %s, %s)",
        [AT, AT, AT],
    )
    # The repro: a lead at infinity stopped the applier, the rebuild and init-db.
    conn.execute("INSERT INTO leads (id, buyer_id, created_at, status) VALUES (1, 5, 'infinity', 'open')")
    conn.execute(
        "INSERT INTO leads (id, buyer_id, created_at, status) VALUES (2, 1, '-infinity', 'open'), (3, 2, %s, 'open')",
        [AT],
    )
    conn.execute(
        "INSERT INTO purchases (id, listing_id, buyer_id, lead_id, sale_price, purchased_at) VALUES"
        " (1, 4, 1, 2, 500, %s),"  # its lead at -infinity: no lead time
        " (2, 3, 2, 3, 450, '-infinity')",  # bought at -infinity: in windows with no start only
        [AT],
    )
    catch_up(conn)
    applied, rebuilt = applied_and_rebuilt(conn)
    assert applied == rebuilt
    apply_schema(database_url)  # init-db again, rebuilding nothing, and a fresh build:
    conn.execute("DELETE FROM kpi.kpi_summary_state")
    apply_schema(database_url)
    assert conn.execute("SELECT kpi.kpi_source()").fetchone() == ("summaries",)
    assert applied_and_rebuilt(conn)[0] == applied

    windows = [
        Window.of_dates(None, None, "UTC"),
        Window.of_dates(None, date(2026, 3, 10), "Europe/Berlin"),
        Window.of_dates(date(2026, 3, 10), None, "UTC"),
        Window.of_dates(date(2026, 3, 10), date(2026, 3, 10), "America/Sao_Paulo"),
    ]
    summed = rows(conn, "summaries", windows)
    assert summed == rows(conn, "raw", windows)
    all_time, until, since, day = summed
    assert all_time["total_listings"] == 3  # -infinity, and the two at AT; not +infinity
    assert all_time["aged_inventory"] == 2  # -infinity's and the one sold at +infinity
    assert all_time["active_buyers"] == 2  # buyer 5's lead at +infinity is in no window
    assert all_time["lead_to_purchase_time"] == 0  # -infinity to AT, and AT to -infinity: none
    assert all_time["average_profit_per_unit"] == 375  # (400 + 350) / 2
    assert (until["total_listings"], until["active_buyers"]) == (3, 2)  # -infinity, and the two at AT
    assert (since["total_listings"], since["active_buyers"]) == (2, 2)
    assert (day["total_listings"], day["average_profit_per_unit"]) == (2, 400)
