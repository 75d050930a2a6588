"""Hypothesis against the parameter parsers: any query string is a KpiQuery or a validation
error (a 400), never anything else. Generated requests against the whole API are
tests/test_openapi_conformance.py's (schemathesis); without a token, tests/test_token_attacks.py's."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from kpi_service.serving.query import HistoryQuerySchema, KpiQuery, KpiQuerySchema

PARAMS = ("from", "to", "tz", "aged_days", "interval")
values = st.one_of(
    st.text(max_size=30),
    st.dates().map(str),
    st.integers(-10_000, 10_000).map(str),
    st.sampled_from(["UTC", "europe/berlin", "day", "week", "month", "", " ", "\x00", "9999-12-31", "0001-01-01"]),
)
queries = st.dictionaries(st.one_of(st.sampled_from(PARAMS), st.text(max_size=10)), values, max_size=6)


@settings(max_examples=500, deadline=None)
@given(queries)
def test_the_kpi_parser_returns_a_query_or_a_validation_error(raw: dict[str, str]) -> None:
    try:
        parsed = KpiQuerySchema().load(raw)
    except ValidationError:
        return
    assert isinstance(parsed, KpiQuery)


@settings(max_examples=500, deadline=None)
@given(queries)
def test_the_history_parser_returns_a_query_or_a_validation_error(raw: dict[str, str]) -> None:
    try:
        parsed = HistoryQuerySchema().load(raw)
    except ValidationError:
        return
    assert isinstance(parsed, KpiQuery) and parsed.interval in ("day", "week", "month")
