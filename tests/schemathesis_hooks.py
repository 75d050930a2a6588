"""schemathesis hooks of tests/test_openapi_conformance.py (SCHEMATHESIS_HOOKS): the two rules
the OpenAPI document states in words because OpenAPI 3.0 cannot relate two parameters:
`to` is not before `from`, and a history has at most KPI_MAX_BUCKETS buckets (400 here).
A generated query that breaks them gets its dates put in order, or `to` set to `from`; every
other value stays as generated, so invalid values still test the 400s."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

import schemathesis

from kpi_service.serving.query import DATE_PATTERN
from kpi_service.serving.windows import INTERVALS, bucket_count

MAX_BUCKETS = 400


def _date(value: Any) -> date | None:
    if not isinstance(value, str) or not re.fullmatch(DATE_PATTERN, value):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


@schemathesis.hook
def map_query(ctx: Any, query: dict[str, Any] | None) -> dict[str, Any] | None:
    if not query:
        return query
    first, last = _date(query.get("from")), _date(query.get("to"))
    if first is None or last is None:
        return query
    if first > last:
        query["from"], query["to"] = query["to"], query["from"]
        first, last = last, first
    interval = query.get("interval")
    history = ctx.operation.path == "/api/kpi/history" and interval in INTERVALS
    if history and bucket_count(first, last, interval) > MAX_BUCKETS:
        query["to"] = query["from"]
    return query
