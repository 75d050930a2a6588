"""What a database call raises instead of psycopg's errors: why the KPIs cannot be computed now."""

from __future__ import annotations


class DatabaseUnavailable(Exception):
    """PostgreSQL could not answer in time: down, unreachable, pool exhausted or timed out."""


class DatabaseBusy(DatabaseUnavailable):
    """Every connection of the pool stayed in use for the pool timeout: the database answers,
    this instance has more concurrent computations than connections. Not an outage."""


class SchemaMissing(DatabaseUnavailable):
    """The database answers but has no KPI tables or functions: `kpi-service init-db` never ran
    on it (or ran on another database). Not an outage either."""


INIT_HINT = "run kpi-service init-db"
