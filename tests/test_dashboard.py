"""GET / without a browser: the page, its assets and the headers that keep it to itself."""

from __future__ import annotations

import re

from flask.testing import FlaskClient


def test_the_page_needs_no_token_and_allows_only_its_own_origin(client: FlaskClient) -> None:
    response = client.get("/")
    assert response.status_code == 200 and response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert '<script type="module" src="static/dashboard.js">' in page and 'href="static/dashboard.css"' in page
    assert "<script>" not in page and "http" not in page.replace("http://www.w3.org", "")  # no inline code, no CDN
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Cache-Control"] == "no-cache"


def test_the_assets_are_served(client: FlaskClient) -> None:
    script = client.get("/static/dashboard.js")
    assert script.status_code == 200 and script.mimetype in ("text/javascript", "application/javascript")
    # The page's transport is the client module's, not a second copy of it.
    assert 'from "./kpi-client.js"' in script.get_data(as_text=True)
    assert "EventSource" not in script.get_data(as_text=True)
    client_module = client.get("/static/kpi-client.js")
    assert client_module.mimetype in ("text/javascript", "application/javascript")  # a module needs one of these
    # Built from clients/js (esbuild): one export list at the end.
    assert re.search(r"export \{[^}]*\bsubscribe\b", client_module.get_data(as_text=True))
    assert client.get("/static/dashboard.css").mimetype == "text/css"
    missing = client.get("/static/nope.js")
    assert missing.status_code == 404 and missing.get_json()["success"] is False
