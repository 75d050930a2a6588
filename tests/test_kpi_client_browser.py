"""kpi_service/static/kpi-client.js in headless Chromium, against the app on a real server: a page
of the test's own imports the module from the service and shows what its subscription passes on.
Live updates over the WebSocket, a socket reopened at once when its token expires, server-sent
events when the WebSocket is refused, the application's fallback while the server is stopped and
the service again once it is back; getKpiMetrics' revalidation with the ETag."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import psycopg
import pytest
from flask import Flask

from kpi_service.app import create_app
from kpi_service.db.errors import DatabaseUnavailable
from tests.helpers import APPLYING, free_port, make_settings, needs_chromium, token
from tests.sse import serving

pytestmark = [pytest.mark.slow, pytest.mark.applying, needs_chromium]


WAIT_MS = 20_000
# What the page's fallback computes: numbers the service never answers for these tables.
LOCAL = {
    "total_listings": 4242,
    "total_value": 1.5,
    "average_price": 1.5,
    "aged_inventory": 7,
    "scoring_rate": 50.0,
    "average_score": 50.0,
    "active_buyers": 3,
    "conversion_rate": 25.0,
    "lead_to_purchase_time": 2.0,
    "average_profit_per_unit": 100.0,
}
# Served at <service>/kpi-client-test.html by the test's middleware (from the server itself, as
# an application's page would be: Chromium lets a page from elsewhere, such as one Playwright
# fulfils, open no WebSocket to a loopback address), with short delays so that reconnections
# happen within the test. The module comes from the service.
PAGE = """<!doctype html>
<meta charset="utf-8">
<title>kpi-client.js</title>
<p>Listings <output id="listings">-</output> from <output id="source">-</output></p>
<script type="module">
  import { subscribe } from "/static/kpi-client.js";
  const seen = (window.seen = { updates: [], statuses: [], errors: [], fallback: [], fallbackErrors: [] });
  // One token, or several handed out in turn (the last one for ever), as a page renewing its
  // token would.
  window.start = (tokens) => {
    tokens = [].concat(tokens);
    const token = () => (tokens.length > 1 ? tokens.shift() : tokens[0]);
    window.subscription = subscribe({ tz: "UTC" }, (update) => {
      seen.updates.push(update);
      document.getElementById("listings").textContent = update.metrics.total_listings;
      document.getElementById("source").textContent = update.source;
    }, {
      token,
      pollMs: 500,
      minDelayMs: 100,
      maxDelayMs: 1000,
      timeoutMs: 3000,
      onStatus: (transport) => seen.statuses.push(transport),
      onError: (error) => seen.errors.push(`${error.status} ${error.message}`),
      fallback: (params, error) => {
        seen.fallback.push(params);
        seen.fallbackErrors.push({ status: error.status, message: error.message });
        return LOCAL;
      },
    });
  };
</script>
""".replace("LOCAL", json.dumps(LOCAL))
LAST = "window.seen.updates.at(-1)"


def site(app: Flask, refused: list[str] | None = None) -> Callable:
    """The app with the test's page, and, given `refused`, behind something that lets no
    WebSocket through (as some proxies do): the handshake gets a plain 403, and is counted."""

    def wsgi(environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        if path == "/kpi-client-test.html":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [PAGE.encode()]
        if path == "/api/kpi/ws" and refused is not None:
            refused.append(path)
            start_response("403 Forbidden", [("Content-Type", "text/plain")])
            return [b"no websockets here"]
        return app(environ, start_response)

    return wsgi


def open_page(browser, base: str, *, start: bool = True, tokens: list[str] | None = None):
    """The test's page, subscribed (with `tokens` in turn) unless `start` is false; and the list
    of its uncaught errors."""
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{base}/kpi-client-test.html")
    page.wait_for_function("typeof window.start === 'function'")
    if start:
        page.evaluate("tokens => window.start(tokens)", tokens or [token()])
    return page, errors


def wait_for_update(page, source: str | tuple[str, ...], listings: int) -> dict:
    """The page's last update once it came from `source` with that many listings."""
    sources = [source] if isinstance(source, str) else list(source)
    page.wait_for_function(
        f"([sources, listings]) => {{ const u = {LAST}; "
        "return u !== undefined && sources.includes(u.source) && u.metrics.total_listings === listings; }",
        arg=[sources, listings],
        timeout=WAIT_MS,
    )
    return page.evaluate(LAST)


def add_listing(conn: psycopg.Connection) -> None:
    conn.execute("INSERT INTO listings (price, status, listed_at) VALUES (9999, 'active', now())")


def test_live_updates_arrive_over_the_websocket(app: Flask, browser, conn: psycopg.Connection) -> None:
    with serving(app, site(app)) as base:
        page, errors = open_page(browser, base)
        first = wait_for_update(page, "websocket", 0)
        assert first["meta"]["window"]["tz"] == "UTC" and first["meta"]["stale"] is False
        add_listing(conn)  # the applier announces it; the service pushes the new value
        wait_for_update(page, "websocket", 1)
        seen = page.evaluate("window.seen")
        assert seen["statuses"] == ["websocket"]  # the first way tried, and it held
        assert seen["fallback"] == [] and seen["errors"] == [] and errors == []
        page.close()


def test_a_socket_closed_at_the_tokens_expiry_reopens_at_once(app: Flask, browser, conn: psycopg.Connection) -> None:
    short = token(exp=datetime.now(UTC) + timedelta(seconds=3))
    with serving(app, site(app)) as base:
        page, errors = open_page(browser, base, start=False)
        polls: list[str] = []
        page.on("request", lambda request: "/api/kpi?" in request.url and polls.append(request.url))
        with page.expect_websocket() as opened:
            page.evaluate("tokens => window.start(tokens)", [short, token()])
        wait_for_update(page, "websocket", 0)
        # The server closes with 1000 when the short token expires; the client gets a ticket
        # with the page's next token and opens a socket again at once, saying what it has.
        reopened = page.wait_for_event("websocket", timeout=WAIT_MS)
        assert opened.value.is_closed()
        assert "last_event_id=" not in opened.value.url and "last_event_id=" in reopened.url
        add_listing(conn)
        wait_for_update(page, "websocket", 1)
        seen = page.evaluate("window.seen")
        assert seen["statuses"] == ["websocket"] and seen["errors"] == [] and errors == []
        assert len(seen["updates"]) == 2  # the value it had was not sent again
        assert polls == []  # no polling in between
        page.close()


def test_a_refused_websocket_gives_way_to_server_sent_events(app: Flask, browser, conn: psycopg.Connection) -> None:
    attempts: list[str] = []
    with serving(app, site(app, attempts)) as base:
        page, errors = open_page(browser, base)
        wait_for_update(page, "sse", 0)
        assert attempts, "the client did not try the WebSocket first"
        add_listing(conn)
        wait_for_update(page, "sse", 1)
        seen = page.evaluate("window.seen")
        assert seen["statuses"] == ["sse"]
        assert seen["fallback"] == [] and seen["errors"] == [] and errors == []
        page.close()


def test_a_stopped_service_gives_way_to_the_fallback_until_it_is_back(
    app: Flask, browser, conn: psycopg.Connection, database_url: str
) -> None:
    with serving(app, site(app)) as base:
        page, errors = open_page(browser, base)
        wait_for_update(page, ("websocket", "sse"), 0)
    # Stopped: its streams end and its connections drop; the client finds nobody answering.
    local = wait_for_update(page, "local", LOCAL["total_listings"])
    assert local["metrics"] == LOCAL and local["meta"]["local"] is True
    assert page.inner_text("#source") == "local" and page.inner_text("#listings") == "4242"
    assert page.evaluate("window.seen.fallback[0]") == {"tz": "UTC"}  # the params as subscribed
    assert page.evaluate("window.seen.fallbackErrors[0].status") == 0  # unreachable

    add_listing(conn)  # while the service was away
    restarted = create_app(make_settings(database_url, apply_interval=APPLYING))  # a new process's worth of state
    try:
        with serving(restarted, site(restarted), port=urlsplit(base).port):  # at the same address
            back = wait_for_update(page, ("websocket", "sse"), 1)
            assert back["meta"].get("local") is None and back["meta"]["stale"] is False
            assert page.inner_text("#source") in ("websocket", "sse")
            seen = page.evaluate("window.seen")
            assert seen["errors"] == [] and errors == []  # the fallback took every failure
            page.close()
    finally:
        restarted.extensions["kpi"].close()


def test_a_503_gives_way_to_the_fallback_until_the_database_answers(
    app: Flask, browser, conn: psycopg.Connection
) -> None:
    db = app.extensions["kpi"].db
    computes = db.kpi_rows

    def down(*args: object, **kwargs: object):
        raise DatabaseUnavailable("down")

    db.kpi_rows = down  # nothing cached: the socket, the stream and GET /api/kpi are 503s
    with serving(app, site(app)) as base:
        page, errors = open_page(browser, base)
        wait_for_update(page, "local", LOCAL["total_listings"])
        assert page.evaluate("window.seen.statuses") == ["poll"]
        db.kpi_rows = computes
        add_listing(conn)
        # The service answers again: first a poll or a stream, whichever comes first; then a stream.
        wait_for_update(page, ("poll", "websocket", "sse"), 1)
        # Either stream: a socket refused during the outage may have left the client on the event
        # stream, which it keeps while it stays open.
        page.wait_for_function("['websocket', 'sse'].includes(window.seen.statuses.at(-1))", timeout=WAIT_MS)
        seen = page.evaluate("window.seen")
        assert seen["errors"] == [] and errors == []
        failures = {error["status"] for error in seen["fallbackErrors"]}
        assert failures == {503}, seen["fallbackErrors"]
        page.close()


def test_get_kpi_metrics_revalidates_with_the_etag(app: Flask, browser) -> None:
    # Computed once before, so that both calls below are served from the cache (the ETag is the
    # same for the computing answer and the hits: test_cache.py).
    assert app.test_client().get("/api/kpi?tz=UTC", headers={"Authorization": f"Bearer {token()}"}).status_code == 200
    with serving(app, site(app)) as base:
        page, errors = open_page(browser, base, start=False)
        answers: list[tuple[int, str | None]] = []
        page.on(
            "response",
            lambda r: "/api/kpi?" in r.url and answers.append((r.status, r.request.headers.get("if-none-match"))),
        )
        result = page.evaluate(
            """async ([token, nowhere]) => {
              const { getKpiMetrics } = await import("/static/kpi-client.js");
              const first = await getKpiMetrics({ tz: "UTC" }, { token });
              const second = await getKpiMetrics(new URLSearchParams({ tz: "UTC" }), { token });
              let refused = null;
              try {
                await getKpiMetrics({ tz: "Mars/Olympus_Mons" }, { token });
              } catch (error) {
                refused = { name: error.name, status: error.status, message: error.message };
              }
              const fallback = () => ({ total_listings: 1 });
              const local = await getKpiMetrics({ tz: "UTC" }, { token, baseUrl: nowhere, fallback });
              return { first, second, refused, local };
            }""",
            [token(), f"http://127.0.0.1:{free_port()}/"],
        )
        assert result["first"]["source"] == result["second"]["source"] == "http"
        assert result["second"]["metrics"] == result["first"]["metrics"]
        assert result["second"]["meta"] == result["first"]["meta"]  # the kept body, not a new computation
        assert [status for status, _ in answers] == [200, 304, 400]
        assert answers[0][1] is None and answers[1][1] is not None  # If-None-Match: the first answer's ETag
        assert result["refused"]["name"] == "KpiApiError" and result["refused"]["status"] == 400
        assert "tz" in result["refused"]["message"]  # the field's problem, from the envelope
        assert result["local"]["source"] == "local" and result["local"]["metrics"] == {"total_listings": 1}
        assert errors == []
        page.close()
