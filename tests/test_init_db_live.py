"""`kpi-service init-db` on a database the application is using: it gives way to the
application's transactions instead of making them wait or deadlock, and finishes what an
interrupted run left behind."""

from __future__ import annotations

import contextlib
import threading
import time

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from kpi_service.db import giving_way, uninstall
from kpi_service.db.errors import LockNotGranted
from kpi_service.db.schema import apply_schema
from tests.helpers import wait_until


def _index(conn: psycopg.Connection, name: str) -> tuple[bool, str] | None:
    return conn.execute(
        "SELECT i.indisvalid, pg_get_indexdef(i.indexrelid) FROM pg_index i WHERE i.indexrelid = to_regclass(%s)",
        [name],
    ).fetchone()


def test_an_invalid_index_left_by_a_failed_build_is_built_again(empty_database: str) -> None:
    apply_schema(empty_database, summaries=False)
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute("INSERT INTO buyers (id, name) VALUES (1, 'b')")
        conn.execute("INSERT INTO leads (buyer_id, created_at, status) VALUES (1, now(), 'open'), (1, now(), 'open')")
        # A concurrent build that fails leaves its index behind, invalid: as an init-db
        # interrupted in its CREATE INDEX CONCURRENTLY does.
        conn.execute("DROP INDEX kpi_leads_created_at_idx")
        with contextlib.suppress(psycopg.errors.UniqueViolation):
            conn.execute("CREATE UNIQUE INDEX CONCURRENTLY kpi_leads_created_at_idx ON leads (buyer_id)")
        assert _index(conn, "kpi_leads_created_at_idx")[0] is False
        installed = "SELECT installed FROM kpi.kpi_manifest WHERE name = 'public.kpi_leads_created_at_idx'"
        assert conn.execute(installed).fetchone() == (False,)
        assert ("public.kpi_leads_created_at_idx", "public.leads") in uninstall.plan(
            conn
        ).indexes  # still there to remove

        apply_schema(empty_database, summaries=False)

        valid, definition = _index(conn, "kpi_leads_created_at_idx")
        assert valid
        assert definition.endswith("USING btree (created_at) INCLUDE (buyer_id)")
        assert conn.execute(installed).fetchone() == (True,)


INIT = "kpi-init-db-under-test"
# How long an application statement may wait behind init-db (the issue: 6.5 s, or a deadlock).
MAY_WAIT_S = 1.0


class InitDb:
    """apply_schema in a thread of its own, under an application_name the test can find it by."""

    def __init__(self, url: str) -> None:
        self.error: BaseException | None = None
        self.printed: list[str] = []
        self.thread = threading.Thread(target=self._run, args=[make_conninfo(url, application_name=INIT)])
        self.thread.start()

    def _run(self, url: str) -> None:
        try:
            apply_schema(url, progress=self.printed.append)
        except BaseException as error:  # reported by finish()
            self.error = error

    def finish(self) -> None:
        self.thread.join(timeout=120)
        assert not self.thread.is_alive()
        assert self.error is None, self.error


def sales(url: str) -> None:
    """Three buyers, listings and leads, two purchases: rows for three transactions to hold."""
    apply_schema(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO buyers (id, name) SELECT n, 'b' FROM generate_series(1, 3) n")
        conn.execute(
            "INSERT INTO listings (id, price, status, listed_at)"
            " SELECT n, 100, 'active', now() FROM generate_series(1, 3) n"
        )
        conn.execute(
            "INSERT INTO leads (id, buyer_id, listing_id, created_at, status)"
            " SELECT n, n, n, now(), 'open' FROM generate_series(1, 3) n"
        )
        conn.execute(
            "INSERT INTO purchases (id, listing_id, buyer_id, lead_id, sale_price, purchased_at)"
            " SELECT n, n, n, n, 90, now() FROM generate_series(1, 2) n"
        )


def application(url: str) -> psycopg.Connection:
    """A session of the application: its statements fail rather than hang in the old behaviour."""
    return psycopg.connect(url, options="-c statement_timeout=5s")


def touch(table: str) -> sql.Composable:
    """A write of the application to one row, which holds that row until its transaction ends."""
    return sql.SQL("UPDATE {} SET id = id WHERE id = %s").format(sql.Identifier(table))


def timed(conn: psycopg.Connection, statement: sql.Composable | str, params: list[object] | None = None) -> float:
    began = time.monotonic()
    conn.execute(statement, params)
    return time.monotonic() - began


def init_db_waits_for(conn: psycopg.Connection, table: str) -> bool:
    return conn.execute(
        "SELECT EXISTS (SELECT FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
        " WHERE a.application_name = %s AND NOT l.granted AND l.relation = to_regclass(%s))",
        [INIT, table],
    ).fetchone()[0]


def test_init_db_gives_way_to_transactions_holding_rows_of_all_three_tables(empty_database: str) -> None:
    sales(empty_database)
    held = {"listings": "leads", "leads": "purchases", "purchases": "listings"}  # then the next one
    sessions = {table: application(empty_database) for table in held}
    try:
        for table, conn in sessions.items():
            conn.execute(touch(table), [1])
        with psycopg.connect(empty_database, autocommit=True) as watcher:
            init_db = InitDb(empty_database)
            # It is at work and has met a lock of theirs.
            wait_until(lambda: any(init_db_waits_for(watcher, table) for table in held), seconds=30)
            waits = [timed(conn, touch(held[table]), [2]) for table, conn in sessions.items()]
            assert init_db.thread.is_alive()  # still giving way: their rows are still held
            for conn in sessions.values():
                conn.commit()
            init_db.finish()
            assert max(waits) < MAY_WAIT_S, waits
            # The operator is told what it waits for.
            assert any("tables, functions and triggers: giving way to the application's" in p for p in init_db.printed)
            assert watcher.execute("SELECT kpi.kpi_capturing()").fetchone() == (True,)
    finally:
        for conn in sessions.values():
            conn.close()


def test_init_db_between_two_statements_of_a_transaction_is_not_a_deadlock(empty_database: str) -> None:
    """The issue's shape: init-db's trigger DDL locked listings, then waited for purchases, whose
    row the application's transaction held; that transaction then asked for listings."""
    sales(empty_database)
    with application(empty_database) as conn, psycopg.connect(empty_database, autocommit=True) as watcher:
        conn.execute("UPDATE purchases SET id = id WHERE id = 1")
        init_db = InitDb(empty_database)
        wait_until(lambda: init_db_waits_for(watcher, "purchases"), seconds=30)
        waited = timed(conn, "UPDATE listings SET price = price + 1 WHERE id = 1")
        conn.commit()
        init_db.finish()
        assert waited < MAY_WAIT_S
        assert watcher.execute("SELECT price FROM listings WHERE id = 1").fetchone() == (101,)


def test_an_index_build_gives_way_to_an_open_transaction_and_ends_valid(empty_database: str) -> None:
    """A concurrent build waits for the transactions on its table that are older than it: with its
    lock_timeout it gives way, and its next try drops what it left invalid and builds again."""
    sales(empty_database)
    with psycopg.connect(empty_database, autocommit=True) as watcher:
        watcher.execute("DROP INDEX kpi_listings_listed_at_idx")  # as before a first install
        with application(empty_database) as conn:
            # A report of the application's: a snapshot older than the build's, no lock the
            # triggers' DDL waits for.
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.execute("SELECT count(*) FROM listings")
            init_db = InitDb(empty_database)
            wait_until(
                lambda: watcher.execute(
                    "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE application_name = %s"
                    " AND query LIKE 'CREATE INDEX CONCURRENTLY%%kpi_listings_listed_at_idx%%')",
                    [INIT],
                ).fetchone()[0],
                seconds=30,
            )
            waited = timed(conn, touch("listings"), [2])
            assert init_db.thread.is_alive()
            conn.commit()
        init_db.finish()
        assert waited < MAY_WAIT_S
        assert _index(watcher, "kpi_listings_listed_at_idx")[0] is True


def test_init_db_stops_after_its_bounded_tries_and_a_second_run_finishes(
    empty_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sales(empty_database)
    monkeypatch.setattr(giving_way, "RETRY_FOR_S", 0.3)  # of 120 s
    with application(empty_database) as conn:
        conn.execute(touch("leads"), [1])  # a transaction that outlasts every try
        with pytest.raises(LockNotGranted, match="run kpi-service init-db again at a quieter time"):
            apply_schema(empty_database)
        assert timed(conn, touch("listings"), [2]) < MAY_WAIT_S
        conn.commit()
    apply_schema(empty_database)
