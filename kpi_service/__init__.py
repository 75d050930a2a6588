"""kpi-service: the dashboard KPIs of the used-vehicle dealership application."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask

from kpi_service import api, auth, errors
from kpi_service.cache import Cache, connect
from kpi_service.config import ConfigError, Settings
from kpi_service.db import Database
from kpi_service.kpis import KpiService
from kpi_service.schemas import HistoryQuerySchema, KpiQuerySchema

__all__ = ["ConfigError", "Settings", "create_app"]


@dataclass
class State:
    """What the app owns, kept in app.extensions["kpi"]."""

    settings: Settings
    db: Database
    cache: Cache
    service: KpiService
    kpi_schema: KpiQuerySchema
    history_schema: HistoryQuerySchema


def create_app(config: Settings | None = None) -> Flask:
    """The application; settings come from the environment unless given (and are validated)."""
    settings = config if config is not None else Settings.from_env()
    app = Flask(__name__)
    app.json.sort_keys = False
    errors.init_app(app)
    auth.init_app(app, settings.jwt_secret_key)

    db = Database(settings)
    cache = Cache(connect(settings), settings.cache_ttl, settings.stale_ttl)
    defaults = {"default_tz": settings.timezone, "default_aged_days": settings.aged_days}
    app.extensions["kpi"] = State(
        settings=settings,
        db=db,
        cache=cache,
        service=KpiService(db, cache),
        kpi_schema=KpiQuerySchema(**defaults),
        history_schema=HistoryQuerySchema(max_buckets=settings.max_buckets, **defaults),
    )
    app.register_blueprint(api.bp)
    return app
