"""Server-Timing, request ids, the JSON request log and the Prometheus metrics."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from flask import Flask
from prometheus_client import REGISTRY

from kpi_service.app import create_app
from kpi_service.config import ConfigError, Settings
from kpi_service.ops.logs import json_formatter
from tests.helpers import SECRET, make_settings, token, two_listings

ROOT = Path(__file__).parents[1]


class Lines(logging.Handler):
    """The JSON lines the service's request logger writes, as the production formatter makes them."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(json_formatter())
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def request_log() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("kpi_service.request")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture
def make_app(database_url: str, conn: psycopg.Connection) -> Iterator:
    apps: list[Flask] = []

    def make(**overrides: object) -> Flask:
        apps.append(create_app(make_settings(database_url, **overrides)))
        return apps[-1]

    yield make
    for app in apps:
        app.extensions["kpi"].close()


def timing(header: str) -> dict[str, str]:
    return {part.strip().split(";", 1)[0]: part.strip().split(";", 1)[1] for part in header.split(",")}


def test_server_timing_of_a_miss_then_a_hit(client, auth, conn) -> None:
    two_listings(conn)
    miss = timing(client.get("/api/kpi", headers=auth).headers["Server-Timing"])
    assert set(miss) == {"db", "cache", "app"}
    assert miss["cache"] == "desc=miss"
    db_ms, app_ms = float(miss["db"].removeprefix("dur=")), float(miss["app"].removeprefix("dur="))
    assert 0 <= db_ms <= app_ms
    hit = timing(client.get("/api/kpi", headers=auth).headers["Server-Timing"])
    assert set(hit) == {"cache", "app"} and hit["cache"] == "desc=hit"


def test_history_has_server_timing_and_errors_do_not(client, auth) -> None:
    ok = client.get("/api/kpi/history?from=2026-01-01&to=2026-01-03&interval=day", headers=auth)
    assert "cache;desc=miss" in ok.headers["Server-Timing"]
    assert "Server-Timing" not in client.get("/api/kpi?from=nope", headers=auth).headers


@pytest.mark.parametrize(
    ("given", "kept"),
    [("abc-123_X.y:z", True), ("x" * 64, True), ("x" * 65, False), ("bad id", False), ('a"b', False), ("", False)],
)
def test_request_id_is_echoed_when_safe(client, given: str, kept: bool) -> None:
    returned = client.get("/healthz", headers={"X-Request-ID": given}).headers["X-Request-ID"]
    if kept:
        assert returned == given
    else:
        assert returned != given and len(returned) == 32


def test_one_json_line_per_request_without_secrets(make_app, conn, request_log: Lines) -> None:
    client = make_app(access_log="all").test_client()
    secret_token = token()
    response = client.get(
        f"/api/kpi?from=2026-01-01&tz=UTC&aged_days=7&jwt={secret_token}",
        headers={"Authorization": f"Bearer {secret_token}", "X-Request-ID": "req-1"},
    )
    assert response.status_code == 400  # the unknown parameter
    client.get("/api/kpi", headers={"Authorization": f"Bearer {token()}"})
    first, second = request_log.lines
    assert first["method"] == "GET" and first["path"] == "/api/kpi" and first["route"] == "/api/kpi"
    assert first["status"] == 400 and first["request_id"] == "req-1" and first["cache"] is None
    assert first["remote_addr"] == "127.0.0.1" and first["duration_ms"] >= 0
    assert first["level"] == "INFO" and first["logger"] == "kpi_service.request" and "ts" in first
    assert second["status"] == 200 and second["cache"] == "miss" and second["message"] == "GET /api/kpi 200"
    text = json.dumps(request_log.lines)
    assert secret_token not in text and SECRET not in text and "aged_days" not in text and "?" not in text


def test_by_default_only_responses_other_than_success_are_logged(client, auth, conn, request_log: Lines) -> None:
    client.get("/api/kpi", headers=auth)  # the miss
    hit = client.get("/api/kpi", headers=auth)
    assert client.get("/api/kpi", headers={**auth, "If-None-Match": hit.headers["ETag"]}).status_code == 304
    client.get("/healthz")
    assert request_log.lines == []
    client.get("/api/kpi?from=nope", headers=auth)
    client.get("/api/kpi")
    client.get("/no/such/thing")
    assert [line["status"] for line in request_log.lines] == [400, 401, 404]


def test_unmatched_paths_are_one_route(client, request_log: Lines) -> None:
    client.get("/no/such/thing/42")
    assert request_log.lines[-1]["route"] == "unmatched" and request_log.lines[-1]["status"] == 404


def test_access_log_setting_is_validated() -> None:
    with pytest.raises(ConfigError, match="KPI_ACCESS_LOG"):
        env = {"JWT_SECRET_KEY": SECRET, "DATABASE_URL": "postgresql://x", "KPI_ENV": "development"}
        Settings.from_env(env | {"KPI_ACCESS_LOG": "some"})


def test_request_ids_are_unique_and_differ_in_a_forked_child() -> None:
    from kpi_service.web.request_hooks import _ids

    ids = {_ids.next() for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first id, to the parent
        os.write(write, _ids.next().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read), os.close(write)
    assert child[:16] != next(iter(ids))[:16]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_metrics_count_requests_cache_outcomes_and_sql(client, auth, conn) -> None:
    kpi_ok = {"method": "GET", "route": "/api/kpi", "status": "200"}
    before = {
        "requests": sample("kpi_http_requests_total", **kpi_ok),
        "miss": sample("kpi_cache_outcomes_total", endpoint="kpi", outcome="miss"),
        "hit": sample("kpi_cache_outcomes_total", endpoint="kpi", outcome="hit"),
        "sql": sample("kpi_computation_duration_seconds_count", endpoint="kpi"),
        "statements": sample("kpi_statements_total", endpoint="kpi"),
        "latency": sample("kpi_http_request_duration_seconds_count", method="GET", route="/api/kpi"),
    }
    client.get("/api/kpi", headers=auth)
    client.get("/api/kpi", headers=auth)
    assert sample("kpi_http_requests_total", **kpi_ok) == before["requests"] + 2
    assert sample("kpi_cache_outcomes_total", endpoint="kpi", outcome="miss") == before["miss"] + 1
    assert sample("kpi_cache_outcomes_total", endpoint="kpi", outcome="hit") == before["hit"] + 1
    assert sample("kpi_computation_duration_seconds_count", endpoint="kpi") == before["sql"] + 1
    assert sample("kpi_statements_total", endpoint="kpi") == before["statements"] + 1
    assert sample("kpi_http_request_duration_seconds_count", method="GET", route="/api/kpi") == before["latency"] + 2

    text = client.get("/metrics").get_data(as_text=True)
    for name in (
        "kpi_http_requests_total",
        "kpi_http_request_duration_seconds_bucket",
        "kpi_computation_duration_seconds_bucket",
        "kpi_cache_outcomes_total",
        "kpi_singleflight_waits_total",
        "kpi_summary_changes_applied_total",
        "kpi_summary_apply_duration_seconds_bucket",
    ):
        assert name in text


def test_database_errors_are_counted(auth) -> None:
    app = create_app(make_settings("postgresql://postgres@127.0.0.1:1/none", db_pool_timeout=0.5))
    try:
        before = sample("kpi_database_errors_total", operation="query")
        assert app.test_client().get("/api/kpi", headers=auth).status_code == 503
        assert sample("kpi_database_errors_total", operation="query") == before + 1
    finally:
        app.extensions["kpi"].close()


def test_metrics_token(make_app) -> None:
    client = make_app(metrics_token="scrape-me").test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic scrape-me"}):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 401 and response.get_json()["success"] is False
    assert client.get("/metrics", headers={"Authorization": "Bearer scrape-me"}).status_code == 200


@pytest.mark.parametrize("exposure", ["off", "port:9464"])
def test_no_metrics_route_unless_on(make_app, exposure: str) -> None:
    response = make_app(metrics_exposure=exposure).test_client().get("/metrics")
    assert response.status_code == 404 and response.get_json()["success"] is False


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"KPI_METRICS": "maybe"}, "KPI_METRICS"),
        ({"KPI_METRICS": "port:0"}, "KPI_METRICS"),
        ({"KPI_METRICS": "port:99999"}, "KPI_METRICS"),
        ({"KPI_METRICS": "port:9464", "KPI_METRICS_TOKEN": "t"}, "KPI_METRICS_TOKEN"),
        ({"KPI_LOG_LEVEL": "chatty"}, "KPI_LOG_LEVEL"),
    ],
)
def test_bad_observability_settings_stop_the_start(env: dict[str, str], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        Settings.from_env({"JWT_SECRET_KEY": SECRET, "DATABASE_URL": "postgresql://x", "KPI_ENV": "development", **env})


def test_observability_settings() -> None:
    base = {"JWT_SECRET_KEY": SECRET, "DATABASE_URL": "postgresql://x", "KPI_ENV": "development"}
    default = Settings.from_env(base)
    assert (default.metrics_exposure, default.metrics_token, default.log_level) == ("on", None, "INFO")
    custom = Settings.from_env({**base, "KPI_METRICS": "Port:9464", "KPI_LOG_LEVEL": "debug"})
    assert custom.metrics_port == 9464 and custom.log_level == "DEBUG"


QUIET_CHECK = """
from kpi_service.app import create_app
from kpi_service.config import Settings


def make():
    settings = Settings.from_env(
        {}, jwt_secret_key="k" * 32, database_url="postgresql://h:1/x", apply_interval=0, env="development"
    )
    return create_app(settings).test_client()


def test_passes():
    assert make().get("/no/such/route").status_code == 404


def test_fails():
    make().get("/no/such/route")
    assert False, "on purpose"
"""


@pytest.mark.slow
def test_the_suite_prints_no_log_lines_but_shows_them_for_a_failing_test(tmp_path) -> None:
    (tmp_path / "conftest.py").write_text("from tests.conftest import logs_to_pytest  # noqa: F401\n")
    (tmp_path / "test_quiet.py").write_text(QUIET_CHECK)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "1 failed, 1 passed" in done.stdout, done.stdout + done.stderr
    passed, failed = done.stdout.split("test_fails", 1)
    printed = (done.stdout + done.stderr).splitlines()
    assert "kpi_service.request" not in passed and not [line for line in printed if line.startswith("{")]
    # The failing test's report carries its log: the request line of its 404.
    assert "Captured log call" in failed and "kpi_service.request" in failed
