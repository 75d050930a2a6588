"""The applier against a model: random writes of the application in every statement form, the
change log taken in any order and any batching, VACUUMs between batches, and the session in a
random time zone. Whenever the log is drained the summaries must equal a rebuild from the rows,
and the KPI statement must equal both the raw statement and the Python reference.

The log has no key and the applier takes it in physical order, which VACUUM and the free space
map make arbitrary: so the test also shuffles the log's physical order outright. Any order of
committed rows is one the applier may meet.

KPI_MODEL_EXAMPLES sets the number of examples (a longer run than the suite's, by hand)."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import psycopg
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.rows import dict_row, tuple_row

from kpi_service.db.connections import Database
from kpi_service.db.sql import in_one_snapshot, kpi_statement_rows
from kpi_service.serving.windows import Window
from tests import reference
from tests.dataset import Dataset, Lead, Listing, Purchase, audit_pass, catch_up
from tests.helpers import apply_change, make_settings
from tests.strategies import datasets, instants, money
from tests.test_summary import applied_and_rebuilt

EXAMPLES = int(os.environ.get("KPI_MODEL_EXAMPLES", "150"))
# Session time zones with and without DST (Sao Paulo has had none since 2019), and UTC.
SESSION_ZONES = ["UTC", "Europe/Berlin", "America/Sao_Paulo"]
WINDOW_ZONES = ["UTC", "Europe/Berlin", "America/Sao_Paulo", "America/New_York", "Asia/Kolkata"]
NOW = datetime(2026, 12, 1, tzinfo=UTC)
# Days whose windows start or end on a DST change in Berlin or New York, or a month's end.
WINDOW_DAYS = [date(2026, 3, 8), date(2026, 3, 29), date(2026, 3, 30), date(2026, 4, 1), date(2026, 10, 25)]


def shuffle_log(conn: psycopg.Connection, seed: int) -> None:
    """The log's rows in another physical order (the applier takes them in physical order)."""
    with conn.transaction():
        conn.execute("CREATE TEMPORARY TABLE shuffled ON COMMIT DROP AS SELECT * FROM kpi.kpi_changes")
        conn.execute("DELETE FROM kpi.kpi_changes")
        conn.execute("INSERT INTO kpi.kpi_changes SELECT * FROM shuffled ORDER BY md5(ctid::text || %s)", [str(seed)])


def write(conn: psycopg.Connection, data: Dataset, draw: st.DrawFn) -> None:
    """One application transaction: apply_change's kinds, and the statement forms it lacks."""
    kind = draw(st.sampled_from(["change", "change", "touch_then_recost", "lead_churn", "bulk", "upsert", "copy"]))
    if kind == "change" or (not data.listings and kind in ("touch_then_recost", "bulk", "upsert")):
        apply_change(conn, data, draw)
    elif kind == "touch_then_recost":
        # A row updated twice in a row, the first time to no effect: the second update's images
        # may fall into another batch than the first's.
        listing = draw(st.sampled_from(data.listings))
        listing.acquisition_cost = draw(st.one_of(st.none(), money))
        conn.execute("UPDATE listings SET score = score WHERE id = %s", [listing.id])
        conn.execute("UPDATE listings SET acquisition_cost = %s WHERE id = %s", [listing.acquisition_cost, listing.id])
    elif kind == "lead_churn":
        # A new buyer's lead created and deleted at once: its -1 may be taken before its +1.
        buyer = max(data.buyers) + 1
        conn.execute("INSERT INTO buyers (id, name) VALUES (%s, 'churn')", [buyer])
        data.buyers.append(buyer)
        lead_id = max((x.id for x in data.leads), default=0) + 1
        at = draw(instants())
        conn.execute(
            "INSERT INTO leads (id, buyer_id, created_at, status) VALUES (%s, %s, %s, 'open')", [lead_id, buyer, at]
        )
        if draw(st.booleans()):
            conn.execute("DELETE FROM leads WHERE id = %s", [lead_id])
        else:
            data.leads.append(Lead(lead_id, buyer, at))
    elif kind == "bulk":
        # Every listing repriced by one statement.
        step = draw(st.sampled_from([Decimal("1.00"), Decimal("-0.50")]))
        for listing in data.listings:
            listing.price = max(listing.price + step, Decimal(0))
        conn.execute("UPDATE listings SET price = greatest(price + %s, 0)", [step])
    elif kind == "upsert":
        listing = draw(st.sampled_from(data.listings))
        listing.score = draw(st.one_of(st.none(), st.decimals(0, 100, places=2)))
        conn.execute(
            "INSERT INTO listings (id, price, status, listed_at, score) VALUES (%s, 1, 'active', now(), %s)"
            " ON CONFLICT (id) DO UPDATE SET score = excluded.score",
            [listing.id, listing.score],
        )
    else:  # copy: two new listings in one COPY
        first = max((x.id for x in data.listings), default=0) + 1
        new = [Listing(first + i, draw(money), "active", draw(instants())) for i in range(2)]
        with conn.cursor().copy("COPY listings (id, price, status, listed_at) FROM STDIN") as copy:
            for x in new:
                copy.write_row((x.id, x.price, x.status, x.listed_at))
        data.listings.extend(new)


def drained_and_checked(conn: psycopg.Connection, data: Dataset, draw: st.DrawFn) -> None:
    applied, rebuilt = applied_and_rebuilt(conn)
    assert applied == rebuilt
    # The audit, which recomputes each day as a rebuild would, finds nothing to repair.
    assert audit_pass(conn)[-1] == {"pass_ended": True, "repairs": 0}
    zone = draw(st.sampled_from(WINDOW_ZONES))
    first, last = sorted(draw(st.lists(st.sampled_from(WINDOW_DAYS), min_size=2, max_size=2)))
    windows = [
        Window.of_dates(first, last, zone),
        Window.of_dates(first, first, zone),
        Window.of_dates(None, None, zone),
    ]
    aged_days = draw(st.sampled_from([60, 7]))
    bounds = [(w.start, w.end, w.as_of(NOW)) for w in windows]
    conn.row_factory = dict_row
    try:
        summed = kpi_statement_rows(conn, "summaries", bounds, aged_days)
        assert summed == kpi_statement_rows(conn, "raw", bounds, aged_days)
    finally:
        conn.row_factory = tuple_row
    for row, w in zip(summed, windows, strict=True):
        want = reference.kpis(data, w.start, w.end, w.as_of(NOW), aged_days)
        assert {k: float(v) for k, v in row.items()} == {k: float(v) for k, v in want.items()}


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    # No shrinking: a failure prints every draw, and shrinking one of these takes minutes.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_any_order_any_batching_equals_the_rows(conn: psycopg.Connection, data: st.DataObject) -> None:
    conn.execute("SELECT set_config('TimeZone', %s, false)", [data.draw(st.sampled_from(SESSION_ZONES))])
    try:
        dataset = data.draw(datasets(max_listings=6))
        dataset.insert(conn)
        built = conn.execute("SELECT xmin FROM kpi.kpi_summary_state").fetchone()
        for _ in range(data.draw(st.integers(1, 14))):
            action = data.draw(st.sampled_from(["write", "write", "write", "batch", "batch", "vacuum", "shuffle"]))
            if action == "write":
                write(conn, dataset, data.draw)
            elif action == "batch":
                in_one_snapshot(conn, "SELECT kpi.kpi_apply_changes(max_rows => %s)", [data.draw(st.integers(1, 4))])
            elif action == "vacuum":
                conn.execute("VACUUM kpi.kpi_changes")
            else:
                shuffle_log(conn, data.draw(st.integers(0, 2**31)))
        drained_and_checked(conn, dataset, data.draw)
        # None of these writes may stop the summaries (catch_up would build them anew, and the
        # checks above would then hold whatever the applier did).
        assert conn.execute("SELECT xmin FROM kpi.kpi_summary_state").fetchone() == built
    finally:
        conn.execute("RESET TimeZone")


def test_a_batch_that_ends_between_two_updates_of_a_listing(conn: psycopg.Connection) -> None:
    """Issue 33, item 5: a no-op update, then the cost removed; a batch of the first three log rows."""
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    Dataset(
        [1],
        [Listing(1, Decimal("9000.00"), "sold", at, Decimal("3000.00"), sold_at=at)],
        [Lead(1, 1, at - timedelta(days=3))],
        [Purchase(1, 1, 1, Decimal("8000.00"), at, lead_id=1)],
    ).insert(conn)
    conn.execute("UPDATE listings SET score = score WHERE id = 1")
    conn.execute("UPDATE listings SET acquisition_cost = NULL WHERE id = 1")
    in_one_snapshot(conn, "SELECT kpi.kpi_apply_changes(max_rows => 3)")
    catch_up(conn)
    assert conn.execute("SELECT costed, profit FROM kpi.kpi_purchase_facts").fetchone() == (0, 0)
    # The same with a lead's instant moved after a no-op update.
    conn.execute("UPDATE leads SET status = status WHERE id = 1")
    conn.execute("UPDATE leads SET created_at = %s WHERE id = 1", [at - timedelta(days=1)])
    in_one_snapshot(conn, "SELECT kpi.kpi_apply_changes(max_rows => 3)")
    catch_up(conn)
    assert conn.execute("SELECT lead_seconds FROM kpi.kpi_purchase_facts").fetchone() == (86400,)
    applied, rebuilt = applied_and_rebuilt(conn)
    assert applied == rebuilt


def test_a_deleted_lead_taken_before_its_insert(conn: psycopg.Connection) -> None:
    """Issue 33, item 6: after a VACUUM of the log, a lead's delete sits before its insert."""
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    Dataset([1], [Listing(i, Decimal("100.00"), "active", at) for i in range(1, 1001)], [], []).insert(conn)
    conn.execute("UPDATE listings SET price = price + 1")
    conn.execute("INSERT INTO buyers (id, name) VALUES (2, 'new')")
    conn.execute("INSERT INTO leads (id, buyer_id, created_at, status) VALUES (900001, 2, %s, 'open')", [at])
    in_one_snapshot(conn, "SELECT kpi.kpi_apply_changes(max_rows => 200)")
    conn.execute("VACUUM kpi.kpi_changes")
    conn.execute("DELETE FROM leads WHERE id = 900001")
    in_one_snapshot(conn, "SELECT kpi.kpi_apply_changes(max_rows => 200)")
    catch_up(conn)
    assert conn.execute("SELECT count(*) FROM kpi.kpi_buyer_buckets").fetchone() == (0,)
    applied, rebuilt = applied_and_rebuilt(conn)
    assert applied == rebuilt


def test_a_window_from_a_dst_day_in_a_session_of_that_zone(database_url: str, conn: psycopg.Connection) -> None:
    """Issue 33, item 4: the Berlin week from 2026-03-30 starts at 22:00 UTC on the day Berlin's
    clocks went forward; its first whole UTC day must not be found 23 hours later in a Berlin session."""
    at = datetime(2026, 3, 29, 23, 30, tzinfo=UTC)
    Dataset([1], [Listing(1, Decimal("100.00"), "active", at)], [Lead(1, 1, at)], []).insert(conn)
    week = Window.of_dates(date(2026, 3, 30), date(2026, 4, 5), "Europe/Berlin")
    conn.execute("SET TimeZone = 'Europe/Berlin'")
    conn.row_factory = dict_row
    try:
        rows = kpi_statement_rows(conn, "summaries", [(week.start, week.end, week.as_of(NOW))], 60)
    finally:
        conn.row_factory = tuple_row
        conn.execute("RESET TimeZone")
    assert (rows[0]["total_listings"], rows[0]["active_buyers"]) == (1, 1)
    # And the service's own sessions are in UTC whatever the database's setting says.
    name = conn.execute("SELECT current_database()").fetchone()[0]
    conn.execute(sql.SQL("ALTER DATABASE {} SET TimeZone = 'Europe/Berlin'").format(sql.Identifier(name)))
    db = Database(make_settings(database_url))
    try:
        with db.connection("the test") as service:
            assert service.execute("SHOW TimeZone").fetchone() == {"TimeZone": "UTC"}
    finally:
        db.close()
        conn.execute(sql.SQL("ALTER DATABASE {} RESET TimeZone").format(sql.Identifier(name)))
