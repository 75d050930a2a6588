"""The /api blueprint: parameters in, KPI bodies out."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, g, json, request
from flask_jwt_extended import jwt_required
from marshmallow import Schema, ValidationError

from kpi_service.kpis import Served
from kpi_service.schemas import KpiQuery

bp = Blueprint("api", __name__, url_prefix="/api")


def _parse(schema: Schema) -> KpiQuery:
    args = request.args
    repeated = {name: ["Given more than once."] for name in args if len(args.getlist(name)) > 1}
    if repeated:
        raise ValidationError(repeated)
    return schema.load(args.to_dict())


def _respond(served: Served) -> Response:
    g.kpi_served = served  # read by request logging and metrics
    return Response(json.dumps(served.body), mimetype="application/json")


@bp.get("/kpi")
@jwt_required()
def kpi() -> Response:
    state = current_app.extensions["kpi"]
    return _respond(state.service.current(_parse(state.kpi_schema)))


@bp.get("/kpi/history")
@jwt_required()
def history() -> Response:
    state = current_app.extensions["kpi"]
    return _respond(state.service.history(_parse(state.history_schema)))
