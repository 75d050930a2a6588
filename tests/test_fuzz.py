"""Generated requests: schemathesis against the OpenAPI document of the app (in-process WSGI),
with a valid token and without one, and Hypothesis against the parameter parsers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from kpi_service.app import create_app
from kpi_service.serving.query import HistoryQuerySchema, KpiQuery, KpiQuerySchema
from tests.helpers import make_settings, token

# Bounded so the whole file runs in CI in well under a minute; the derandomized run explores
# the same examples every time (a failure here is reproducible, not flaky).
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.fixture
def fuzzed_app(database_url: str, conn: object) -> Iterator[Flask]:
    application = create_app(make_settings(database_url))
    yield application
    application.extensions["kpi"].close()


@pytest.fixture
def api_schema(fuzzed_app: Flask) -> schemathesis.BaseSchema:
    # The stream never ends by itself, so a generated call would read it until the token
    # expires; tests/test_stream.py covers it, with its tickets. The WebSocket speaks no HTTP
    # that schemathesis can generate (a request without a handshake is refused in routing, 400,
    # before any token is read); tests/test_websocket.py covers its refusals, 401s included.
    return (
        schemathesis.openapi.from_wsgi("/api/openapi.json", fuzzed_app)
        .exclude(path="/api/kpi/stream")
        .exclude(path="/api/kpi/ws")
    )


# schemathesis.pytest.from_fixture fails under pytest 9 (it reads request.node._nodeid), so the
# cases come from the schema's Hypothesis strategy: every operation, valid and invalid inputs.
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@FUZZ
@given(data=st.data())
def test_with_a_valid_token_no_5xx_and_every_response_conforms(
    api_schema: schemathesis.BaseSchema, mode: GenerationMode, data: st.DataObject
) -> None:
    # The token is a fixed header, so a negative case mutates the parameters, not the token.
    bearer = {"Authorization": f"Bearer {token()}"}
    case = data.draw(api_schema.as_strategy(generation_mode=mode, headers=bearer))
    # Two rules relate two parameters, which OpenAPI 3.0 cannot say ('from' not after 'to', at
    # most max_buckets buckets): a schema-valid request may be a 400, which
    # positive_data_acceptance would flag (test_openapi_conformance.py puts such dates right
    # instead, and runs every check). Everything else is checked, bodies included.
    response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
    assert response.status_code < 500
    if mode is GenerationMode.POSITIVE:
        assert response.status_code in (200, 400)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@FUZZ
@given(data=st.data())
def test_without_a_token_every_response_is_a_conforming_401(
    api_schema: schemathesis.BaseSchema, mode: GenerationMode, data: st.DataObject
) -> None:
    case = data.draw(api_schema.as_strategy(generation_mode=mode))
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    response = case.call()
    if case.path == "/api/openapi.json":
        assert response.status_code == 200  # the document itself is public
    else:
        assert response.status_code == 401
    # positive_data_acceptance would (rightly) call a 401 for valid parameters a rejection.
    case.validate_response(response, excluded_checks=[positive_data_acceptance])


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
