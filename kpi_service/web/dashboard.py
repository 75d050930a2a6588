"""GET /: the live KPI dashboard, one static page shipped in the package (kpi_service/static).

The page holds no secret: it asks for a token and keeps it in sessionStorage (the demo hands it
one in the URL's fragment, which browsers never send to a server). Its script and styles are
files of their own, so the page can forbid every inline script and every other origin.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, send_from_directory

bp = Blueprint("dashboard", __name__)

# Only this origin: no CDN, no inline script, no framing; connect-src covers fetch and EventSource.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@bp.get("/")
def index() -> Response:
    assert current_app.static_folder is not None
    response = send_from_directory(current_app.static_folder, "index.html", max_age=0)
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    # The page's address never travels on to another site (it may carry the view in its fragment).
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-cache"
    return response
