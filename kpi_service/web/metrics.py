"""GET /metrics (KPI_METRICS=on), behind `Authorization: Bearer <KPI_METRICS_TOKEN>` when a
token is set. The metrics themselves are ops/metrics.py."""

from __future__ import annotations

import hmac

from flask import Blueprint, Flask, Response, request
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from kpi_service.config import Settings, parse_metrics_exposure
from kpi_service.ops.metrics import registry
from kpi_service.web.errors import envelope


def _authorized(expected: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # compare_digest: the time taken must not tell how much of a guess was right.
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected.encode())


def blueprint(token: str | None) -> Blueprint:
    bp = Blueprint("metrics", __name__)

    @bp.get("/metrics")
    def scrape() -> Response:
        if token is not None and not _authorized(token):
            response = envelope(401, "The metrics token is missing or wrong.")
            response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
        return Response(generate_latest(registry()), mimetype=None, content_type=CONTENT_TYPE_PLAIN_0_0_4)

    return bp


def init_app(app: Flask, settings: Settings) -> None:
    """Serve /metrics on the app's port when KPI_METRICS is `on`.

    With `port:NNNN` the app only counts: the listener is started once per server by
    `start_exporter` (gunicorn.conf.py calls it in the master), not per app or worker.
    """
    if parse_metrics_exposure(settings.metrics_exposure)[0] == "on":
        app.register_blueprint(blueprint(settings.metrics_token))
