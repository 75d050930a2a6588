"""The /api blueprint: parameters in, KPI bodies out, with ETags for pollers."""

from __future__ import annotations

import time

from flask import Blueprint, Response, current_app, request
from marshmallow import Schema, ValidationError

from kpi_service.ops.memo import Memo
from kpi_service.serving.query import KpiQuery, repeated
from kpi_service.serving.responses import Served
from kpi_service.web.auth import token_required
from kpi_service.web.request_hooks import scope

bp = Blueprint("api", __name__, url_prefix="/api")


def _parse(kind: str, schema: Schema) -> KpiQuery:
    """The validated query, remembered by its raw query string: pollers repeat theirs."""
    parsed: Memo[tuple[str, str], KpiQuery] = current_app.extensions["kpi"].parsed
    memo_key = (kind, request.environ.get("QUERY_STRING", ""))
    query = parsed.get(memo_key)
    if query is None:
        twice = repeated(request.args)
        if twice:
            raise ValidationError(twice)
        query = parsed.put(memo_key, schema.load(request.args.to_dict()))
    return query


def _respond(served: Served) -> Response:
    scope().served = served  # for Server-Timing, the metrics and the request log
    fresh_for = max(0, int(served.fresh_until - time.time()))
    response = Response(
        served.payload,
        mimetype="application/json",
        headers=(("ETag", f'W/"{served.etag}"'), ("Cache-Control", f"private, max-age={fresh_for}")),
    )
    if "HTTP_IF_NONE_MATCH" in request.environ:
        return response.make_conditional(request)
    return response


@bp.get("/kpi")
@token_required
def kpi() -> Response:
    state = current_app.extensions["kpi"]
    return _respond(state.service.current(_parse("kpi", state.kpi_schema)))


@bp.get("/kpi/history")
@token_required
def history() -> Response:
    state = current_app.extensions["kpi"]
    return _respond(state.service.history(_parse("history", state.history_schema)))
