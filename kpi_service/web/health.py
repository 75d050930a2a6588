"""Liveness and readiness probes. No token, and nothing about the configuration in the answers."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import redis
from flask import Blueprint, Response, current_app, jsonify

from kpi_service.db.errors import INIT_HINT, DatabaseUnavailable, SchemaMismatch, SchemaMissing
from kpi_service.db.schema import SCHEMA_VERSION, service_version
from kpi_service.ops import metrics
from kpi_service.web.errors import envelope

if TYPE_CHECKING:
    from kpi_service.db.connections import Database

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
    """Ready when PostgreSQL answers and has the KPI schema; Redis is reported but optional
    (without it every request computes from the database, slower but correct). A pool whose
    connections are all in use is ready: the database answers, the requests wait their turn."""
    state = current_app.extensions["kpi"]
    checks: dict[str, object] = {
        "database": state.db.ping(DATABASE_TIMEOUT_S),
        "redis": _redis_state(state.redis, in_process=not state.settings.uses_redis),
    }
    if state.db.replica is not None:
        # Never unready for it: the primary answers the reads meanwhile.
        checks["replica"] = state.db.replica.state
        checks["replica_lag_ms"] = state.db.replica.lag_ms
    decoder = state.applier.decoder
    if decoder is not None and decoder.state is not None:
        # The decoding mode (db/decoding.py): its slot as the decoder last found it, and why the
        # last one was lost (the KPIs come from the rows until a new one is made and built from).
        lost_at = decoder.state["lost_at"]
        checks["capture"] = {
            "mode": "decoding",
            "slot": decoder.state["slot"],
            "slot_ok": decoder.state["slot_ok"],
            "lost": decoder.state["lost"],
            "lost_at": lost_at.isoformat() if lost_at else None,
            "behind_bytes": decoder.behind_bytes,
        }
    if checks["database"] == "down":
        return envelope(
            503, "Not ready: the database is unreachable.", extra={"status": "unavailable", "checks": checks}
        )
    try:
        mode = state.db.mode(refresh=True)
        checks["schema"] = "ok"
        checks["kpi_source"] = mode
        if mode == "summaries":
            # The time first: a batch that empties the log in between then cannot make a lag
            # of rows that are gone look older than it is.
            caught_up = state.cache.caught_up_at()
            pending = checks["pending_changes"] = state.db.pending_changes()
            # Seconds since an applier last found the log empty while rows wait (no write older
            # than that is missing from the KPIs); null while no applier has reported one.
            checks["applier_lag_s"] = 0 if pending == 0 else _since(caught_up)
            checks["audit"] = state.db.audit_state()
    except SchemaMismatch as error:
        checks["schema"] = f"incompatible: {error}"
        return envelope(
            503,
            f"Not ready: {error}.",
            extra={"status": "incompatible", "checks": checks, "version": _versions(state.db)},
        )
    except SchemaMissing:
        checks["schema"] = f"missing: {INIT_HINT}"
        return envelope(
            503,
            f"Not ready: the database has no KPI schema; {INIT_HINT}.",
            extra={"status": "uninitialized", "checks": checks},
        )
    except DatabaseUnavailable:
        checks["kpi_source"] = "unknown"  # busy, or gone since the ping: the next probe tells
    # Which database's keys in Redis are this service's (docs/clients.md, Redis key layout).
    return jsonify(status="ready", checks=checks, version=_versions(state.db), cache_scope=state.db.scope())


def _versions(db: Database) -> dict[str, object]:
    """This release, the schema version it installs, and the one the database holds (None: not known yet)."""
    return {"service": service_version(), "schema": SCHEMA_VERSION, "database_schema": db.schema_version}


def _since(at: float | None) -> float | None:
    return None if at is None else round(max(0.0, time.time() - at), 3)


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
