"""Liveness and readiness probes. No token, and nothing about the configuration in the answers."""

from __future__ import annotations

import logging

import redis
from flask import Blueprint, Response, current_app, jsonify

from kpi_service import metrics
from kpi_service.db import Database, DatabaseUnavailable
from kpi_service.errors import envelope

log = logging.getLogger(__name__)

bp = Blueprint("health", __name__)

# A probe must answer well within the orchestrator's own probe timeout (typically 1 s or more),
# and a database that cannot hand out a connection this fast is not one to send traffic to.
DATABASE_TIMEOUT_S = 0.8


@bp.get("/healthz")
def healthz() -> Response:
    """The process serves requests. Touches nothing, so a database outage never restarts it."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Response:
    """Ready when PostgreSQL answers; Redis is reported but optional (without it every request
    computes from the database, slower but correct)."""
    state = current_app.extensions["kpi"]
    checks = {
        "database": "ok" if state.db.ping(DATABASE_TIMEOUT_S) else "down",
        "redis": _redis_state(state.redis, in_process=state.settings.redis_url is None),
    }
    if checks["database"] != "ok":
        return envelope(
            503, "Not ready: the database is unreachable.", extra={"status": "unavailable", "checks": checks}
        )
    checks.update(_summaries_state(state.db))
    return jsonify(status="ready", checks=checks)


def _summaries_state(db: Database) -> dict[str, object]:
    """Where the numbers come from ("summaries" or "raw"), and with summaries, how many change-log
    rows wait for the applier (a growing number: no instance is applying)."""
    try:
        mode = db.mode(refresh=True)
        return {"kpi_source": mode, **({"pending_changes": db.pending_changes()} if mode == "summaries" else {})}
    except DatabaseUnavailable:
        return {"kpi_source": "unknown"}


def _redis_state(client: redis.Redis, *, in_process: bool) -> str:
    if in_process:
        return "in-process"
    try:
        client.ping()
        return "ok"
    except redis.RedisError as error:
        metrics.REDIS_ERRORS.labels(operation="ping").inc()
        log.warning("redis ping failed: %s", error.__class__.__name__)
        return "down"
