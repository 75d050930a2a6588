"""SQL metacharacters and oversized values in every parameter: a 400 or a 200, never a 500, and
whatever reaches PostgreSQL is the one constant statement of sql/runtime/kpi.sql with typed values bound
separately (psycopg's server-side binding: the text and the values travel in different protocol
messages, so no value is ever parsed as SQL)."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any, ClassVar

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient

from kpi_service.config import Settings
from kpi_service.db import targets
from kpi_service.db.sql import APPLY, APPLY_BATCH, IDENTITY, MODE, PENDING, SALES_TABLES, queries

PAYLOADS = [
    "'",
    "''",
    '"',
    "2026-01-01'; DROP TABLE listings; --",
    "2026-01-01' OR '1'='1",
    "1; SELECT pg_sleep(10)",
    "60) OR (1=1",
    "1 UNION SELECT password FROM pg_shadow",
    "UTC'; SET default_transaction_read_only = off; --",
    "Europe/Berlin$$; DROP TABLE leads; $$",
    "%(starts)s",
    "%s%s%s",
    ":aged_days",
    "$1",
    "\\x00",
    "\x00",
    "../../../etc/passwd",
    "day' --",
    "week;",
    "９９",  # noqa: RUF001 - fullwidth digits: int() takes them, and they arrive as the int 99
    "x" * 10_000,
    "9" * 5_000,
    "2026-01-01" + " " * 5_000,
]
PARAMS = ["from", "to", "tz", "aged_days", "interval"]


class TracingCursor(psycopg.Cursor):
    """Records every statement text and its parameters as the app hands them to psycopg."""

    log: ClassVar[list[tuple[str, Any]]] = []
    lock: ClassVar[threading.Lock] = threading.Lock()

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> TracingCursor:
        with TracingCursor.lock:
            TracingCursor.log.append((str(query), params))
        return super().execute(query, params, **kwargs)


@pytest.fixture
def traced(app: Flask) -> list[tuple[str, Any]]:
    # The pool opens on the first request, so its connections are all made with this factory.
    app.extensions["kpi"].db.pool.kwargs["cursor_factory"] = TracingCursor
    TracingCursor.log = []
    return TracingCursor.log


def requests_with_payloads() -> list[tuple[str, dict[str, str]]]:
    urls = []
    for payload in PAYLOADS:
        for name in PARAMS:
            for path, base in (("/api/kpi", {}), ("/api/kpi/history", {"interval": "month"})):
                query = {"from": "2026-01-01", "to": "2026-03-31", **base, name: payload}
                urls.append((path, query))
        urls.append(("/api/kpi", {payload[:200]: "1"}))  # as a parameter name
    return urls


def test_payloads_reach_the_database_only_as_bound_values(
    client: FlaskClient, auth: dict[str, str], traced: list[tuple[str, Any]]
) -> None:
    statuses: dict[int, int] = {}
    for path, query in requests_with_payloads():
        response = client.get(path, query_string=query, headers=auth)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code in (200, 400), (query, response.get_data(as_text=True)[:300])
        assert response.is_json
    # Valid neighbours of the payloads run the statement too (tz spelled oddly, history buckets).
    for path, query in [
        ("/api/kpi", {"from": "2026-01-01", "tz": "europe/BERLIN", "aged_days": "3650"}),
        ("/api/kpi/history", {"from": "2026-01-01", "to": "2026-03-31", "interval": "week"}),
    ]:
        assert client.get(path, query_string=query, headers=auth).status_code == 200

    statements = [(text, params) for text, params in traced if text.strip()]  # "" is the pool's check
    assert statements, "no statement ran"
    # Constant texts only: the statement of sql/runtime/kpi.sql, and the summaries' applier and mode
    # look-up and the owner's targets (sql/runtime/targets.sql), which take no values from a
    # request; never anything built from input.
    assert {text for text, params in statements if params is None} <= {
        *APPLY[:2],
        MODE,
        SALES_TABLES,
        IDENTITY,
        PENDING,
        targets.INSTALLED,
    }
    assert all(not params for text, params in statements if text == targets.queries.kpi_targets.sql)
    statements = [(text, params) for text, params in statements if text != targets.queries.kpi_targets.sql]
    busy_share = Settings.apply_busy_share  # the default, which the app's applier passes
    assert all(params == [APPLY_BATCH, busy_share] for text, params in statements if text == APPLY[2])
    statements = [(text, params) for text, params in statements if params is not None and text != APPLY[2]]
    assert {text for text, _ in statements} == {queries.kpi_windows.sql}
    for _, params in statements:
        assert set(params) == {"starts", "ends", "as_ofs", "aged_days"}
        assert isinstance(params["aged_days"], int) and 1 <= params["aged_days"] <= 3650
        for name in ("starts", "ends", "as_ofs"):
            assert all(value is None or isinstance(value, datetime) for value in params[name])
    # Server-side binding (not psycopg.ClientCursor, which would interpolate values into the text).
    assert issubclass(TracingCursor, psycopg.Cursor) and not issubclass(TracingCursor, psycopg.ClientCursor)
    print(f"\nINJECTION-REPORT requests={sum(statuses.values())} statuses={statuses} statements={len(statements)}")
