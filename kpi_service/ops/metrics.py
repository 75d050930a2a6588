"""Prometheus metrics of the service, and the registry a scrape reads (KPI_METRICS; the /metrics
route itself is web/metrics.py).

With PROMETHEUS_MULTIPROC_DIR set (gunicorn.conf.py sets it), every worker writes its samples
to files in that directory and a scrape merges them, so the numbers cover all workers whichever
one answers. Without it, the process's own registry is served.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)
from prometheus_client.registry import Collector

from kpi_service.config import Settings, parse_metrics_exposure

REQUESTS = Counter(
    "kpi_http_requests_total",
    "HTTP requests answered, by method, route (the URL rule, not the raw path) and status.",
    ["method", "route", "status"],
)
REQUEST_DURATION = Histogram(
    "kpi_http_request_duration_seconds",
    "Time from the request reaching the app to its response, by method and route.",
    ["method", "route"],
)
COMPUTATION_DURATION = Histogram(
    "kpi_computation_duration_seconds",
    "Time the KPI SQL statement took when a request ran it, by endpoint (kpi, history).",
    ["endpoint"],
    # A miss reads summaries: milliseconds, below the default buckets' first bound (5 ms).
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
KPI_STATEMENTS = Counter(
    "kpi_statements_total",
    "Executions of the KPI SQL statement by this process, for requests, refreshes and streams alike, "
    "by endpoint (kpi, history).",
    ["endpoint"],
)
REFRESH_ADVANCED = Counter(
    "kpi_refresh_deltas_applied_total",
    "Watched windows brought up to a batch of the summaries by adding its deltas, with no KPI "
    "statement of their own (serving/advancer.py).",
)
REFRESH_VERIFIED = Counter(
    "kpi_refresh_verifications_total",
    "Advanced windows computed in full and compared with their advanced value.",
)
REFRESH_MISMATCHES = Counter(
    "kpi_refresh_mismatches_total",
    "Advanced windows whose value differed from their computation (then repaired by it): never, unless a defect.",
)
CACHE_OUTCOMES = Counter(
    "kpi_cache_outcomes_total",
    "KPI responses by how they were obtained (hit, refresh, miss, stale: docs/clients.md) and endpoint (kpi, history).",
    ["endpoint", "outcome"],
)
DATABASE_ERRORS = Counter(
    "kpi_database_errors_total",
    "PostgreSQL failures (unreachable, pool timeout, statement error), by operation (query, ping, apply, ...).",
    ["operation"],
)
POOL_BUSY = Counter(
    "kpi_database_pool_busy_total",
    "Waits for a pooled connection that ended with every connection still in use (the database "
    "healthy, more concurrent computations than KPI_DB_POOL_SIZE), by operation.",
    ["operation"],
)
REDIS_ERRORS = Counter(
    "kpi_redis_errors_total",
    "Redis commands that failed, by operation (get, set, ping, ...).",
    ["operation"],
)
SINGLEFLIGHT_WAITS = Counter(
    "kpi_singleflight_waits_total",
    "Requests that waited for another request's computation of the same window instead of running the SQL.",
)
CHANGES_APPLIED = Counter(
    "kpi_summary_changes_applied_total",
    "Rows of the change log (sql/schema/summary.sql) this process's applier turned into summaries.",
)
APPLY_DURATION = Histogram(
    "kpi_summary_apply_duration_seconds",
    "Time one call of the summaries' applier took, when it applied something.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
APPLIER_LAG = Gauge(
    "kpi_summary_applier_lag_seconds",
    "Seconds since the summaries' applier last found the change log empty, while rows remain in it "
    "(0 when caught up): no write older than that is missing from the KPIs. Set by the applier that ran last.",
    multiprocess_mode="mostrecent",
)
AUDIT_SLICES = Counter(
    "kpi_summary_audit_slices_total",
    "Days of the summaries the audit compared with the sales tables (sql/schema/summary.sql, kpi_audit).",
)
AUDIT_REPAIRS = Counter(
    "kpi_summary_audit_repairs_total",
    "Rows of the summaries the audit found different from what the sales tables make, and repaired, by "
    "table. Anything above 0 is a defect of the applier, or a change by hand: alert on its increase.",
    ["part"],
)
AUDIT_PASS_END = Gauge(
    "kpi_summary_audit_last_pass_end_timestamp_seconds",
    "When the audit last finished a whole pass over the summaries (Unix time).",
    multiprocess_mode="mostrecent",
)

# Endpoint names of the api blueprint -> the `endpoint` label of the KPI metrics.
_KPI_ENDPOINTS = {"api.kpi": "kpi", "api.history": "history"}


def registry() -> Collector:
    """What a scrape reads: the merged files of all processes in multiprocess mode, else this process."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # A fresh registry per scrape, as prometheus_client documents for multiprocess mode.
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return merged
    return REGISTRY


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@functools.lru_cache(maxsize=1024)
def _request_series(method: str, route: str, status: int) -> tuple[Any, Any]:
    # Looking a labelled series up takes a lock and builds tuples: on every request of the hot
    # path that was a tenth of the cost of a cached KPI response, hence the memo. Any method
    # outside the standard ones is "other", so that clients cannot create series at will.
    method = method if method in _METHODS else "other"
    return (
        REQUESTS.labels(method=method, route=route, status=str(status)),
        REQUEST_DURATION.labels(method=method, route=route),
    )


@functools.lru_cache(maxsize=64)
def _kpi_series(endpoint: str, outcome: str) -> tuple[Any, Any]:
    return CACHE_OUTCOMES.labels(endpoint=endpoint, outcome=outcome), COMPUTATION_DURATION.labels(endpoint=endpoint)


def observe(
    method: str,
    route: str,
    endpoint: str | None,
    status: int,
    seconds: float,
    outcome: str | None = None,
    db_ms: float | None = None,
) -> None:
    """Count one answered request (kpi_service.web.request_hooks calls this for every request);
    for a KPI body, how it was obtained (`outcome`) and the SQL's milliseconds when it ran."""
    requests, duration = _request_series(method, route, status)
    requests.inc()
    duration.observe(seconds)
    kpi_endpoint = _KPI_ENDPOINTS.get(endpoint or "")
    if outcome is not None and kpi_endpoint is not None:
        outcomes, computation = _kpi_series(kpi_endpoint, outcome)
        outcomes.inc()
        if db_ms is not None:
            computation.observe(db_ms / 1000)


def counting(settings: Settings) -> bool:
    """Whether requests are counted: unless KPI_METRICS=off."""
    return parse_metrics_exposure(settings.metrics_exposure)[0] != "off"


def start_exporter(port: int, addr: str = "0.0.0.0") -> None:
    """prometheus_client's own HTTP server for KPI_METRICS=port:NNNN, as a daemon thread."""
    start_http_server(port, addr=addr, registry=registry())
