"""The decoding capture mode (KPI_CAPTURE=decoding) on a real PostgreSQL 18 primary and physical
standby (tests/pg_pair.py): the slot on the standby and on the primary, the model test's random
writes decoded in random batches, the start from a snapshot joined to the stream, an
invalidated slot, a renamed column."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg
import pytest
from flask import Flask
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row, tuple_row

from kpi_service.app import create_app
from kpi_service.db import applier as applier_module
from kpi_service.db.applier import pooled
from kpi_service.db.connections import Database
from kpi_service.db.decoding import Decoder, direct
from kpi_service.db.errors import CaptureRefused
from kpi_service.db.schema import apply_schema
from kpi_service.db.sql import in_applier_turn, in_one_snapshot, kpi_statement_rows, sql_text
from kpi_service.db.uninstall import plan, remove
from kpi_service.serving.windows import Window
from tests import reference
from tests.dataset import Dataset
from tests.helpers import APPLYING, make_settings, token, wait_until
from tests.pg_pair import Pair
from tests.strategies import datasets
from tests.test_applier_model import NOW, WINDOW_DAYS, WINDOW_ZONES, write
from tests.test_summary import applied_and_rebuilt

EXAMPLES = 25


@pytest.fixture(scope="session")
def pair() -> Iterator[Pair]:
    with Pair() as servers:
        yield servers


@dataclass
class Decoding:
    """A database of its own on the pair's primary, as `init-db --capture decoding` leaves it,
    with its slot on `where`."""

    pair: Pair
    where: str
    url: str
    slot_url: str

    def decoder(self, primary: psycopg.Connection, batch: int = 20_000) -> Decoder:
        return Decoder(direct(primary), self.slot_url, batch=batch)

    def drained(self, conn: psycopg.Connection, decoder: Decoder) -> None:
        """Every committed write decoded into the log, the log applied, and the summaries built
        anew where that stopped them: what the service's loop does within its interval."""
        if self.where == "standby":
            self.pair.replayed()
        while decoder.step() != 0 or decoder.full:
            pass
        in_applier_turn(conn, "SELECT kpi.kpi_apply_changes()")
        in_applier_turn(conn, "SELECT kpi.kpi_rebuild_if_needed(60)")


def make_database(pair: Pair, where: str) -> Iterator[Decoding]:
    name = f"kpi_dec_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pair.primary.url(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    pair.replayed()
    url = pair.primary.url(name)
    slot_url = pair.standby.url(name) if where == "standby" else url
    apply_schema(url, capture="decoding", decoding_url=slot_url)
    yield Decoding(pair, where, url, slot_url)
    with psycopg.connect(slot_url, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = %s", [name])
    with psycopg.connect(pair.primary.url(), autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = %s", [name])
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(params=["standby", "primary"])
def decoding(request: pytest.FixtureRequest, pair: Pair) -> Iterator[Decoding]:
    yield from make_database(pair, request.param)


def replace_rows(conn: psycopg.Connection, data: Dataset) -> None:
    """The tables' rows made `data`'s by deletes and inserts (a TRUNCATE would stop the summaries)."""
    with conn.transaction():
        for table in ("purchases", "leads", "listings", "buyers"):
            conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(table)))
    data.add_rows(conn)


def exact(conn: psycopg.Connection, data: Dataset, draw: st.DrawFn) -> None:
    """The summaries equal a rebuild from the rows, and the KPI statement on them equals the raw
    statement and the Python reference."""
    assert conn.execute("SELECT kpi.kpi_source()").fetchone() == ("summaries",)
    applied, rebuilt = applied_and_rebuilt(conn)
    assert applied == rebuilt
    zone = draw(st.sampled_from(WINDOW_ZONES))
    first, last = sorted(draw(st.lists(st.sampled_from(WINDOW_DAYS), min_size=2, max_size=2)))
    windows = [Window.of_dates(first, last, zone), Window.of_dates(None, None, zone)]
    bounds = [(w.start, w.end, w.as_of(NOW)) for w in windows]
    conn.row_factory = dict_row
    try:
        summed = kpi_statement_rows(conn, "summaries", bounds, 60)
        assert summed == kpi_statement_rows(conn, "raw", bounds, 60)
    finally:
        conn.row_factory = tuple_row
    for row, w in zip(summed, windows, strict=True):
        want = reference.kpis(data, w.start, w.end, w.as_of(NOW), 60)
        assert {k: float(v) for k, v in row.items()} == {k: float(v) for k, v in want.items()}


def test_no_trigger_on_the_applications_tables(decoding: Decoding) -> None:
    with psycopg.connect(decoding.url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal").fetchone() == (0,)
        assert conn.execute("SELECT kpi.kpi_source()").fetchone() == ("summaries",)
        assert conn.execute("SELECT slot_ok FROM kpi.kpi_decoding").fetchone() == (True,)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_any_writes_any_batching_equals_the_rows(decoding: Decoding, data: st.DataObject) -> None:
    """The model test's writes (every statement form), decoded in batches of a few messages and
    applied in batches of a few log rows, in any interleaving, with the slot's position recorded
    and the slot advanced: drained, the summaries are exact."""
    with psycopg.connect(decoding.url, autocommit=True) as conn, psycopg.connect(decoding.url, autocommit=True) as own:
        decoder = decoding.decoder(own, batch=data.draw(st.integers(1, 12)))
        try:
            dataset = data.draw(datasets(max_listings=6))
            replace_rows(conn, dataset)
            decoding.drained(conn, decoder)
            for _ in range(data.draw(st.integers(1, 14))):
                action = data.draw(st.sampled_from(["write", "write", "write", "decode", "batch", "vacuum"]))
                if action == "write":
                    write(conn, dataset, data.draw)
                elif action == "decode":
                    if decoding.where == "standby":
                        decoding.pair.replayed()
                    decoder.step()
                elif action == "batch":
                    in_one_snapshot(
                        conn, "SELECT kpi.kpi_apply_changes(max_rows => %s)", [data.draw(st.integers(1, 4))]
                    )
                else:
                    conn.execute("VACUUM kpi.kpi_changes, kpi.kpi_row_copy")
            decoding.drained(conn, decoder)
            exact(conn, dataset, data.draw)
        finally:
            decoder.close()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_build_after_the_slots_start_joins_the_stream(decoding: Decoding, data: st.DataObject) -> None:
    """The start (docs/design.md): a new slot, writes committed after its consistent point, then
    the copy and the summaries built from a snapshot that holds them, then more writes. The slot
    gives the first writes again over a copy that has them already: each logs the copy's image
    less and its own more, which telescopes to nothing, so nothing is lost or counted twice."""
    with psycopg.connect(decoding.url, autocommit=True) as conn, psycopg.connect(decoding.url, autocommit=True) as own:
        decoder = decoding.decoder(own, batch=data.draw(st.integers(1, 50)))
        try:
            dataset = data.draw(datasets(max_listings=6))
            replace_rows(conn, dataset)
            decoding.drained(conn, decoder)
            decoder.make_slot(conn.execute("SELECT slot FROM kpi.kpi_decoding").fetchone()[0])
            for _ in range(data.draw(st.integers(1, 8))):
                write(conn, dataset, data.draw)
            in_applier_turn(conn, "SELECT kpi.kpi_rebuild_if_needed(60)")  # the build, before any decoding
            assert conn.execute("SELECT kpi.kpi_source()").fetchone() == ("summaries",)
            for _ in range(data.draw(st.integers(0, 8))):
                write(conn, dataset, data.draw)
            decoding.drained(conn, decoder)
            exact(conn, dataset, data.draw)
        finally:
            decoder.close()


class CrashingBeforeTheAdvance(Decoder):
    """A decoder whose process dies once after its commit on the primary, before the slot's advance."""

    crashed = False

    def advance(self, server: psycopg.Connection, slot: str, upto: str) -> None:
        if not self.crashed:
            self.crashed = True
            return
        super().advance(server, slot, upto)


def test_a_crash_between_the_log_and_the_slots_advance_logs_nothing_twice(decoding: Decoding) -> None:
    """The slot gives again what was logged before the service stopped: skipped by position."""
    with psycopg.connect(decoding.url, autocommit=True) as conn, psycopg.connect(decoding.url, autocommit=True) as own:
        decoder = CrashingBeforeTheAdvance(direct(own), decoding.slot_url)
        try:
            conn.execute("INSERT INTO buyers (id, name) VALUES (1, 'a')")
            conn.execute("INSERT INTO listings (id, price, status, listed_at) VALUES (1, 10, 'active', now())")
            if decoding.where == "standby":
                decoding.pair.replayed()
            assert decoder.step() == 1
            assert decoder.crashed
            assert decoder.step() == 1  # given again, and skipped by kpi_decoded
            assert conn.execute("SELECT count(*) FROM kpi.kpi_changes").fetchone() == (1,)
            assert decoder.step() == 0  # advanced this time
            in_applier_turn(conn, "SELECT kpi.kpi_apply_changes()")
            applied, rebuilt = applied_and_rebuilt(conn)
            assert applied == rebuilt
        finally:
            decoder.close()


@pytest.fixture
def lone(monkeypatch: pytest.MonkeyPatch) -> Iterator[Decoding]:
    """A primary of its own, with the slot on it: the test lowers max_slot_wal_keep_size, which
    would put a shared pair's other slots at risk."""
    with Pair(standby=False) as servers:
        yield from make_database(servers, "primary")


def invalidated(conn: psycopg.Connection) -> None:
    """The slot pushed past max_slot_wal_keep_size by WAL its consumer never reads: segments
    switched and a checkpoint removes them."""
    conn.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
    conn.execute("SELECT pg_reload_conf()")
    for _ in range(20):
        for _ in range(3):
            conn.execute("INSERT INTO buyers (id, name) SELECT coalesce(max(id), 0) + 1, 'filler' FROM buyers")
            conn.execute("SELECT pg_switch_wal()")
        conn.execute("CHECKPOINT")
        found = conn.execute("SELECT wal_status FROM pg_replication_slots WHERE database = current_database()")
        if found.fetchone() == ("lost",):
            return
    raise AssertionError("the slot was not invalidated")


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Flask]]:
    """Apps of the service (their applier and decoder running), closed at the end of the test."""
    apps: list[Flask] = []

    # The rebuild after a lost slot waits for every instance's mode lookup (0.1 s here), no more.
    monkeypatch.setattr(applier_module, "REBUILD_MARGIN_S", 0.0)

    def make(url: str, **overrides: object) -> Flask:
        apps.append(create_app(make_settings(url, capture="decoding", apply_interval=APPLYING, **overrides)))
        apps[-1].extensions["kpi"].db.mode_every = 0.1
        return apps[-1]

    yield make
    for app in apps:
        app.extensions["kpi_stream"].hub.close()
        app.extensions["kpi"].close()


def test_an_invalidated_slot_is_noticed_and_the_summaries_built_anew(
    lone: Decoding, service: Callable[..., Flask]
) -> None:
    """The consumer stopped past max_slot_wal_keep_size: the service says so in /readyz and the
    log, serves the rows meanwhile, makes a new slot and rebuilds by itself; the numbers are
    exact afterwards."""
    with psycopg.connect(lone.url, autocommit=True) as conn:
        dataset = Dataset([1, 2], [], [], [])
        replace_rows(conn, dataset)
        invalidated(conn)
        conn.execute("INSERT INTO listings (id, price, status, listed_at) VALUES (1, 10, 'active', %s)", [NOW])
        app = service(lone.url)
        wait_until(lambda: conn.execute("SELECT lost FROM kpi.kpi_decoding").fetchone()[0] is not None)
        assert "invalidated" in conn.execute("SELECT lost FROM kpi.kpi_decoding").fetchone()[0]
        wait_until(lambda: conn.execute("SELECT kpi.kpi_source()").fetchone() == ("summaries",), seconds=60)
        conn.execute("INSERT INTO listings (id, price, status, listed_at) VALUES (2, 20, 'active', %s)", [NOW])
        wait_until(lambda: conn.execute("SELECT sum(listings) FROM kpi.kpi_sums WHERE grain = 900").fetchone() == (2,))
        ready = app.test_client().get("/readyz").get_json()
        assert ready["checks"]["capture"]["slot_ok"] is True
        assert "invalidated" in ready["checks"]["capture"]["lost"]
        applied, rebuilt = applied_and_rebuilt(conn)
        assert applied == rebuilt
        conn.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
        conn.execute("SELECT pg_reload_conf()")


def test_a_column_renamed_under_writes_fails_no_write(decoding: Decoding) -> None:
    """No trigger, no function of the service on the tables: a rename of a column the KPIs read,
    between the application's writes, fails none of them; the decoded images lack it, and the
    summaries stop as in the trigger mode (the KPIs from the rows, /readyz names the column)."""
    failures: list[BaseException] = []
    stop = threading.Event()

    def writer() -> None:
        with psycopg.connect(decoding.url, autocommit=True) as conn:
            conn.execute("INSERT INTO buyers (id, name) VALUES (1, 'a') ON CONFLICT DO NOTHING")
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    conn.execute(
                        "INSERT INTO listings (id, price, status, listed_at) VALUES (%s, 10, 'active', now())", [n]
                    )
                    conn.execute("UPDATE listings SET price = price + 1 WHERE id = %s", [n])
                except psycopg.Error as error:
                    failures.append(error)

    with psycopg.connect(decoding.url, autocommit=True) as conn, psycopg.connect(decoding.url, autocommit=True) as own:
        thread = threading.Thread(target=writer)
        thread.start()
        wait_until(lambda: conn.execute("SELECT count(*) FROM listings").fetchone()[0] > 20)
        conn.execute("ALTER TABLE listings RENAME COLUMN score TO rating")
        count = conn.execute("SELECT count(*) FROM listings").fetchone()[0]
        wait_until(lambda: conn.execute("SELECT count(*) FROM listings").fetchone()[0] > count + 20)
        stop.set()
        thread.join()
        assert failures == []
        decoder = decoding.decoder(own)
        try:
            if decoding.where == "standby":
                decoding.pair.replayed()
            while decoder.step() != 0 or decoder.full:
                pass
        finally:
            decoder.close()
        in_applier_turn(conn, "SELECT kpi.kpi_apply_changes()")
        assert conn.execute("SELECT kpi.kpi_source()").fetchone() == ("raw",)
        assert conn.execute("SELECT kpi.kpi_missing_columns()").fetchone() == (["listings.score"],)


def test_init_db_refuses_a_slot_server_login_without_the_replication_right(decoding: Decoding) -> None:
    with psycopg.connect(decoding.url, autocommit=True) as conn:
        conn.execute("DO $$ BEGIN CREATE ROLE kpi_no_replication LOGIN; EXCEPTION WHEN duplicate_object THEN END $$")
    decoding.pair.replayed()
    slot_url = make_conninfo(decoding.slot_url, user="kpi_no_replication")
    with pytest.raises(CaptureRefused, match="REPLICATION"):
        apply_schema(decoding.url, capture="decoding", decoding_url=slot_url)


def test_uninstall_drops_the_slot_and_the_publication(decoding: Decoding) -> None:
    with psycopg.connect(decoding.url, autocommit=True) as conn:
        found = plan(conn, decoding.slot_url)
        assert found.slot is not None and found.publications == ["kpi"]
        remove(conn, found, lambda _line: None)
        assert conn.execute("SELECT FROM pg_publication").fetchall() == []
    with psycopg.connect(decoding.slot_url, autocommit=True) as server:
        assert server.execute("SELECT FROM pg_replication_slots WHERE database = current_database()").fetchall() == []


def test_the_standby_promoted_under_writes_recovers_exact_numbers(service: Callable[..., Flask]) -> None:
    """The primary lost and its standby, which holds the slot, promoted while the application
    writes: the service (its DATABASE_URL naming both servers, the primary found by libpq) finds
    the slot on a promoted server, makes a new one and rebuilds; no request fails, and the numbers
    are exact afterwards."""
    with Pair() as servers:
        decoding = next(make_database(servers, "standby"))
        name = conninfo_to_dict(decoding.url)["dbname"]
        both = make_conninfo(
            host="127.0.0.1,127.0.0.1",
            port=f"{servers.primary.port},{servers.standby.port}",
            user="postgres",
            dbname=name,
            target_session_attrs="primary",
        )
        app = service(both, decoding_url=decoding.slot_url)
        client = app.test_client()
        headers = {"Authorization": f"Bearer {token()}"}
        failed: list[int] = []
        written = threading.Event()
        stop = threading.Event()

        def application() -> None:
            n = 0
            while not stop.is_set():
                try:
                    with psycopg.connect(both, autocommit=True, connect_timeout=2) as conn:
                        conn.execute("INSERT INTO buyers (id, name) VALUES (1, 'a') ON CONFLICT DO NOTHING")
                        while not stop.is_set():
                            n += 1
                            conn.execute(
                                "INSERT INTO listings (id, price, status, listed_at) VALUES (%s, 10, 'active', %s)"
                                " ON CONFLICT (id) DO UPDATE SET price = listings.price + 1",
                                [n, NOW],
                            )
                            written.set()
                except psycopg.OperationalError:
                    continue  # the primary is gone: the next connection finds the promoted one

        def reader() -> None:
            while not stop.is_set():
                status = client.get("/api/kpi?from=2026-11-01&to=2026-12-31", headers=headers).status_code
                if status != 200:
                    failed.append(status)

        threads = [threading.Thread(target=application), threading.Thread(target=reader)]
        for thread in threads:
            thread.start()
        try:
            with psycopg.connect(decoding.url, autocommit=True) as conn:
                wait_until(lambda: conn.execute("SELECT sum(listings) FROM kpi.kpi_sums").fetchone()[0] is not None)
            servers.primary.stop("immediate")
            servers.standby.promote()
            written.clear()
            written.wait(30)
            with psycopg.connect(decoding.slot_url, autocommit=True) as conn:
                wait_until(
                    lambda: "promoted" in (conn.execute("SELECT lost FROM kpi.kpi_decoding").fetchone()[0] or "")
                )
                wait_until(lambda: conn.execute("SELECT kpi.kpi_source()").fetchone() == ("summaries",), seconds=60)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        with psycopg.connect(decoding.slot_url, autocommit=True) as conn:
            count = conn.execute("SELECT count(*) FROM listings").fetchone()[0]
            wait_until(
                lambda: conn.execute("SELECT sum(listings) FROM kpi.kpi_sums WHERE grain = 900").fetchone() == (count,)
            )
            applied, rebuilt = applied_and_rebuilt(conn)
            assert applied == rebuilt
        assert failed == []


def test_a_service_that_does_not_decode_refuses_a_decoding_database(decoding: Decoding) -> None:
    """The triggers are gone: a service without KPI_CAPTURE=decoding would serve summaries that
    nothing feeds."""
    app = create_app(make_settings(decoding.url))
    try:
        answer = app.test_client().get("/readyz")
        assert answer.status_code == 503
        body = answer.get_json()
        assert body["status"] == "incompatible" and "KPI_CAPTURE=decoding" in body["message"]
    finally:
        app.extensions["kpi_stream"].hub.close()
        app.extensions["kpi"].close()


@pytest.fixture
def on_primary(pair: Pair) -> Iterator[Decoding]:
    yield from make_database(pair, "primary")


def test_the_decoders_session_is_not_the_application_at_work(on_primary: Decoding) -> None:
    """The applier rests while the application's sessions are busy (its pacing): a peek of the
    decoder's on the primary must not count as one, or the applier rests for its own decoder."""
    with psycopg.connect(on_primary.url, autocommit=True) as own:
        decoder = on_primary.decoder(own)
        busy = threading.Thread(target=lambda: decoder._slot_server().execute("SELECT pg_sleep(1)"))
        with psycopg.connect(on_primary.slot_url, autocommit=True, application_name="kpi-service") as service:
            try:
                busy.start()
                wait_until(
                    lambda: service.execute(
                        "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(1)')"
                    ).fetchone()[0]
                )
                assert service.execute("SELECT kpi.kpi_application_at_work()").fetchone() == (False,)
            finally:
                busy.join()
                decoder.close()


def test_back_to_the_triggers_drops_the_slot_and_keeps_the_numbers(decoding: Decoding) -> None:
    with psycopg.connect(decoding.url, autocommit=True) as conn:
        replace_rows(conn, Dataset([1], [], [], []))
        conn.execute("INSERT INTO listings (id, price, status, listed_at) VALUES (1, 10, 'active', %s)", [NOW])
        apply_schema(decoding.url, capture="triggers", decoding_url=decoding.slot_url)
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal").fetchone() == (12,)
        assert conn.execute("SELECT FROM pg_publication").fetchall() == []
        conn.execute("INSERT INTO listings (id, price, status, listed_at) VALUES (2, 20, 'active', %s)", [NOW])
        in_applier_turn(conn, "SELECT kpi.kpi_apply_changes()")
        assert conn.execute("SELECT sum(listings) FROM kpi.kpi_sums WHERE grain = 900").fetchone() == (2,)
        applied, rebuilt = applied_and_rebuilt(conn)
        assert applied == rebuilt
    with psycopg.connect(decoding.slot_url, autocommit=True) as server:
        assert server.execute("SELECT FROM pg_replication_slots WHERE database = current_database()").fetchall() == []


def test_the_services_read_only_login_decodes_with_the_replication_right(decoding: Decoding) -> None:
    """The service logs in as a member of kpi_reader (sql/ops/roles.sql), read-only on the sales
    tables: with the REPLICATION attribute, and nothing else, it reads the slot and writes the
    log through the service's functions."""
    with psycopg.connect(decoding.url, autocommit=True) as conn:
        conn.execute(sql_text("ops/roles.sql"))
        conn.execute(
            "DO $$ BEGIN CREATE ROLE kpi_decoder LOGIN REPLICATION IN ROLE kpi_reader;"
            " EXCEPTION WHEN duplicate_object THEN END $$"
        )
        replace_rows(conn, Dataset([1], [], [], []))
        decoding.drained(conn, decoding.decoder(conn))
        conn.execute("INSERT INTO listings (id, price, status, listed_at) VALUES (1, 10, 'active', %s)", [NOW])
        decoding.pair.replayed()
        db = Database(make_settings(make_conninfo(decoding.url, user="kpi_decoder"), capture="decoding"))
        decoder = Decoder(pooled(db), make_conninfo(decoding.slot_url, user="kpi_decoder"))
        try:
            assert decoder.step() == 1
            assert db.apply_changes() == 1
        finally:
            decoder.close()
            db.close()
        with (
            pytest.raises(psycopg.errors.InsufficientPrivilege),
            psycopg.connect(make_conninfo(decoding.url, user="kpi_decoder"), autocommit=True) as service,
        ):
            service.execute("INSERT INTO listings (id, price, status, listed_at) VALUES (2, 1, 'active', now())")
        applied, rebuilt = applied_and_rebuilt(conn)
        assert applied == rebuilt


def test_a_publication_kpi_of_the_owners_is_neither_used_nor_dropped(decoding: Decoding) -> None:
    apply_schema(decoding.url, capture="triggers", decoding_url=decoding.slot_url)
    with psycopg.connect(decoding.url, autocommit=True) as conn:
        conn.execute("CREATE PUBLICATION kpi FOR TABLE buyers")
        apply_schema(decoding.url, capture="triggers", decoding_url=decoding.slot_url)
        with pytest.raises(psycopg.Error, match="not the service's"):
            apply_schema(decoding.url, capture="decoding", decoding_url=decoding.slot_url)
        assert plan(conn, decoding.slot_url).publications == []
        assert conn.execute("SELECT pubname FROM pg_publication").fetchall() == [("kpi",)]
