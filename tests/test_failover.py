"""A PostgreSQL primary failover under load: DATABASE_URL names the primary and its standby
(libpq's multi-host form, target_session_attrs=primary); the primary stops and the standby is
promoted (`pg_ctl promote`, as Patroni or pg_auto_failover do). Both servers are this module's
own (a primary and a `pg_basebackup -R` standby, tests/servers.py). Prints a FAULT-REPORT line
(docs/reliability.md, "Primary failover")."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import UTC, date, datetime
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from kpi_service.cli.seed import seed
from kpi_service.db.schema import apply_schema
from kpi_service.db.sql import kpi_statement_rows
from kpi_service.serving.responses import KpiValuesSchema
from kpi_service.serving.windows import Window
from tests.helpers import SECRET, RedisServer, token, wait_until
from tests.servers import Load, PostgresServer, fetch, gunicorn, replicated, summary

pytestmark = [pytest.mark.fault, pytest.mark.slow]

DBNAME = "kpi"
UNTIL = datetime(2026, 11, 1, tzinfo=UTC)
# Warmed before the failover and asked throughout; the writes after the promotion land in B.
CACHED = {
    "A": (date(2026, 3, 1), date(2026, 3, 31)),
    "B": (date(2026, 10, 1), date(2026, 10, 20)),
}
# The writer before the failover writes here: in no window the load asks for, nor aged at its end.
WRITER_DAY = datetime(2026, 10, 25, 12, tzinfo=UTC)  # after B: neither in it nor aged by its end
AGED_DAYS = 60


def url(server: PostgresServer) -> str:
    return make_conninfo(server.url, dbname=DBNAME)


def path(first: date, last: date) -> str:
    return f"/api/kpi?from={first}&to={last}&tz=UTC"


def reference(server: PostgresServer, first: date | None, last: date | None) -> dict[str, Any]:
    """The window's KPIs from the raw rows (not the summaries) of that server, as the API words them."""
    window = Window.of_dates(first, last, "UTC")
    with psycopg.connect(url(server), row_factory=dict_row) as conn:
        (row,) = kpi_statement_rows(conn, "raw", [(window.start, window.end, window.as_of(utc_now()))], AGED_DAYS)
    return KpiValuesSchema().load(row)


def summaries_match_raw(server: PostgresServer) -> None:
    """The summaries (applied across the failover) say what the raw rows say, for every window
    checked: a change applied twice or lost would show in one of them."""
    windows = [Window.of_dates(None, None, "UTC"), Window.of_dates(date(2026, 6, 1), date(2026, 6, 30), "UTC")]
    windows += [Window.of_dates(first, last, "UTC") for first, last in CACHED.values()]
    windows += [Window.of_dates(date(2025, m, 1), date(2025, m, 28), "UTC") for m in range(1, 13)]
    now = utc_now()
    bounds = [(w.start, w.end, w.as_of(now)) for w in windows]
    with psycopg.connect(url(server), row_factory=dict_row) as conn:
        assert conn.execute("SELECT kpi.kpi_source() AS s").fetchone()["s"] == "summaries"
        assert kpi_statement_rows(conn, "summaries", bounds, AGED_DAYS) == kpi_statement_rows(
            conn, "raw", bounds, AGED_DAYS
        )


def utc_now() -> datetime:
    return datetime.now(UTC)


def pending(server: PostgresServer) -> int:
    with psycopg.connect(url(server), autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM kpi.kpi_changes").fetchone()[0]


class Writer:
    """The application writing to the primary until it goes: listings on WRITER_DAY."""

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        self.committed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            with psycopg.connect(url(self.server), autocommit=True) as conn:
                while not self._stop.wait(0.02):
                    conn.execute(
                        "INSERT INTO listings (price, status, listed_at, score) VALUES (500, 'active', %s, 50)",
                        [WRITER_DAY],
                    )
                    conn.execute("UPDATE listings SET price = price + 1 WHERE listed_at = %s", [WRITER_DAY])
                    self.committed += 1
        except psycopg.Error:
            return  # the primary went


@pytest.mark.parametrize("read_url", [False, True], ids=["primary-only", "with-read-url"])
def test_the_primary_fails_over_to_its_promoted_standby_under_load(redis_server: RedisServer, read_url: bool) -> None:
    """With a read URL too (the same two hosts, prefer-standby), the KPI reads go to the standby
    until it is promoted, then to it as the primary."""
    with replicated() as (primary, standby):
        with psycopg.connect(primary.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DBNAME}")
        apply_schema(url(primary))
        seed(url(primary), 400, seed=11, until=UNTIL)
        both = f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/{DBNAME}"
        env = {
            "DATABASE_URL": f"{both}?target_session_attrs=primary&connect_timeout=2",
            "REDIS_URL": redis_server.url,
            "JWT_SECRET_KEY": SECRET,
            "GUNICORN_WORKERS": "2",
            "KPI_CACHE_TTL": "1",  # stale within a second: the failover is served from stale values
        }
        if read_url:
            reads = f"postgresql://postgres@127.0.0.1:{standby.port},127.0.0.1:{primary.port}/{DBNAME}"
            env["DATABASE_READ_URL"] = f"{reads}?target_session_attrs=prefer-standby&connect_timeout=2"
        before = {name: reference(primary, *days) for name, days in CACHED.items()}
        bearer = token()
        counter = itertools.count()
        with gunicorn(env) as one, gunicorn(env) as two:
            bases = (one, two)
            if read_url:
                for base in bases:
                    wait_until(lambda base=base: fetch(f"{base}/readyz", None)[1]["checks"].get("replica") == "ok")
            for base in bases:
                for name, days in CACHED.items():
                    status, body = fetch(base + path(*days), bearer)
                    assert status == 200 and body["metrics"] == before[name]

            def paths(n: int) -> tuple[str, str]:
                base = bases[n % 2]
                if n % 5 == 4:  # a window never asked before
                    return "new", f"{base}/api/kpi?from=2026-02-01&to=2026-02-28&aged_days={1 + next(counter) % 3650}"
                name = "A" if n % 5 < 2 else "B"
                return name, base + path(*CACHED[name])

            with Load("", bearer, rate=40, paths=paths, threads=8) as load, Writer(primary) as writer:
                wait_until(lambda: len(load.snapshot()) >= 40 and writer.committed >= 20)
                stopped_at = time.monotonic()
                primary.stop()
                # No primary until the standby is promoted (a failover manager's detection time):
                # cached windows are served stale meanwhile, a window never computed is a 503;
                # with the read URL the standby answers both, fresh (it has every write there was).
                if read_url:
                    wait_until(lambda: sum(s.sent > stopped_at for s in load.snapshot()) >= 40)
                else:
                    wait_until(lambda: load.any(lambda s: s.sent > stopped_at and s.stale), seconds=10)
                    wait_until(lambda: load.any(lambda s: s.sent > stopped_at and s.status == 503), seconds=10)
                standby.promote()
                promoted_at = time.monotonic()
                new_primary = standby
                # The application writes to the new primary; the service's applier takes it in there.
                with psycopg.connect(url(new_primary)) as conn:  # one transaction: one new value of B
                    conn.execute(
                        "INSERT INTO listings (price, status, listed_at) VALUES (777, 'active', '2026-10-05T09:00Z')"
                    )
                    conn.execute("UPDATE listings SET price = price + 3 WHERE listed_at >= '2026-10-10'")
                written_at = time.monotonic()
                wait_until(lambda: pending(new_primary) == 0, seconds=10)
                applied_s = time.monotonic() - written_at
                after = reference(new_primary, *CACHED["B"])
                assert after != before["B"]

                def served_everywhere() -> bool:
                    return all(fetch(base + path(*CACHED["B"]), bearer)[1].get("metrics") == after for base in bases)

                wait_until(served_everywhere, seconds=15)
                settled_at = time.monotonic()
                wait_until(lambda: time.monotonic() > settled_at + 1)  # some load on the new primary
        samples = load.snapshot()
        cached = [s for s in samples if s.kind in CACHED]
        during = [s for s in samples if stopped_at <= s.sent < settled_at]
        figures = summary(
            "primary stopped, standby promoted, under 2 gunicorn instances x 2 workers, 8 client threads"
            + (", reads from the standby (DATABASE_READ_URL)" if read_url else ""),
            samples,
            during_failover=len(during),
            without_primary_s=round(promoted_at - stopped_at, 2),
            applied_on_new_primary_s=round(applied_s, 2),
            writes_before=writer.committed,
            new_window_503=sum(1 for s in samples if s.kind == "new" and s.status == 503),
        )
        # Every window computed before is answered throughout, and only with right numbers:
        # A's never changed, B's are those before the writes to the new primary or after them.
        assert during and all(s.status == 200 for s in cached), figures
        if read_url:
            assert all(s.status == 200 for s in samples)
        else:
            assert figures["stale_serves"] > 0
        assert all(s.body["metrics"] == before["A"] for s in cached if s.kind == "A")
        seen_b = [s.body["metrics"] for s in cached if s.kind == "B"]
        assert all(m in (before["B"], after) for m in seen_b), [m for m in seen_b if m not in (before["B"], after)]
        # A window never computed is answered, or a clean 503 envelope while no primary answers.
        assert all(s.status == 200 or (s.status == 503 and s.is_envelope) for s in samples if s.kind == "new")
        # Neither the writes made before the failover nor those after it were applied twice or lost.
        summaries_match_raw(new_primary)
