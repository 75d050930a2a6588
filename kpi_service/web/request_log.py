"""The request log: one JSON line per request worth one (kpi_service.web.request_hooks decides).

By default (KPI_ACCESS_LOG=errors) that is every response other than a success (2xx) or a
304 Not Modified, which is a poller's cache hit: a line for every hit cost more than the rest
of the hit (docs/benchmarks.md), and Prometheus counts every request anyway. KPI_ACCESS_LOG=all
logs every request.
"""

from __future__ import annotations

import logging

from flask import Request

from kpi_service.serving.responses import Served

log = logging.getLogger("kpi_service.request")


def worth_a_line(status: int) -> bool:
    """Whether the default log (KPI_ACCESS_LOG=errors) has a line for this status."""
    return not (200 <= status < 300 or status == 304)


def write(request: Request, route: str, status: int, elapsed: float, served: Served | None, request_id: str) -> None:
    """The line of one request (at INFO: KPI_LOG_LEVEL=WARNING silences it)."""
    if not log.isEnabledFor(logging.INFO):
        return
    # request.path has no query string: parameters may carry anything, and tokens never go there
    # but a caller could still put one there by mistake.
    log.info(
        "%s %s %d",
        request.method,
        request.path,
        status,
        extra={
            "method": request.method,
            "path": request.path,
            "route": route,
            "status": status,
            "duration_ms": round(elapsed * 1000, 2),
            "cache": served.outcome if served is not None else None,
            "request_id": request_id,
            "remote_addr": request.remote_addr,
        },
    )
