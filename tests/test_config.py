"""Settings are read once and refuse to start the service on a bad value."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from kpi_service.config import ConfigError, Settings

GOOD = {
    "JWT_SECRET_KEY": "s" * 32,
    "DATABASE_URL": "postgresql://localhost/kpi",
    "REDIS_URL": "redis://localhost:6379/0",
}


def test_defaults() -> None:
    settings = Settings.from_env(GOOD)
    assert (settings.cache_ttl, settings.aged_days, settings.timezone) == (30, 60, "UTC")
    assert settings.statement_timeout_ms == 5000 and settings.max_buckets == 400
    assert settings.redis_url == "redis://localhost:6379/0"
    assert Settings.from_env(GOOD | {"KPI_APPLY_BUSY_PERCENT": "25"}).apply_busy_share == 0.25
    assert settings.database_read_url is None and settings.replica_max_lag_ms == 1000


def test_a_read_replica() -> None:
    settings = Settings.from_env(
        GOOD | {"DATABASE_READ_URL": "postgresql://replica/kpi", "KPI_REPLICA_MAX_LAG_MS": "250"}
    )
    assert (settings.database_read_url, settings.replica_max_lag_ms) == ("postgresql://replica/kpi", 250)


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"JWT_SECRET_KEY": ""}, "JWT_SECRET_KEY is not set"),
        ({"JWT_SECRET_KEY": "short"}, "at least 32 bytes"),
        ({"DATABASE_URL": ""}, "DATABASE_URL is not set"),
        ({"KPI_CACHE_TTL": "thirty"}, "KPI_CACHE_TTL must be an integer"),
        ({"KPI_CACHE_TTL": "0"}, "KPI_CACHE_TTL must be at least 1"),
        ({"KPI_AGED_DAYS": "4000"}, "KPI_AGED_DAYS must be between 1 and 3650"),
        ({"KPI_APPLY_BUSY_PERCENT": "0"}, "KPI_APPLY_BUSY_PERCENT must be between 1 and 100"),
        ({"KPI_TIMEZONE": "Moon/Base"}, "KPI_TIMEZONE"),
        ({"KPI_ENV": "staging"}, "KPI_ENV"),
        ({"DATABASE_READ_URL": GOOD["DATABASE_URL"]}, "DATABASE_READ_URL is DATABASE_URL"),
        ({"KPI_REPLICA_MAX_LAG_MS": "0"}, "KPI_REPLICA_MAX_LAG_MS must be between 1 and 600000"),
        ({"KPI_WS_ALLOWED_ORIGINS": "dashboard.example.com"}, "KPI_WS_ALLOWED_ORIGINS: 'dashboard.example.com'"),
        ({"KPI_WS_ALLOWED_ORIGINS": "https://a.example.com,https://b.example.com/app"}, "'https://b.example.com/app'"),
        ({"KPI_WS_ALLOWED_ORIGINS": "ftp://files.example.com"}, "is not an origin"),
        ({"KPI_WS_ALLOWED_ORIGINS": "null"}, "is not an origin"),
        ({"KPI_WS_IDLE_TIMEOUT": "0"}, "KPI_WS_IDLE_TIMEOUT must be at least 1"),
        ({"KPI_WS_MAX_MESSAGE": "4k"}, "KPI_WS_MAX_MESSAGE must be an integer"),
        ({"REDIS_URL": ""}, "REDIS_URL is not set: production needs a shared Redis"),
        (
            {"DATABASE_URL": "postgresql://db1,db2/kpi?target_session_attrs=read-write"},
            "DATABASE_URL: target_session_attrs=read-write never connects",
        ),
        (
            {"DATABASE_READ_URL": "host=r1,r2 dbname=kpi target_session_attrs=read-write"},
            "use target_session_attrs=primary",
        ),
        ({"DATABASE_URL": "host=db dbname"}, "DATABASE_URL is not a valid connection string"),
    ],
)
def test_bad_values_stop_the_start(env: dict[str, str], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        Settings.from_env(GOOD | env)


SENTINELS = {"REDIS_SENTINELS": "10.0.0.1:26379, redis-s2:26380,[::1]:26381", "REDIS_SENTINEL_SERVICE": "kpi"}


def test_sentinels_name_the_primary() -> None:
    settings = Settings.from_env(GOOD | SENTINELS | {"REDIS_SENTINEL_PASSWORD": "pw", "REDIS_URL": "redis://:x@h/2"})
    assert settings.redis_sentinels == (("10.0.0.1", 26379), ("redis-s2", 26380), ("::1", 26381))
    assert (settings.redis_sentinel_service, settings.redis_sentinel_password) == ("kpi", "pw")
    assert settings.uses_redis
    assert Settings.from_env(GOOD | SENTINELS | {"REDIS_URL": ""}).redis_url is None  # optional with sentinels
    assert Settings.from_env(GOOD).redis_sentinels == ()


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"REDIS_SENTINELS": "h:26379"}, "set both or neither"),
        ({"REDIS_SENTINEL_SERVICE": "kpi"}, "set both or neither"),
        ({"REDIS_SENTINEL_PASSWORD": "pw"}, "REDIS_SENTINEL_PASSWORD needs REDIS_SENTINELS"),
        (SENTINELS | {"REDIS_SENTINELS": "h"}, "host:port"),
        (SENTINELS | {"REDIS_SENTINELS": "h:"}, "host:port"),
        (SENTINELS | {"REDIS_SENTINELS": ":26379"}, "host:port"),
        (SENTINELS | {"REDIS_SENTINELS": "h:26379,"}, "host:port"),
        (SENTINELS | {"REDIS_SENTINELS": "h:0"}, "host:port"),
        (SENTINELS | {"REDIS_SENTINELS": "h:65536"}, "host:port"),
        (SENTINELS | {"REDIS_SENTINELS": "h:2637x"}, "host:port"),
        (SENTINELS | {"REDIS_SENTINELS": "h:\u00b2"}, "host:port"),
        (SENTINELS | {"REDIS_SENTINELS": "::1:26379"}, "host:port"),
        (SENTINELS | {"REDIS_URL": "rediss://cache:6380/0"}, "must be a redis:// URL"),
    ],
)
def test_bad_sentinel_settings_stop_the_start(env: dict[str, str], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        Settings.from_env(GOOD | env)


def test_websocket_settings() -> None:
    defaults = Settings.from_env(GOOD)
    assert (defaults.ws_allowed_origins, defaults.ws_idle_timeout, defaults.ws_max_message) == ((), 30, 4096)
    # Written as browsers send Origin: lower case, without the scheme's default port or a slash.
    given = {"KPI_WS_ALLOWED_ORIGINS": " https://Dash.Example.com/ , http://localhost:8080,https://x.example.com:443,"}
    assert Settings.from_env(GOOD | given).ws_allowed_origins == (
        "https://dash.example.com",
        "http://localhost:8080",
        "https://x.example.com",
    )
    with pytest.raises(ConfigError, match=re.escape("is not written as 'https://dash.example.com'")):
        Settings.from_env(GOOD, ws_allowed_origins=("https://Dash.example.com",))


def test_several_hosts_find_the_primary() -> None:
    url = "postgresql://db1:5432,db2:5432/kpi?target_session_attrs=primary"
    assert Settings.from_env(GOOD | {"DATABASE_URL": url}).database_url == url


def test_development_may_run_on_the_in_process_redis() -> None:
    assert not Settings.from_env(GOOD | {"REDIS_URL": "", "KPI_ENV": "development"}).uses_redis


def test_a_short_secret_is_allowed_in_development() -> None:
    assert Settings.from_env(GOOD | {"JWT_SECRET_KEY": "dev", "KPI_ENV": "development"}).jwt_secret_key == "dev"


def test_wsgi_exits_with_a_one_line_reason() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import wsgi"],
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": "postgresql://localhost/kpi"},
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "kpi-service: JWT_SECRET_KEY is not set"


def test_production_without_redis_exits_with_a_one_line_reason() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import wsgi"],
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": "postgresql://localhost/kpi", "JWT_SECRET_KEY": "s" * 32},
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "kpi-service: REDIS_URL is not set: production needs a shared Redis"
        " (set REDIS_URL or REDIS_SENTINELS, or KPI_ENV=development for an in-process stand-in)"
    )
