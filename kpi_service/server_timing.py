"""The Server-Timing header of KPI responses: where the time of a request went, for browsers'
developer tools and for anyone comparing the dashboard's latency with the service's."""

from __future__ import annotations

from flask import Flask, Response, g

from kpi_service.kpis import Served
from kpi_service.request_log import elapsed_ms


def header_value(served: Served, total_ms: float) -> str:
    """`db;dur=<ms>` when the SQL ran for this request, then `cache;desc=<outcome>` and `app;dur=<ms>`."""
    parts = []
    if served.db_ms is not None:
        parts.append(f"db;dur={served.db_ms:.2f}")
    parts.append(f"cache;desc={served.outcome}")
    parts.append(f"app;dur={total_ms:.2f}")
    return ", ".join(parts)


def _add_header(response: Response) -> Response:
    served = g.get("kpi_served")
    if served is not None:
        response.headers["Server-Timing"] = header_value(served, elapsed_ms())
    return response


def init_app(app: Flask) -> None:
    app.after_request(_add_header)
