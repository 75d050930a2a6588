"""What a database call raises instead of psycopg's errors: why the KPIs cannot be computed now."""

from __future__ import annotations


class DatabaseUnavailable(Exception):
    """PostgreSQL could not answer in time: down, unreachable, pool exhausted or timed out."""


class StatementTimeout(DatabaseUnavailable):
    """A statement ran into its statement_timeout (or was canceled): its own slowness, not an
    outage of the server; another window's statement, or a smaller batch, may well succeed."""


class DatabaseBusy(DatabaseUnavailable):
    """Every connection of the pool stayed in use for the pool timeout: the database answers,
    this instance has more concurrent computations than connections. Not an outage."""


class SchemaMissing(DatabaseUnavailable):
    """The database answers but has no KPI tables or functions: `kpi-service init-db` never ran
    on it (or ran on another database). Not an outage either."""


class SchemaMismatch(SchemaMissing):
    """The database holds the KPI schema of another version of the service than this one reads
    (kpi_service/db/schema.py, SCHEMA_VERSION): older (`kpi-service init-db` upgrades it) or newer
    (this instance is the one to upgrade). Computing from it could give wrong numbers."""


class SalesTablesChanged(SchemaMismatch):
    """The sales tables no longer have a column the KPIs read (renamed or dropped, which PostgreSQL
    allows): no KPI can be computed until it is back and `kpi-service init-db` has run. The
    application's writes go on; the applier empties the change log meanwhile."""


class CaptureRefused(SchemaMissing):
    """`kpi-service init-db --capture decoding` found a setting of the primary or of the slot's
    server that the decoding mode needs missing (db/decoding.py, refusal): the message names it."""


class LockNotGranted(Exception):
    """`kpi-service uninstall` found a lock it needs taken at every try (db/uninstall.py): the
    application was never quiet enough. Nothing is half-done; running it again goes on."""


INIT_HINT = "run kpi-service init-db"
