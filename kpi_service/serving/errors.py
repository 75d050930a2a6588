"""Why a window has no value to answer with. The web layer turns these into its 503 and 500
envelopes (web/errors.py); the streams, into their `unavailable` events (live/hub.py)."""

from __future__ import annotations

from kpi_service.db.errors import INIT_HINT, DatabaseBusy, SchemaMismatch, SchemaMissing

# Seconds a client should wait before asking again when every connection was in use: about
# what a few cache misses take.
BUSY_RETRY_AFTER_S = 1


class WindowUnavailable(Exception):
    """The window's computation failed and nothing is cached for it. `cause`: the database's
    error (db/errors.py), or TimeoutError while waiting for another process's computation."""

    def __init__(self, cause: Exception) -> None:
        self.cause = cause
        self.retry_after = BUSY_RETRY_AFTER_S if isinstance(cause, DatabaseBusy) else None
        super().__init__(self.message)

    @property
    def message(self) -> str:
        cause = self.cause
        if isinstance(cause, TimeoutError):
            return "Timed out waiting for the computation of this window."
        if isinstance(cause, DatabaseBusy):
            return "The database is busy: every connection of this instance is computing other windows. Retry shortly."
        if isinstance(cause, SchemaMismatch):
            return f"The service cannot compute from its database: {cause}."
        if isinstance(cause, SchemaMissing):
            return f"The service is not initialized: its database has no KPI schema ({INIT_HINT})."
        return "The database is unavailable and no earlier result for this window is cached."


class InvalidKpis(Exception):
    """A computed row outside the definitions (docs/kpis.md): a bug or corrupt data, never passed on."""

    message = "The computed KPIs failed validation."
