"""What every request goes through: on the way in, its id and clock; on the way out, in this
order, the X-Request-ID and Server-Timing headers, the Prometheus counts, and the request log.

One hook each way, rather than one per concern: the consumers read the same values (the route,
the time taken, how a KPI body was served), which are worked out once here, and their order is
written down here instead of following from the order of registration. On the cached hot path
this hook and the view are most of the app's own time, so it stays lean (bench/hot_path.py).
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import time
from dataclasses import dataclass

from flask import Flask, Response, g, request

from kpi_service.config import Settings
from kpi_service.ops import metrics
from kpi_service.serving.responses import Served
from kpi_service.web import request_log, server_timing

REQUEST_ID_HEADER = "X-Request-ID"
# A caller's id is echoed into logs and headers: keep it short and free of anything that could
# forge a log field or split a header.
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


@dataclass(slots=True)
class RequestScope:
    """What one request carries from its way in to its way out (flask.g.kpi_scope)."""

    started: float  # time.perf_counter() when the request reached the app
    request_id: str
    served: Served | None = None  # how the KPI body was obtained, set by the API's views


def scope() -> RequestScope:
    """The current request's scope."""
    return g.kpi_scope


class _RequestIds:
    """32 hex digits: a random prefix per process and a counter. Unique without a call to the
    system's random source per request (uuid4 was a tenth of a cached response's time)."""

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)  # a forked worker must not repeat its parent's

    def reseed(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFFFFFFFFFF:016x}"


_ids = _RequestIds()


def _begin() -> None:
    given = request.environ.get("HTTP_X_REQUEST_ID", "")  # the header, without Headers' key lookup
    g.kpi_scope = RequestScope(
        time.perf_counter(), given if given and _SAFE_REQUEST_ID.fullmatch(given) else _ids.next()
    )


def init_app(app: Flask, settings: Settings) -> None:
    """Registered before any other hook: its clock starts first and its end runs last."""
    count = metrics.counting(settings)
    log_all = settings.access_log == "all"

    def finish(response: Response) -> Response:
        current = g.kpi_scope
        req = request._get_current_object()  # one context lookup instead of one per attribute
        elapsed = time.perf_counter() - current.started
        served = current.served
        headers = response.headers
        headers[REQUEST_ID_HEADER] = current.request_id
        if served is not None:
            headers["Server-Timing"] = server_timing.header_value(served, elapsed * 1000)
        status = response.status_code
        rule = req.url_rule
        route = rule.rule if rule is not None else "unmatched"
        if count:
            metrics.observe(
                req.method,
                route,
                req.endpoint,
                status,
                elapsed,
                served.outcome if served is not None else None,
                served.db_ms if served is not None else None,
            )
        if log_all or request_log.worth_a_line(status):
            request_log.write(req, route, status, elapsed, served, current.request_id)
        return response

    app.before_request(_begin)
    app.after_request(finish)
