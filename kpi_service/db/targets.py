"""The owner's targets (sql/schema/schema.sql, kpi.kpi_targets; sql/runtime/targets.sql): read by
the service, written by `kpi-service target` on the owner's own connection."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import aiosql
import psycopg

from kpi_service.db.sql import KPI_NAMES, sql_text

queries = aiosql.from_str(sql_text("runtime/targets.sql"), "psycopg")
# 'any': every window, unless one of the window's own length is set (docs/kpis.md, "Targets").
WINDOW_LENGTHS = ("any", "daily", "monthly")
# The values the table's CHECK takes: a target beyond them is a typing mistake.
LIMIT = Decimal("1e15")


@dataclass(frozen=True)
class Target:
    kpi: str
    window_length: str
    value: Decimal
    set_at: datetime


# Whether the table is there: a database init-db has not upgraded since targets came has none,
# and then no target (rather than a missing-schema error for every window).
INSTALLED = "SELECT to_regclass('kpi.kpi_targets') IS NOT NULL"


def _values(row: Any) -> tuple[Any, ...]:
    # The service's pooled connections make dicts of rows, a plain connection tuples.
    return tuple(row.values()) if isinstance(row, dict) else tuple(row)


def read_targets(conn: psycopg.Connection) -> tuple[Target, ...]:
    if not _values(conn.execute(INSTALLED).fetchone())[0]:
        return ()
    return tuple(Target(*_values(row)) for row in queries.kpi_targets(conn))


def checked(kpi: str, window_length: str, value: Decimal | None = None) -> None:
    """ValueError with the reason, before the database's CHECK says it less clearly."""
    if kpi not in KPI_NAMES:
        raise ValueError(f"unknown KPI {kpi!r}: one of {', '.join(KPI_NAMES)}")
    if window_length not in WINDOW_LENGTHS:
        raise ValueError(f"unknown window {window_length!r}: one of {', '.join(WINDOW_LENGTHS)}")
    if value is not None and (not value.is_finite() or abs(value) > LIMIT):
        raise ValueError(f"a target is a finite number of at most {LIMIT:,.0f} in size")


def set_target(conn: psycopg.Connection, kpi: str, value: Decimal, window_length: str = "any") -> None:
    checked(kpi, window_length, value)
    queries.kpi_target_set(conn, kpi=kpi, window_length=window_length, value=value)


def unset_target(conn: psycopg.Connection, kpi: str, window_length: str = "any") -> bool:
    """True when there was one to remove."""
    checked(kpi, window_length)
    return bool(queries.kpi_target_unset(conn, kpi=kpi, window_length=window_length))
