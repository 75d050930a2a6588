"""The app factory: the settings, pools, cache, applier and blueprints of one process."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis
from flask import Flask

from kpi_service.config import Settings
from kpi_service.db.applier import Applier, pooled
from kpi_service.db.connections import Database
from kpi_service.db.decoding import Decoder
from kpi_service.db.replica import Replica
from kpi_service.ops.logs import configure_logging
from kpi_service.ops.memo import Memo
from kpi_service.serving.cache import Cache
from kpi_service.serving.connection import connect
from kpi_service.serving.query import HistoryQuerySchema, KpiQuerySchema
from kpi_service.serving.service import KpiService
from kpi_service.web import api, auth, dashboard, errors, health, openapi, request_hooks, stream, websocket
from kpi_service.web import metrics as web_metrics


@dataclass
class State:
    """What the app owns, kept in app.extensions["kpi"]."""

    settings: Settings
    db: Database
    redis: redis.Redis  # the cache's client, also pinged by /readyz
    cache: Cache
    service: KpiService
    applier: Applier
    kpi_schema: KpiQuerySchema
    history_schema: HistoryQuerySchema
    # (endpoint, raw query string) -> KpiQuery, see api._parse: pollers repeat their query strings
    parsed: Memo = field(default_factory=lambda: Memo(1024))

    def close(self) -> None:
        """Stop the applier, finish background refreshes, then close the pools."""
        self.applier.stop()
        self.service.close()
        self.db.close()


def create_app(config: Settings | None = None) -> Flask:
    """The application; settings come from the environment unless given (and are validated)."""
    settings = config if config is not None else Settings.from_env()
    configure_logging(settings.log_level)
    app = Flask(__name__)
    app.json.sort_keys = False
    # First: its before_request starts the clock, and its after_request runs last, on the
    # response as finally sent.
    request_hooks.init_app(app, settings)
    web_metrics.init_app(app, settings)
    errors.init_app(app)
    auth.init_app(app, settings.jwt_secret_key)

    db = Database(settings)
    if settings.database_read_url:
        db.replica = Replica(settings, db)
    client = connect(settings)
    # A computation can take a pool wait, a connect and the statement: the single-flight lock
    # must outlive that, and a waiter must wait a little longer than a dead owner's lock lives.
    lock_seconds = settings.db_pool_timeout + settings.db_connect_timeout + settings.statement_timeout_ms / 1000 + 1
    cache = Cache(client, settings.cache_ttl, settings.stale_ttl, lock_seconds, scope=db.scope)
    defaults = {"default_tz": settings.timezone, "default_aged_days": settings.aged_days}
    app.extensions["kpi"] = State(
        settings=settings,
        db=db,
        redis=client,
        cache=cache,
        service=KpiService(db, cache, wait_seconds=lock_seconds + 1, pending_ttl=max(settings.apply_interval, 0.5)),
        applier=Applier(
            db,
            settings.apply_interval,
            settings.apply_busy_share,
            on_changed=cache.announce_change,
            on_caught_up=cache.caught_up,
            caught_up_at=cache.caught_up_at,
            turn=cache.applier_turn,
            aged_days=settings.aged_days,
            decoder=Decoder(pooled(db), settings.decoding_url or settings.database_url or "")
            if settings.capture == "decoding"
            else None,
        ),
        kpi_schema=KpiQuerySchema(**defaults),
        history_schema=HistoryQuerySchema(max_buckets=settings.max_buckets, **defaults),
    )
    app.register_blueprint(api.bp)
    stream.init_app(app, settings)
    websocket.init_app(app, settings)
    app.register_blueprint(dashboard.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.blueprint(settings))
    # Here, not at import: gunicorn forks its workers before loading the app (no preload), so
    # each worker runs its own; the function's try-lock lets one apply at a time.
    app.extensions["kpi"].applier.start()
    if db.replica is not None:
        db.replica.start()
    return app
