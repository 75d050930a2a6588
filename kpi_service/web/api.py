"""The /api blueprint: parameters in, KPI bodies out (JSON, or CSV when asked), with ETags for pollers."""

from __future__ import annotations

import time

from flask import Blueprint, Response, current_app, request
from marshmallow import Schema, ValidationError

from kpi_service.ops.memo import Memo
from kpi_service.serving.query import KpiQuery, repeated
from kpi_service.serving.responses import Served
from kpi_service.web import export
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
        # `format` chooses the representation, not the window (nor its cache key).
        window_args = {name: value for name, value in request.args.items() if name != "format"}
        query = parsed.put(memo_key, schema.load(window_args))
    return query


def _wants_csv() -> bool:
    """`format=csv`, or an Accept that prefers text/csv to JSON (`*/*` and none mean JSON). A bad
    `format` is a 400 with the JSON envelope, as every bad parameter is."""
    # The raw query string first: parsing request.args on every poll is what the memo of _parse saves.
    chosen = request.args.get("format") if "format" in request.environ.get("QUERY_STRING", "") else None
    if chosen is not None:
        if chosen not in export.FORMATS:
            raise ValidationError({"format": [f"Must be one of: {', '.join(export.FORMATS)}."]})
        return chosen == "csv"
    if "csv" not in request.environ.get("HTTP_ACCEPT", ""):
        return False  # the pollers' case, without parsing their Accept
    return request.accept_mimetypes.best_match(["application/json", export.CSV_TYPE]) == export.CSV_TYPE


def _respond(served: Served, kind: str, csv: bool) -> Response:
    scope().served = served  # for Server-Timing, the metrics and the request log
    fresh_for = max(0, int(served.fresh_until - time.time()))
    headers = [("Cache-Control", f"private, max-age={fresh_for}"), ("Vary", "Accept")]
    if csv:
        text = export.kpi_csv(served.body) if kind == "kpi" else export.history_csv(served.body)
        name = export.filename(kind, served.body["meta"]["window"])
        headers += [("ETag", f'W/"{served.etag}-csv"'), ("Content-Disposition", f'attachment; filename="{name}"')]
        response = Response(text, mimetype=export.CSV_TYPE, headers=headers)
    else:
        response = Response(
            served.payload, mimetype="application/json", headers=[*headers, ("ETag", f'W/"{served.etag}"')]
        )
    if "HTTP_IF_NONE_MATCH" in request.environ:
        return response.make_conditional(request)
    return response


@bp.get("/kpi")
@token_required
def kpi() -> Response:
    state = current_app.extensions["kpi"]
    query = _parse("kpi", state.kpi_schema)
    csv = _wants_csv()
    return _respond(state.service.current(query), "kpi", csv)


@bp.get("/kpi/history")
@token_required
def history() -> Response:
    state = current_app.extensions["kpi"]
    query = _parse("history", state.history_schema)
    csv = _wants_csv()
    return _respond(state.service.history(query), "history", csv)
