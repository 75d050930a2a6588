"""The Server-Timing header of KPI responses: where the time of a request went, for browsers'
developer tools and for anyone comparing the dashboard's latency with the service's."""

from __future__ import annotations

from kpi_service.serving.responses import Served


def header_value(served: Served, total_ms: float) -> str:
    """`db;dur=<ms>` when the SQL ran for this request, then `cache;desc=<outcome>` and `app;dur=<ms>`."""
    if served.db_ms is not None:
        return f"db;dur={served.db_ms:.2f}, cache;desc={served.outcome}, app;dur={total_ms:.2f}"
    return f"cache;desc={served.outcome}, app;dur={total_ms:.2f}"
