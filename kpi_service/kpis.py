"""KPI results for a query: from the cache while fresh, else computed by sql/kpi.sql."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from marshmallow import ValidationError

from kpi_service.cache import Cache, cache_key
from kpi_service.db import Database, DatabaseUnavailable
from kpi_service.errors import ApiError
from kpi_service.schemas import KpiQuery, MetricsSchema
from kpi_service.windows import Window, buckets

log = logging.getLogger(__name__)

_metrics_schema = MetricsSchema()


@dataclass(frozen=True)
class Served:
    """A response body and how it was obtained, for headers, logs and metrics."""

    body: dict[str, Any]
    outcome: str  # "hit" (fresh from the cache), "miss" (computed now) or "stale" (database failed)
    fresh_until: float  # unix time until which the body is fresh
    db_ms: float | None = None  # duration of the SQL when it ran for this request


class KpiService:
    def __init__(self, db: Database, cache: Cache) -> None:
        self.db = db
        self.cache = cache

    def current(self, query: KpiQuery) -> Served:
        """The body of GET /api/kpi for this query."""

        def compute(now: datetime) -> tuple[dict[str, Any], float]:
            window = query.window
            rows, duration_ms = self.db.kpi_rows([(window.start, window.end, window.as_of(now))], query.aged_days)
            return {"metrics": _validated(rows[0])}, duration_ms

        return self._serve(cache_key("kpi", query), query, compute)

    def history(self, query: KpiQuery) -> Served:
        """The body of GET /api/kpi/history: every bucket in one execution of the same statement."""
        assert query.date_from is not None and query.date_to is not None and query.interval is not None
        days = buckets(query.date_from, query.date_to, query.interval)

        def compute(now: datetime) -> tuple[dict[str, Any], float]:
            windows = [Window.of_dates(first, last, query.tz) for first, last in days]
            rows, duration_ms = self.db.kpi_rows([(w.start, w.end, w.as_of(now)) for w in windows], query.aged_days)
            series = [
                {"start": first.isoformat(), "end": last.isoformat(), "metrics": _validated(row)}
                for (first, last), row in zip(days, rows, strict=True)
            ]
            return {"series": series}, duration_ms

        return self._serve(cache_key("history", query), query, compute)

    def _serve(
        self,
        key: str,
        query: KpiQuery,
        compute: Callable[[datetime], tuple[dict[str, Any], float]],
    ) -> Served:
        entry = self.cache.get(key)
        if entry is not None and entry.fresh:
            return Served(_with_flags(entry.body, cached=True, stale=False), "hit", entry.fresh_until)
        now = datetime.now(UTC)
        try:
            data, duration_ms = compute(now)
        except DatabaseUnavailable:
            if entry is not None:
                return Served(_with_flags(entry.body, cached=True, stale=True), "stale", time.time())
            raise ApiError(
                503, "The database is unavailable and no earlier result for this window is cached."
            ) from None
        body = {
            **data,
            "success": True,
            "message": None,
            "meta": {
                "computed_at": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "cached": False,
                "stale": False,
                "duration_ms": round(duration_ms, 2),
                "window": query.describe(),
            },
        }
        entry = self.cache.put(key, body)
        return Served(body, "miss", entry.fresh_until, duration_ms)


def _validated(row: dict[str, Any]) -> dict[str, Any]:
    try:
        return _metrics_schema.load(row)
    except ValidationError as error:
        # A row outside the contract means a bug or corrupt data: never pass it on.
        log.error("KPI row failed validation: %s", error.messages)
        raise ApiError(500, "The computed metrics failed validation.") from None


def _with_flags(body: dict[str, Any], *, cached: bool, stale: bool) -> dict[str, Any]:
    return {**body, "meta": {**body["meta"], "cached": cached, "stale": stale}}
