"""One JSON log line per request, and the request id that ties it to the caller's logs."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, g, request

log = logging.getLogger("kpi_service.request")

REQUEST_ID_HEADER = "X-Request-ID"
# A caller's id is echoed into logs and headers: keep it short and free of anything that could
# forge a log field or split a header.
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def request_id() -> str:
    """The id of the current request (the caller's X-Request-ID when acceptable)."""
    return g.request_id


def elapsed_ms() -> float:
    """Milliseconds since the request reached the app."""
    return (time.perf_counter() - g.request_started) * 1000


def route() -> str:
    """The matched URL rule (`/api/kpi`), never the raw path: bounded, and free of ids."""
    rule = request.url_rule
    return rule.rule if rule is not None else "unmatched"


def _begin() -> None:
    g.request_started = time.perf_counter()
    given = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = given if _SAFE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def _finish(response: Response) -> Response:
    response.headers[REQUEST_ID_HEADER] = g.request_id
    if not log.isEnabledFor(logging.INFO):
        return response
    served = g.get("kpi_served")
    # request.path has no query string: parameters may carry anything, and tokens never go there
    # but a caller could still put one there by mistake.
    log.info(
        "request",
        extra={
            "method": request.method,
            "path": request.path,
            "route": route(),
            "status": response.status_code,
            "duration_ms": round(elapsed_ms(), 2),
            "cache": served.outcome if served is not None else None,
            "request_id": g.request_id,
            "remote_addr": request.remote_addr,
        },
    )
    return response


def init_app(app: Flask) -> None:
    """Registered first, so that its clock starts before any other hook runs."""
    app.before_request(_begin)
    app.after_request(_finish)
