"""schemathesis hooks of tests/test_openapi_conformance.py (SCHEMATHESIS_HOOKS): the rules the
OpenAPI document states in words because OpenAPI 3.0 cannot relate two parameters: `to` is not
before `from`, a history has at most KPI_MAX_BUCKETS buckets (400 here), and `compare` needs both
`from` and `to` and a compared window from 1900-01-01 on. A generated query that breaks them gets
its dates put in order, `to` set to `from`, or `compare` left out; every other value stays as
generated, so invalid values still test the 400s."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

import schemathesis

from kpi_service.serving.query import DATE_PATTERN, MIN_DATE
from kpi_service.serving.windows import COMPARISONS, INTERVALS, bucket_count, compared_days

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
    return _fixed(ctx.operation.path, query)


@schemathesis.hook
def map_case(ctx: Any, case: Any) -> Any:
    """The same rules in the coverage phase, whose cases map_query does not see (a `compare`
    beside one date only came from there)."""
    case.query = _fixed(case.operation.path, case.query)
    return case


def _fixed(path: str, query: dict[str, Any] | None) -> dict[str, Any] | None:
    if not query:
        return query
    first, last = _date(query.get("from")), _date(query.get("to"))
    if query.get("compare") in COMPARISONS:
        # An open window has no previous period (tests/test_compare.py tests that 400).
        open_window = "from" not in query or "to" not in query
        dates = sorted([first, last]) if first is not None and last is not None else None
        if open_window or (dates is not None and compared_days(*dates, query["compare"])[0] < MIN_DATE):
            del query["compare"]
    if first is None or last is None:
        return query
    if first > last:
        query["from"], query["to"] = query["to"], query["from"]
        first, last = last, first
    interval = query.get("interval")
    history = path == "/api/kpi/history" and interval in INTERVALS
    if history and bucket_count(first, last, interval) > MAX_BUCKETS:
        query["to"] = query["from"]
    return query
