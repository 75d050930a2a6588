"""Settings are read once and refuse to start the service on a bad value."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from kpi_service.config import ConfigError, Settings

GOOD = {"JWT_SECRET_KEY": "s" * 32, "DATABASE_URL": "postgresql://localhost/kpi"}


def test_defaults() -> None:
    settings = Settings.from_env(GOOD)
    assert (settings.cache_ttl, settings.aged_days, settings.timezone) == (30, 60, "UTC")
    assert settings.statement_timeout_ms == 5000 and settings.max_buckets == 400
    assert settings.redis_url is None


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"JWT_SECRET_KEY": ""}, "JWT_SECRET_KEY is not set"),
        ({"JWT_SECRET_KEY": "short"}, "at least 32 bytes"),
        ({"DATABASE_URL": ""}, "DATABASE_URL is not set"),
        ({"KPI_CACHE_TTL": "thirty"}, "KPI_CACHE_TTL must be an integer"),
        ({"KPI_CACHE_TTL": "0"}, "KPI_CACHE_TTL must be at least 1"),
        ({"KPI_AGED_DAYS": "4000"}, "KPI_AGED_DAYS must be between 1 and 3650"),
        ({"KPI_TIMEZONE": "Moon/Base"}, "KPI_TIMEZONE"),
        ({"KPI_ENV": "staging"}, "KPI_ENV"),
        ({"KPI_WS_ALLOWED_ORIGINS": "dashboard.example.com"}, "KPI_WS_ALLOWED_ORIGINS: 'dashboard.example.com'"),
        ({"KPI_WS_ALLOWED_ORIGINS": "https://a.example.com,https://b.example.com/app"}, "'https://b.example.com/app'"),
        ({"KPI_WS_ALLOWED_ORIGINS": "ftp://files.example.com"}, "is not an origin"),
        ({"KPI_WS_ALLOWED_ORIGINS": "null"}, "is not an origin"),
        ({"KPI_WS_IDLE_TIMEOUT": "0"}, "KPI_WS_IDLE_TIMEOUT must be at least 1"),
        ({"KPI_WS_MAX_MESSAGE": "4k"}, "KPI_WS_MAX_MESSAGE must be an integer"),
    ],
)
def test_bad_values_stop_the_start(env: dict[str, str], reason: str) -> None:
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
