"""KPI reads from a streaming replica (DATABASE_READ_URL): a primary and its replica made with
`pg_basebackup -R`, both of this module's own (tests/servers.py), the primary logging every
statement. Each test prints a REPLICA-REPORT line with its figures (docs/reliability.md, "Read
replica")."""

from __future__ import annotations

import itertools
import json
import re
import statistics
import time
from collections.abc import Iterator

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from psycopg.conninfo import make_conninfo

from kpi_service.app import create_app
from kpi_service.config import Settings
from kpi_service.db import targets
from kpi_service.db.connections import Database
from kpi_service.db.identity import scope_of
from kpi_service.db.replica import Positions, Replica
from kpi_service.db.schema import apply_schema
from kpi_service.db.sql import APPLY, CHANGED, IDENTITY, MODE, SALES_TABLES, WAL_POSITION
from tests.helpers import SECRET, RedisServer, make_settings, token, two_listings, wait_until
from tests.servers import Load, PostgresServer, fetch, gunicorn, replicated, summary
from tests.sse import Sse, serving

pytestmark = [pytest.mark.fault, pytest.mark.slow]

DBNAME = "kpi"
# Every statement in the servers' logs, with the application that ran it.
LOGGING = {"log_statement": "all", "log_line_prefix": "%m [%a] "}
ENTRY = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \S+ \[(.*?)\] ", re.M)  # %a is "[unknown]" before startup
STATEMENT = re.compile(r"LOG:  (?:statement|execute [^:]*): (.*)", re.S)


# What the service may run on the primary: the applier's statements, the replica monitor's
# look at the primary's WAL position, the pool's connection check, transaction control.
def server_side(statement: str) -> str:
    """A statement as PostgreSQL logs it: psycopg's %s placeholders become $1, $2, ..."""
    parts = statement.split("%s")
    return "".join(part + (f"${n}" if n < len(parts) else "") for n, part in enumerate(parts, 1))


MAINTENANCE = {server_side(s) for s in (*APPLY, CHANGED, MODE, SALES_TABLES, IDENTITY, WAL_POSITION)}
MAINTENANCE |= {"", "BEGIN", "COMMIT", "ROLLBACK"}
# The owner's targets are read where they are written (a replica's lag would hold a change back).
# (The server's log continues a statement's lines with a tab.)
MAINTENANCE |= {targets.INSTALLED, targets.queries.kpi_targets.sql.strip().replace("\n", "\n\t")}
KPI_STATEMENT = "FROM unnest("  # sql/runtime/kpi.sql, kpi_windows
AGING_STATEMENT = "kpi.kpi_next_aging("  # sql/runtime/kpi.sql, next_aging


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[PostgresServer, PostgresServer]]:
    with replicated(LOGGING) as (primary, standby):
        with psycopg.connect(primary.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DBNAME}")
        apply_schema(url(primary))
        with psycopg.connect(url(primary), autocommit=True) as conn:
            two_listings(conn)
        wait_until(lambda: replayed_all(primary, standby), seconds=30)
        yield primary, standby


def url(server: PostgresServer) -> str:
    return make_conninfo(server.url, dbname=DBNAME)


def position(primary: PostgresServer) -> int:
    with psycopg.connect(primary.url, autocommit=True) as conn:
        return conn.execute(WAL_POSITION).fetchone()[0]


def replayed_all(primary: PostgresServer, standby: PostgresServer) -> bool:
    written = position(primary)
    with psycopg.connect(standby.url, autocommit=True) as conn:
        return conn.execute("SELECT (pg_last_wal_replay_lsn() - '0/0')::bigint").fetchone()[0] >= written


def statements(server: PostgresServer, since: int) -> list[tuple[str, str]]:
    """(application_name, statement) of each statement the server logged from byte `since` on."""
    text = server.log.read_bytes()[since:].decode(errors="replace")
    starts = list(ENTRY.finditer(text))
    found = []
    for entry, following in zip(starts, [*starts[1:], None], strict=True):
        message = STATEMENT.match(text, entry.end(), following.start() if following else len(text))
        if message:
            found.append((entry.group(1), message.group(1).strip()))
    return found


def add_listing(server: PostgresServer) -> float:
    """A listing committed on the primary now (monotonic time of the commit)."""
    with psycopg.connect(url(server), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO listings (id, price, status, listed_at)"
            " SELECT coalesce(max(id), 0) + 1, 200, 'active', now() - interval '1 day' FROM listings"
        )
    return time.monotonic()


def listings(server: PostgresServer) -> int:
    with psycopg.connect(url(server), autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM listings").fetchone()[0]


def report(name: str, **figures: object) -> None:
    print(f"\nREPLICA-REPORT {json.dumps({'scenario': name, **figures})}")


def test_lag_is_the_age_of_the_oldest_position_not_replayed() -> None:
    positions = Positions()
    assert positions.lag_ms(0) is None  # nothing known: nothing to wait for
    positions.observe(100)
    positions.observe(200)
    positions.observe(150)  # older than what is known: changes nothing
    assert positions.latest == 200
    first = positions.lag_ms(99)
    assert first is not None and first >= 0
    assert positions.lag_ms(150) <= positions.lag_ms(99)  # 100 replayed: the age of 200 now
    assert positions.lag_ms(200) is None
    positions.observe(300)
    assert positions.lag_ms(None) is None  # not in recovery (promoted): all it has is all there is


def test_a_read_waits_for_the_positions_known_when_it_began_only() -> None:
    """A replica steadily a little behind a busy primary: new positions keep arriving while a read
    waits, and it must not wait for them too (it would wait until the bound every time)."""
    settings = make_settings("postgresql://127.0.0.1:1/kpi", database_read_url="postgresql://127.0.0.1:2/kpi")
    replica = Replica(settings, Database(settings))
    replica.positions.observe(100)
    replayed = iter([50, 150])

    class Conn:
        def execute(self, statement: str) -> Conn:
            replica.positions.observe(replica.positions.latest + 100)  # the primary wrote on
            return self

        def fetchone(self) -> dict:
            return {"position": next(replayed)}

    assert replica._caught_up(Conn())  # type: ignore[arg-type]
    assert replica.positions.latest == 300
    replica.db.close()


@pytest.fixture
def app(servers: tuple[PostgresServer, PostgresServer]) -> Iterator[Flask]:
    primary, standby = servers
    # The applier at its default interval, as docs/reliability.md reports this setup.
    settings = make_settings(
        url(primary),
        database_read_url=url(standby),
        cache_ttl=1,
        replica_max_lag_ms=500,
        apply_interval=Settings.apply_interval,
    )
    application = create_app(settings)
    client = application.test_client()
    wait_until(lambda: client.get("/readyz").get_json()["checks"].get("replica") == "ok")
    yield application
    application.extensions["kpi"].close()


def window(n: int) -> str:
    """A window no earlier request asked for (aged_days makes the cache key unique)."""
    return f"/api/kpi?from=2026-02-01&to=2026-02-28&aged_days={1 + n % 3650}"


def computed(client: FlaskClient, path: str) -> dict:
    response = client.get(path, headers={"Authorization": f"Bearer {token()}"})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["meta"]["cached"] is False
    return body


def test_a_standby_shares_its_primarys_keys_in_redis(
    servers: tuple[PostgresServer, PostgresServer], app: Flask
) -> None:
    """One system identifier and one name: the same scope (serving/keys.py), whichever answers."""
    scopes = set()
    for server in servers:
        with psycopg.connect(url(server)) as conn:
            scopes.add(scope_of(*conn.execute(IDENTITY).fetchone()))
    assert scopes == {app.extensions["kpi"].db.scope()}


def test_kpi_statements_run_on_the_replica(servers: tuple[PostgresServer, PostgresServer], app: Flask) -> None:
    primary, standby = servers
    client = app.test_client()
    since = {server: server.log.stat().st_size for server in servers}
    bodies = [computed(client, window(n)) for n in range(5)]
    bodies.append(computed(client, "/api/kpi/history?from=2026-01-01&to=2026-06-30&interval=month"))
    add_listing(primary)  # some maintenance for the applier
    with serving(app) as base, Sse(f"{base}/api/kpi/stream", headers={"Authorization": f"Bearer {token()}"}) as sse:
        assert sse.next_event().event == "kpi"  # and the hub looks up the window's next aging
        wait_until(lambda: any(AGING_STATEMENT in s for _, s in statements(standby, since[standby])))
    wait_until(lambda: any("kpi_apply_changes" in s for _, s in statements(primary, since[primary])))

    assert {body["meta"]["source"] for body in bodies} == {"replica"}
    on_primary = [s for name, s in statements(primary, since[primary]) if name.startswith("kpi-service")]
    on_replica = [s for name, s in statements(standby, since[standby]) if name.startswith("kpi-service")]
    assert set(on_primary) <= MAINTENANCE, set(on_primary) - MAINTENANCE
    assert not any(KPI_STATEMENT in s or AGING_STATEMENT in s for s in on_primary)
    # Six computations plus the stream's first value, and its aging look-up, all there.
    assert sum(KPI_STATEMENT in s for s in on_replica) >= 7
    assert any(AGING_STATEMENT in s for s in on_replica)
    report(
        "statements by server",
        primary={s[:60]: on_primary.count(s) for s in sorted(set(on_primary))},
        replica_kpi_statements=sum(KPI_STATEMENT in s for s in on_replica),
        replica_statements=len(on_replica),
    )


def test_a_write_reaches_the_api_through_the_replica(
    servers: tuple[PostgresServer, PostgresServer], app: Flask
) -> None:
    primary, standby = servers
    client = app.test_client()
    auth = {"Authorization": f"Bearer {token()}"}
    path = "/api/kpi?aged_days=61"  # all time, so every new listing counts
    replay_ms, visible_ms = [], []
    for _ in range(10):
        expected = listings(primary) + 1
        committed = add_listing(primary)
        wait_until(lambda: replayed_all(primary, standby))
        replay_ms.append((time.monotonic() - committed) * 1000)
        seen: dict = {}

        def arrived(expected: int = expected, seen: dict = seen) -> bool:
            body = client.get(path, headers=auth).get_json()
            seen.update(body)
            return body["metrics"]["total_listings"] == expected

        wait_until(arrived, seconds=10)
        visible_ms.append((time.monotonic() - committed) * 1000)
        assert seen["meta"]["source"] == "replica"
    # The applier stored its last batch's position, which every computation waits for on the replica.
    assert 0 < app.extensions["kpi"].cache.latest_change()[1] <= position(primary)
    report(
        "write to /api/kpi through the replica (KPI_CACHE_TTL=1, applier every 500 ms)",
        writes=len(visible_ms),
        replayed_ms_max=round(max(replay_ms), 1),
        visible_ms_median=round(statistics.median(visible_ms)),
        visible_ms_max=round(max(visible_ms)),
    )
    # The stated freshness: the applier's interval and one apply, plus the cache TTL; the
    # replica's replay adds milliseconds.
    assert max(visible_ms) < 500 + 1000 + 1000


def test_a_lagging_replica_sends_reads_to_the_primary_until_it_catches_up(
    servers: tuple[PostgresServer, PostgresServer], app: Flask
) -> None:
    primary, standby = servers
    client = app.test_client()
    replica = app.extensions["kpi"].db.replica
    numbers = itertools.count(100)
    # An idle primary: nothing replayed for longer than the bound, and the replica is not lagging.
    with psycopg.connect(standby.url, autocommit=True) as conn:

        def idle_ms() -> float:
            since = "SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000"
            return conn.execute(since).fetchone()[0]

        wait_until(lambda: idle_ms() > 2 * replica.max_lag_ms)
        assert computed(client, window(next(numbers)))["meta"]["source"] == "replica"
        assert client.get("/readyz").get_json()["checks"]["replica"] == "ok"

        conn.execute("SELECT pg_wal_replay_pause()")
        try:
            expected = listings(primary) + 1
            add_listing(primary)
            path = "/api/kpi?aged_days=62"

            def fresh() -> dict:
                return client.get(path, headers={"Authorization": f"Bearer {token()}"}).get_json()

            wait_until(lambda: fresh()["metrics"]["total_listings"] == expected)
            lagging_body = fresh()
            checks = client.get("/readyz").get_json()["checks"]
            assert checks["replica"] == "lagging" and checks["replica_lag_ms"] > replica.max_lag_ms
            started = time.monotonic()
            body = computed(client, window(next(numbers)))
            primary_ms = (time.monotonic() - started) * 1000
            assert body["meta"]["source"] == "primary"
            assert primary_ms < replica.max_lag_ms  # no waiting for the replica once it is known to lag
        finally:
            conn.execute("SELECT pg_wal_replay_resume()")
    resumed = time.monotonic()
    wait_until(lambda: client.get("/readyz").get_json()["checks"]["replica"] == "ok")
    back_ms = (time.monotonic() - resumed) * 1000
    body = computed(client, window(next(numbers)))
    assert body["meta"]["source"] == "replica"
    assert fresh()["metrics"]["total_listings"] == expected
    report(
        "replay paused on the replica (KPI_REPLICA_MAX_LAG_MS=500)",
        served_while_paused=lagging_body["meta"].get("source"),
        read_on_primary_ms=round(primary_ms, 1),
        replica_ok_after_resume_ms=round(back_ms),
    )


def test_the_replica_stops_and_comes_back_under_load(
    servers: tuple[PostgresServer, PostgresServer], redis_server: RedisServer
) -> None:
    primary, standby = servers
    env = {
        "DATABASE_URL": url(primary),
        "DATABASE_READ_URL": url(standby),
        "REDIS_URL": redis_server.url,
        "JWT_SECRET_KEY": SECRET,
        "GUNICORN_WORKERS": "2",
        "KPI_CACHE_TTL": "1",
    }
    bearer = token()
    counter = itertools.count(200)
    with gunicorn(env) as one, gunicorn(env) as two:
        bases = (one, two)
        for base in bases:
            wait_until(lambda base=base: fetch(f"{base}/readyz", None)[1]["checks"].get("replica") == "ok")

        def paths(n: int) -> tuple[str, str]:
            base = bases[n % 2]
            if n % 4 < 2:
                return "cached", f"{base}/api/kpi?from=2026-03-01&to=2026-03-31"
            return "new", base + window(next(counter))

        def source(sample: object) -> str | None:
            return sample.body.get("meta", {}).get("source")  # type: ignore[attr-defined]

        def computed_after(at: float, where: str) -> bool:
            return load.any(lambda s: s.sent > at and s.kind == "new" and source(s) == where)

        with Load("", bearer, rate=40, paths=paths, threads=8) as load:
            wait_until(lambda: computed_after(0, "replica"))
            stopped_at = time.monotonic()
            standby.stop()
            wait_until(lambda: computed_after(stopped_at, "primary"))
            first_primary = time.monotonic() - stopped_at
            # Each worker finds out by itself (its monitor, or a read that failed on the replica).
            wait_until(lambda: all(fetch(f"{base}/readyz", None)[1]["checks"]["replica"] == "down" for base in bases))
            wait_until(lambda: time.monotonic() > stopped_at + 5)  # the outage's length is the scenario
            standby.start()
            up_at = time.monotonic()

            def recovered() -> bool:
                # Every worker of both instances reads from the replica again: the last 16
                # computed answers all came from it.
                last = [s for s in sorted(load.snapshot(), key=lambda s: s.sent) if s.kind == "new"][-16:]
                return all(s.sent > up_at and source(s) == "replica" for s in last)

            wait_until(recovered, seconds=30)
            recovered_s = time.monotonic() - up_at
        samples = load.snapshot()
    during = [s for s in samples if stopped_at <= s.sent < up_at]
    figures = summary(
        "replica stopped (fast shutdown) for 5 s under 2 gunicorn instances x 2 workers, 8 client threads",
        samples,
        during_outage=len(during),
        sources_during_outage=sorted({str(source(s)) for s in during if s.kind == "new"}),
        first_primary_answer_s=round(first_primary, 2),
        max_latency_during_outage_s=round(max(s.latency for s in during), 3),
        all_on_replica_again_s=round(recovered_s, 2),
    )
    assert figures["non_2xx"] == {} and figures["stale_serves"] == 0
    assert all(s.status == 200 for s in samples)
    assert figures["max_latency_s"] < 2.0
