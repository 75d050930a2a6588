"""Deployments on different databases sharing one Redis (staging and production, two
dealerships): each serves its own database's numbers, never another's cached ones, and a service
whose database has no KPI schema serves nothing cached (serving/keys.py, the scope)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import fakeredis
import psycopg
import pytest
import redis
from flask import Flask
from psycopg import sql
from psycopg.conninfo import make_conninfo

from kpi_service import app as app_module
from kpi_service.client import KpiClient
from kpi_service.db.errors import SchemaMissing
from kpi_service.db.schema import apply_schema
from kpi_service.db.sql import sql_text
from tests.dataset import catch_up
from tests.helpers import RedisServer, insert_listing, token, two_listings
from tests.sse import serving

WINDOW = {"from": "2026-03-01", "to": "2026-03-31", "tz": "UTC"}
NO_SHARED_CACHE = (
    "no shared cache: the service's role may not run pg_control_system() (PUBLIC may by default),"
    " so it cannot tell this database's values in Redis from another's"
)


@pytest.fixture
def other(raw_database_url: str) -> Iterator[str]:
    """A second database with the KPI schema, holding one listing in the window (the first holds two)."""
    with psycopg.connect(raw_database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE purchases, leads, listings, buyers RESTART IDENTITY CASCADE")
        insert_listing(conn, datetime(2026, 3, 5, tzinfo=UTC))
        catch_up(conn)
    yield raw_database_url


@pytest.fixture
def shared_fakeredis(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every app made from now on uses one in-process Redis, as instances sharing a server do."""
    server = fakeredis.FakeServer()
    monkeypatch.setattr(app_module, "connect", lambda settings: fakeredis.FakeRedis(server=server))


def kpis(app: Flask) -> tuple[int, dict]:
    response = app.test_client().get("/api/kpi", query_string=WINDOW, headers={"Authorization": f"Bearer {token()}"})
    return response.status_code, response.get_json()


def test_two_databases_sharing_redis_serve_their_own_numbers(
    conn: psycopg.Connection,
    other: str,
    empty_database: str,
    shared_fakeredis: None,
    make_app: Callable[..., Flask],
) -> None:
    two_listings(conn)
    first = make_app()
    second = make_app(database_url=other)
    never_initialized = make_app(database_url=empty_database)

    status, body = kpis(first)
    assert status == 200 and body["metrics"]["total_listings"] == 2 and body["meta"]["cached"] is False
    status, body = kpis(second)
    assert status == 200 and body["metrics"]["total_listings"] == 1 and body["meta"]["cached"] is False
    # Each stored its value under its own database's scope; each now answers from it.
    assert kpis(first)[1]["metrics"]["total_listings"] == 2 and kpis(first)[1]["meta"]["cached"] is True
    assert kpis(second)[1]["metrics"]["total_listings"] == 1 and kpis(second)[1]["meta"]["cached"] is True
    scopes = {app.extensions["kpi"].db.scope() for app in (first, second)}
    assert len(scopes) == 2 and None not in scopes

    # No KPI schema: nothing cached is served, whoever's it is.
    for _ in range(2):  # the second time after the service has reached its database
        status, body = kpis(never_initialized)
        assert status == 503 and body["success"] is False
    assert never_initialized.extensions["kpi"].db.scope() is None


def test_the_schema_removed_under_a_running_service_ends_serving_its_cached_values(
    empty_database: str, shared_fakeredis: None, make_app: Callable[..., Flask]
) -> None:
    apply_schema(empty_database)
    app = make_app(database_url=empty_database)
    assert kpis(app)[0] == 200 and kpis(app)[1]["meta"]["cached"] is True
    with psycopg.connect(empty_database, autocommit=True) as owner:
        owner.execute("DROP FUNCTION kpi.kpi_source() CASCADE")
    db = app.extensions["kpi"].db
    with pytest.raises(SchemaMissing):
        db.mode(refresh=True)  # its next look-up (every 30 s, and /readyz's)
    # Not the value cached before: computed again (the statement itself needs no kpi_source()).
    status, body = kpis(app)
    assert status == 200 and body["meta"]["cached"] is False


@pytest.mark.slow
def test_two_services_and_a_client_on_one_real_redis(
    conn: psycopg.Connection, other: str, redis_server: RedisServer, make_app: Callable[..., Flask]
) -> None:
    two_listings(conn)
    first = make_app(redis_url=redis_server.url)
    second = make_app(database_url=other, redis_url=redis_server.url)
    assert kpis(first)[1]["metrics"]["total_listings"] == 2
    assert kpis(second)[1]["metrics"]["total_listings"] == 1
    assert kpis(second)[1]["meta"]["cached"] is True
    stored = sorted(key.decode() for key in redis.Redis.from_url(redis_server.url).keys("kpi:v2:*:kpi:*"))
    assert len(stored) == 2 and len({key.split(":")[2] for key in stored}) == 2
    with serving(second) as base:
        # The client learns the second service's scope from its /readyz, and reads its value.
        body = KpiClient(redis_server.url, base, token()).get(date_from="2026-03-01", date_to="2026-03-31")
    assert body["metrics"]["total_listings"] == 1 and body["meta"]["cached"] is True


def test_a_role_that_may_not_read_the_system_identifier_shares_nothing(
    empty_database: str, shared_fakeredis: None, make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    """Where the owner revoked pg_control_system() from PUBLIC: the service computes every answer
    itself rather than guess whose values Redis holds, and says why once."""
    apply_schema(empty_database)
    name = f"kpi_test_login_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(empty_database, autocommit=True) as owner:
        owner.execute(sql_text("ops/roles.sql"))
        owner.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE kpi_reader").format(sql.Identifier(name)))
        owner.execute("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC")
        app = make_app(database_url=make_conninfo(empty_database, user=name))
        try:
            with caplog.at_level(logging.ERROR, logger="kpi_service"):
                for _ in range(2):
                    status, body = kpis(app)
                    assert status == 200 and body["meta"]["cached"] is False
            assert app.extensions["kpi"].db.scope() is None
            assert [r.getMessage() for r in caplog.records].count(NO_SHARED_CACHE) == 1
        finally:
            app.extensions["kpi"].close()
            owner.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
