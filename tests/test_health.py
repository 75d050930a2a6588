"""/healthz and /readyz: no token, nothing about the configuration, 503 only for the database."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask

from kpi_service.app import create_app
from kpi_service.db.schema import SCHEMA_VERSION, service_version
from tests.helpers import SECRET, RedisServer, free_port, make_settings

DOWN_DATABASE = "postgresql://postgres:hunter2@127.0.0.1:1/none"


@contextmanager
def app_with(database_url: str, **overrides: object) -> Iterator[Flask]:
    app = create_app(make_settings(database_url, **overrides))
    try:
        yield app
    finally:
        app.extensions["kpi"].close()


def assert_no_configuration(text: str) -> None:
    for secret in (SECRET, "hunter2", "postgresql://", "redis://", "127.0.0.1"):
        assert secret not in text


def test_liveness_touches_nothing() -> None:
    with app_with(DOWN_DATABASE) as app:
        response = app.test_client().get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_ready_with_database_and_in_process_cache(client) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.get_json()
    pending = body["checks"].pop("pending_changes")
    assert isinstance(pending, int) and pending >= 0
    lag = body["checks"].pop("applier_lag_s")
    assert lag == 0 if pending == 0 else lag is None or lag >= 0
    # The summaries' audit: no pass has ended yet on the test database, or one repaired nothing.
    audit = body["checks"].pop("audit")
    assert audit["last_repairs"] in (None, 0) and audit["repairs"] == 0
    scope = body.pop("cache_scope")  # whose keys in Redis are this service's (serving/keys.py)
    assert isinstance(scope, str) and len(scope) == 16 and int(scope, 16) >= 0
    assert body == {
        "status": "ready",
        "checks": {"database": "ok", "redis": "in-process", "schema": "ok", "kpi_source": "summaries"},
        "version": {"service": service_version(), "schema": SCHEMA_VERSION, "database_schema": SCHEMA_VERSION},
    }
    assert_no_configuration(response.get_data(as_text=True))


def test_ready_with_a_real_redis(database_url: str, redis_server: RedisServer) -> None:
    with app_with(database_url, redis_url=redis_server.url) as app:
        body = app.test_client().get("/readyz").get_json()
    assert body["checks"]["database"] == "ok" and body["checks"]["redis"] == "ok"


def test_redis_down_is_reported_but_still_ready(database_url: str) -> None:
    with app_with(database_url, redis_url=f"redis://:hunter2@127.0.0.1:{free_port()}/0") as app:
        response = app.test_client().get("/readyz")
    assert response.status_code == 200
    checks = response.get_json()["checks"]
    assert checks["database"] == "ok" and checks["redis"] == "down"
    assert_no_configuration(response.get_data(as_text=True))


def test_database_down_is_503_envelope_within_a_second_or_so() -> None:
    with app_with(DOWN_DATABASE) as app:
        started = time.monotonic()
        response = app.test_client().get("/readyz")
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    body = response.get_json()
    assert body["success"] is False and body["metrics"] is None and body["message"]
    assert body["checks"] == {"database": "down", "redis": "in-process"}
    assert elapsed < 2.5
    assert_no_configuration(response.get_data(as_text=True))


def test_probes_need_no_token(client) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
