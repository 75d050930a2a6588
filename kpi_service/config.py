"""Settings, read from the environment once at start and validated there. What each means and
its default: docs/configuration.md (tests/test_docs.py checks that every name read here is there)."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit
from zoneinfo import available_timezones

MIN_SECRET_BYTES = 32
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# The request log: a line for every response but a success or a 304, or for every response.
ACCESS_LOGS = ("errors", "all")
CAPTURES = ("triggers", "decoding")


@functools.cache
def _zones_by_folded_name() -> dict[str, str]:
    return {name.casefold(): name for name in available_timezones()}


def canonical_zone(name: str) -> str | None:
    """The IANA spelling of a zone name given in any letter case, or None if unknown.

    Case-insensitive so that `europe/berlin` and `Europe/Berlin` share one cache key.
    """
    return _zones_by_folded_name().get(name.casefold())


class ConfigError(ValueError):
    """A setting is missing or malformed; the message is the one-line reason."""


@dataclass(frozen=True)
class Settings:
    jwt_secret_key: str
    database_url: str | None = None
    # A streaming replica for the KPI reads; the applier and init-db stay on database_url.
    database_read_url: str | None = None
    replica_max_lag_ms: int = 1000
    redis_url: str | None = None
    # With sentinels, the Redis primary is the one they name for the service (serving/connection.py, redis_client).
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_sentinel_service: str | None = None
    redis_sentinel_password: str | None = None
    cache_ttl: int = 30
    stale_ttl: int = 86400
    aged_days: int = 60
    timezone: str = "UTC"
    statement_timeout_ms: int = 5000
    db_connect_timeout: int = 3
    db_pool_size: int = 4
    db_pool_timeout: float = 2.0
    max_buckets: int = 400
    redis_timeout_ms: int = 250
    env: str = "production"
    log_level: str = "INFO"
    access_log: str = "errors"
    metrics_exposure: str = "on"  # KPI_METRICS: off, on or port:NNNN
    metrics_token: str | None = None
    max_streams: int = 16
    stream_heartbeat: int = 15
    apply_interval: float = 0.5  # seconds between calls of the summaries' applier; 0: not here
    apply_busy_share: float = 0.1  # of its time the applier may work while the application's sessions do
    audit_interval: float = 30  # seconds between two days of the summaries' audit; 0: no audit here
    # Origins besides the request's own that may open GET /api/kpi/ws (canonical_origin form).
    ws_allowed_origins: tuple[str, ...] = ()
    ws_idle_timeout: int = 30  # seconds between pings; a client that leaves one unanswered is closed
    ws_max_message: int = 4096  # bytes a client may send in one message
    # Where the summaries' changes come from: "triggers" on the sales tables, or "decoding", a
    # logical slot on decoding_url (a physical standby of database_url, or database_url itself).
    capture: str = "triggers"
    decoding_url: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from environment variables; keyword overrides win (the demo uses them).
        An unset variable takes the field's default above: the one place defaults are written."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {
            "jwt_secret_key": env.get("JWT_SECRET_KEY", ""),
            "database_url": env.get("DATABASE_URL") or None,
            "database_read_url": env.get("DATABASE_READ_URL") or None,
            "replica_max_lag_ms": _int(env, "KPI_REPLICA_MAX_LAG_MS", cls.replica_max_lag_ms, low=1, high=600_000),
            "redis_url": env.get("REDIS_URL") or None,
            "redis_sentinels": parse_sentinels(env.get("REDIS_SENTINELS") or ""),
            "redis_sentinel_service": env.get("REDIS_SENTINEL_SERVICE") or None,
            "redis_sentinel_password": env.get("REDIS_SENTINEL_PASSWORD") or None,
            "cache_ttl": _int(env, "KPI_CACHE_TTL", cls.cache_ttl, low=1),
            "stale_ttl": _int(env, "KPI_STALE_TTL", cls.stale_ttl, low=1),
            "aged_days": aged_days_setting(env),
            "timezone": env.get("KPI_TIMEZONE") or cls.timezone,
            "statement_timeout_ms": _int(env, "KPI_STATEMENT_TIMEOUT_MS", cls.statement_timeout_ms, low=1),
            "db_connect_timeout": _int(env, "KPI_DB_CONNECT_TIMEOUT", cls.db_connect_timeout, low=1),
            "db_pool_size": _int(env, "KPI_DB_POOL_SIZE", cls.db_pool_size, low=1),
            "db_pool_timeout": _int(env, "KPI_DB_POOL_TIMEOUT_MS", round(cls.db_pool_timeout * 1000), low=1) / 1000,
            "max_buckets": _int(env, "KPI_MAX_BUCKETS", cls.max_buckets, low=1),
            "redis_timeout_ms": _int(env, "KPI_REDIS_TIMEOUT_MS", cls.redis_timeout_ms, low=1),
            "env": env.get("KPI_ENV") or cls.env,
            "log_level": (env.get("KPI_LOG_LEVEL") or cls.log_level).upper(),
            "access_log": (env.get("KPI_ACCESS_LOG") or cls.access_log).strip().lower(),
            "metrics_exposure": (env.get("KPI_METRICS") or cls.metrics_exposure).strip().lower(),
            "metrics_token": env.get("KPI_METRICS_TOKEN") or None,
            "max_streams": _int(env, "KPI_MAX_STREAMS", cls.max_streams, low=1),
            "stream_heartbeat": _int(env, "KPI_STREAM_HEARTBEAT", cls.stream_heartbeat, low=1),
            "apply_interval": _int(env, "KPI_APPLY_INTERVAL_MS", round(cls.apply_interval * 1000), low=0, high=60_000)
            / 1000,
            "apply_busy_share": _int(env, "KPI_APPLY_BUSY_PERCENT", round(cls.apply_busy_share * 100), low=1, high=100)
            / 100,
            "audit_interval": _int(env, "KPI_AUDIT_INTERVAL_S", cls.audit_interval, low=0, high=86_400),
            "ws_allowed_origins": tuple(
                canonical_origin(o) for o in (env.get("KPI_WS_ALLOWED_ORIGINS") or "").split(",") if o.strip()
            ),
            "ws_idle_timeout": _int(env, "KPI_WS_IDLE_TIMEOUT", cls.ws_idle_timeout, low=1),
            "ws_max_message": _int(env, "KPI_WS_MAX_MESSAGE", cls.ws_max_message, low=1),
            "capture": (env.get("KPI_CAPTURE") or cls.capture).strip().lower(),
            "decoding_url": env.get("KPI_DECODING_URL") or None,
        }
        values.update(overrides)
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        if not self.jwt_secret_key:
            raise ConfigError("JWT_SECRET_KEY is not set")
        if self.env not in ("production", "development"):
            raise ConfigError(f"KPI_ENV must be 'production' or 'development', not {self.env!r}")
        if self.env != "development" and len(self.jwt_secret_key.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(f"JWT_SECRET_KEY must be at least {MIN_SECRET_BYTES} bytes (or set KPI_ENV=development)")
        if not self.database_url:
            raise ConfigError("DATABASE_URL is not set")
        if self.database_read_url is not None and self.database_read_url == self.database_url:
            raise ConfigError("DATABASE_READ_URL is DATABASE_URL: leave it unset to read from the primary")
        for name, url in (("DATABASE_URL", self.database_url), ("DATABASE_READ_URL", self.database_read_url)):
            _check_session_attrs(name, url)
        if canonical_zone(self.timezone) != self.timezone:
            raise ConfigError(f"KPI_TIMEZONE {self.timezone!r} is not a known IANA time zone name")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"KPI_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {self.log_level!r}")
        if self.access_log not in ACCESS_LOGS:
            raise ConfigError(f"KPI_ACCESS_LOG must be one of {', '.join(ACCESS_LOGS)}, not {self.access_log!r}")
        self._validate_redis()
        if self.capture not in CAPTURES:
            raise ConfigError(f"KPI_CAPTURE must be one of {', '.join(CAPTURES)}, not {self.capture!r}")
        if self.decoding_url is not None and self.capture != "decoding":
            raise ConfigError(
                "KPI_DECODING_URL is the slot's server of KPI_CAPTURE=decoding: set that too, or unset it"
            )
        mode, _ = parse_metrics_exposure(self.metrics_exposure)
        if self.metrics_token is not None and mode != "on":
            # The separate port is served by prometheus_client's own server, which has no
            # authentication: it is meant for a private network, so a token there would be a
            # false sense of safety.
            raise ConfigError("KPI_METRICS_TOKEN applies only to KPI_METRICS=on (the /metrics route of the service)")

        for origin in self.ws_allowed_origins:
            if canonical_origin(origin) != origin:
                raise ConfigError(f"KPI_WS_ALLOWED_ORIGINS: {origin!r} is not written as {canonical_origin(origin)!r}")

    def _validate_redis(self) -> None:
        if not self.uses_redis and self.env != "development":
            # Each process would keep its own cache, locks and stream tickets: a ticket issued by
            # one gunicorn worker would be refused by the next, and instances would share nothing.
            raise ConfigError(
                "REDIS_URL is not set: production needs a shared Redis"
                " (set REDIS_URL or REDIS_SENTINELS, or KPI_ENV=development for an in-process stand-in)"
            )
        if bool(self.redis_sentinels) != bool(self.redis_sentinel_service):
            raise ConfigError("REDIS_SENTINELS and REDIS_SENTINEL_SERVICE go together: set both or neither")
        if self.redis_sentinel_password and not self.redis_sentinels:
            raise ConfigError("REDIS_SENTINEL_PASSWORD needs REDIS_SENTINELS and REDIS_SENTINEL_SERVICE")
        if self.redis_url and self.redis_sentinels and not self.redis_url.startswith("redis://"):
            # With sentinels the URL only carries the database number and the credentials; a TLS
            # or unix-socket URL would promise something the sentinel connections do not do.
            raise ConfigError("with REDIS_SENTINELS, REDIS_URL must be a redis:// URL (its database and password)")

    @property
    def uses_redis(self) -> bool:
        """A Redis server (direct or through sentinels) rather than the in-process stand-in."""
        return bool(self.redis_url or self.redis_sentinels)

    @property
    def metrics_port(self) -> int | None:
        """The port of the separate metrics listener when KPI_METRICS=port:NNNN."""
        return parse_metrics_exposure(self.metrics_exposure)[1]


def _check_session_attrs(name: str, url: str | None) -> None:
    """The service's sessions are read-only (default_transaction_read_only), so libpq's
    read-write probe would reject every host: `primary` finds the primary of a multi-host URL."""
    if url is None:
        return
    from psycopg.conninfo import conninfo_to_dict  # here: kpi_service.client imports this module without psycopg

    try:
        attrs = conninfo_to_dict(url).get("target_session_attrs")
    except Exception as error:  # psycopg.ProgrammingError; psycopg is not imported at module level
        raise ConfigError(f"{name} is not a valid connection string: {error}") from None
    if attrs == "read-write":
        raise ConfigError(
            f"{name}: target_session_attrs=read-write never connects, the service's sessions being read-only;"
            " use target_session_attrs=primary to find the primary of several hosts"
        )


def parse_metrics_exposure(value: str) -> tuple[str, int | None]:
    """KPI_METRICS parsed: ("off", None), ("on", None) or ("port", NNNN)."""
    value = value.strip().lower()
    if value in ("off", "on"):
        return value, None
    prefix, _, port = value.partition(":")
    if prefix == "port" and port.isdigit() and 1 <= int(port) <= 65535:
        return "port", int(port)
    raise ConfigError(f"KPI_METRICS must be 'off', 'on' or 'port:NNNN' (1-65535), not {value!r}")


def parse_sentinels(value: str) -> tuple[tuple[str, int], ...]:
    """REDIS_SENTINELS: `host:port,host:port` (an IPv6 host in brackets); empty: none."""
    sentinels = []
    for item in (part.strip() for part in value.split(",")) if value.strip() else ():
        host, _, port = item.rpartition(":")
        bracketed = host.startswith("[") and host.endswith("]")
        host = host[1:-1] if bracketed else host
        numeric = port.isascii() and port.isdigit()
        if not host or (":" in host and not bracketed) or not numeric or not 1 <= int(port) <= 65535:
            raise ConfigError(f"REDIS_SENTINELS must be host:port[,host:port...], not {value!r}")
        sentinels.append((host, int(port)))
    return tuple(sentinels)


def canonical_origin(value: str) -> str:
    """An origin as browsers send it in the Origin header: `scheme://host[:port]`, lower case,
    without the scheme's default port. Raises ConfigError for anything else (a path, a query)."""
    raw = value.strip()
    try:
        parts = urlsplit(raw.lower())
        port = parts.port
    except ValueError:
        parts, port = None, None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.username is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise ConfigError(f"KPI_WS_ALLOWED_ORIGINS: {raw!r} is not an origin like https://dashboard.example.com")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = 443 if parts.scheme == "https" else 80
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


def aged_days_setting(env: Mapping[str, str]) -> int:
    """KPI_AGED_DAYS: the service's default aged_days, and init-db's for the summaries (which
    need none of the other settings)."""
    return _int(env, "KPI_AGED_DAYS", Settings.aged_days, low=1, high=3650)


def _int(env: Mapping[str, str], name: str, default: int, *, low: int, high: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, not {raw!r}") from None
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ConfigError(f"{name} must be {bounds}, not {value}")
    return value
