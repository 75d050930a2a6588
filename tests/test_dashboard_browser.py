"""The dashboard in a real browser: headless Chromium driven by Playwright, against the app on a
real server with seeded data. The cards must show exactly the API's numbers, formatted for
people; a new window must change them; a new listing must arrive live over the stream."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from flask import Flask

from kpi_service.app import create_app
from kpi_service.cli.seed import seed
from kpi_service.serving.windows import bucket_count
from tests.helpers import APPLYING, make_settings, needs_chromium, token
from tests.sse import serving

# The picture goes to the test's temporary directory, so that a test run leaves the checkout as it
# was; KPI_SCREENSHOT=docs/dashboard.png renews the README's picture.
SCREENSHOT = os.environ.get("KPI_SCREENSHOT")
# How each KPI is shown: the page's formats for the en-US locale.
KINDS = {
    "total_listings": "int",
    "total_value": "money",
    "average_price": "money",
    "aged_inventory": "int",
    "scoring_rate": "pct",
    "average_score": "decimal",
    "active_buyers": "int",
    "conversion_rate": "pct",
    "lead_to_purchase_time": "days",
    "average_profit_per_unit": "money",
}

pytestmark = [pytest.mark.slow, needs_chromium]


def shown(kind: str, value: float) -> str:
    """The text a card shows for `value`, as Intl.NumberFormat writes it in en-US."""
    two = f"{abs(value):,.2f}".rstrip("0").rstrip(".")
    sign = "-" if value < 0 else ""
    if kind == "int":
        return f"{value:,}"
    if kind == "money":
        return f"{sign}${abs(value):,.2f}"
    if kind == "pct":
        return f"{sign}{two}%"
    if kind == "days":
        return f"{sign}{two} {'day' if value == 1 else 'days'}"
    return f"{sign}{two}"


def test_shown_formats() -> None:
    assert shown("money", 24371.88) == "$24,371.88" and shown("money", 3582500.0) == "$3,582,500.00"
    assert shown("money", -12.5) == "-$12.50" and shown("int", 1404) == "1,404"
    assert shown("pct", 85.0) == "85%" and shown("pct", 27.62) == "27.62%" and shown("pct", 78.5) == "78.5%"
    assert shown("days", 1.0) == "1 day" and shown("days", 16.41) == "16.41 days" and shown("decimal", 0.0) == "0"


@pytest.fixture
def app(database_url: str, conn: psycopg.Connection) -> Iterator[Flask]:
    seed(database_url, 3000)
    # A short TTL: the stream refreshes its window every 2 s, polled or not.
    application = create_app(make_settings(database_url, cache_ttl=2, apply_interval=APPLYING))
    yield application
    application.extensions["kpi"].db.close()


def test_the_dashboard_shows_the_api_live(app: Flask, browser, conn: psycopg.Connection, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=20_000)
    bearer = token(exp=datetime.now(UTC) + timedelta(hours=1))
    api = app.test_client()

    def metrics(query: str) -> dict:
        response = api.get(f"/api/kpi?{query}", headers={"Authorization": f"Bearer {bearer}"})
        assert response.status_code == 200
        return response.get_json()["metrics"]

    today = datetime.now(UTC).date()
    month_ago = (today - timedelta(days=29)).isoformat()

    with serving(app) as base:
        context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-US", timezone_id="UTC")
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{base}/#token={bearer}&from={month_ago}&to={today}&tz=UTC&interval=day")
        status = page.locator("#status")

        def expect_cards(expected: dict) -> None:
            for key, kind in KINDS.items():
                expect(page.locator(f'[data-kpi="{key}"] .value')).to_have_text(shown(kind, expected[key]))
            # ... and readable whole: no value is cut off by its card.
            cut = page.eval_on_selector_all(
                ".card .value", "values => values.filter(v => v.scrollWidth > v.clientWidth).map(v => v.textContent)"
            )
            assert cut == []

        # The last 30 days: every card is the API's number, and the stream is live.
        expect(status).to_have_attribute("data-mode", "live")
        recent = metrics(f"from={month_ago}&to={today}&tz=UTC")
        assert recent["total_listings"] > 0
        expect_cards(recent)
        expect(page.locator('[data-kpi="total_value"] .chart rect')).to_have_count(30)  # one bar a day
        # The token went to sessionStorage and left the address bar.
        assert "token=" not in page.url and f"from={month_ago}" in page.url
        page.wait_for_timeout(300)  # let the cards' highlight fade before the picture
        picture = Path(SCREENSHOT) if SCREENSHOT else tmp_path / "dashboard.png"
        page.screenshot(path=str(picture), full_page=True)
        assert picture.stat().st_size > 10_000

        # Another window, through the form: the cards follow.
        first, last = (today - timedelta(days=400)).isoformat(), (today - timedelta(days=300)).isoformat()
        page.fill("#from", first)
        page.fill("#to", last)
        page.click("label[for=interval-week]")
        page.click("button[type=submit]")
        older = metrics(f"from={first}&to={last}&tz=UTC")
        assert older["total_listings"] != recent["total_listings"]
        expect_cards(older)
        expect(status).to_have_attribute("data-mode", "live")
        weeks = bucket_count(date.fromisoformat(first), date.fromisoformat(last), "week")
        expect(page.locator('[data-kpi="total_listings"] .chart rect')).to_have_count(weeks)

        # An open window up to now; then new listings arrive and nobody polls.
        page.fill("#from", (today - timedelta(days=6)).isoformat())
        page.fill("#to", "")
        page.click("button[type=submit]")
        week = metrics(f"from={(today - timedelta(days=6)).isoformat()}&tz=UTC")
        expect_cards(week)
        expect(status).to_have_attribute("data-mode", "live")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO listings (price, status, listed_at) VALUES (%s, 'active', now())",
                [(Decimal("12345.00"),)] * 5,
            )
        expected = shown("int", week["total_listings"] + 5)
        expect(page.locator('[data-kpi="total_listings"] .value')).to_have_text(expected)
        # It came over the WebSocket, which the page's CSP (connect-src 'self') lets through; the
        # polling fallback is off while a stream is open.
        expect(page.locator("#cards")).to_have_attribute("data-via", "websocket")
        context.close()
    assert errors == []


def test_an_expired_token_asks_for_a_new_one(app: Flask, browser) -> None:
    from playwright.sync_api import expect

    expired = token(exp=datetime.now(UTC) - timedelta(minutes=1))
    with serving(app) as base:
        page = browser.new_page(locale="en-US", timezone_id="UTC")
        page.goto(f"{base}/#token={expired}")
        dialog = page.locator("#token-dialog")
        expect(dialog).to_be_visible()
        expect(page.locator("#token-reason")).to_contain_text("expired")
        expect(page.locator("#status")).to_have_attribute("data-mode", "auth")
        page.fill("#token-input", token())
        page.click("#token-dialog button[type=submit]")
        expect(dialog).to_be_hidden()
        expect(page.locator("#status")).to_have_attribute("data-mode", "live")
        expect(page.locator('[data-kpi="total_listings"] .value')).not_to_have_text("—")
        page.close()


def test_without_the_stream_the_page_polls(app: Flask, browser, conn: psycopg.Connection) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=30_000)
    hub = app.extensions["kpi_stream"].hub
    hub.max_streams = 0  # every stream is refused with a 503: the page must fall back to polling
    with serving(app) as base:
        page = browser.new_page(locale="en-US", timezone_id="UTC")
        page.goto(f"{base}/#token={token()}&from=&to=&tz=UTC")
        expect(page.locator("#status")).to_have_attribute("data-mode", "polling")
        value = page.locator('[data-kpi="total_listings"] .value')
        expect(value).not_to_have_text("—")
        before = int(value.inner_text().replace(",", ""))
        conn.execute("INSERT INTO listings (price, status, listed_at) VALUES (100, 'active', now())")
        expect(value).to_have_text(shown("int", before + 1))  # the next poll after the TTL
        expect(page.locator("#cards")).to_have_attribute("data-via", "poll")
        page.close()


def test_stale_figures_are_marked(app: Flask, conn: psycopg.Connection, browser) -> None:
    from playwright.sync_api import expect

    from kpi_service.db.errors import DatabaseUnavailable

    expect.set_options(timeout=20_000)
    with serving(app) as base:
        page = browser.new_page(locale="en-US", timezone_id="UTC")
        page.goto(f"{base}/#token={token()}&from=&to=&tz=UTC")
        expect(page.locator("#status")).to_have_attribute("data-mode", "live")

        def down(*args: object, **kwargs: object):
            raise DatabaseUnavailable("down")

        app.extensions["kpi"].db.kpi_rows = down
        # A write the service's applier announces: the stream's recompute fails, and it sends the
        # last value again, flagged stale.
        conn.execute("INSERT INTO listings (price, status, listed_at) VALUES (5, 'active', now())")
        expect(page.locator("#status")).to_have_attribute("data-mode", "stale")
        expect(page.locator("#banner")).to_contain_text("database is unavailable")
        expect(page.locator('[data-kpi="total_listings"]')).to_have_class(re.compile(r"\bstale\b"))
        page.close()


def test_the_dashboard_compares_shows_targets_and_downloads_the_apis_csv(
    app: Flask, browser, conn: psycopg.Connection, database_url: str
) -> None:
    from playwright.sync_api import expect

    from kpi_service.cli import commands
    from kpi_service.serving.responses import BETTER

    expect.set_options(timeout=20_000)
    conn.execute("DELETE FROM kpi.kpi_targets")
    bearer = token(exp=datetime.now(UTC) + timedelta(hours=1))
    headers = {"Authorization": f"Bearer {bearer}"}
    api = app.test_client()
    today = datetime.now(UTC).date()
    month_ago = (today - timedelta(days=29)).isoformat()
    window = f"from={month_ago}&to={today}&tz=UTC"
    commands.target_command({"DATABASE_URL": database_url}, "set", kpi="total_listings", value=Decimal(50))
    try:
        with serving(app) as base:
            context = browser.new_context(locale="en-US", timezone_id="UTC", accept_downloads=True)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{base}/#token={bearer}&{window}&interval=day")
            expect(page.locator("#status")).to_have_attribute("data-mode", "live")
            expect(page.locator("#period")).to_have_value("30")
            body = api.get(f"/api/kpi?{window}&compare=previous_period", headers=headers).get_json()
            assert body["targets"]["total_listings"]["value"] == 50.0
            # Each card: the API's change as an arrow and a percent, coloured by the KPI's direction.
            for key in KINDS:
                change = body["comparison"]["change"][key]
                element = page.locator(f'[data-kpi="{key}"] .change')
                expect(element).to_have_attribute(
                    "data-percent", "" if change["percent"] is None else str(change["percent"])
                )
                direction = "up" if change["absolute"] > 0 else "down" if change["absolute"] < 0 else "flat"
                expect(element).to_have_attribute("data-direction", direction)
                good = change["absolute"] > 0 if BETTER[key] == "higher" else change["absolute"] < 0
                tone = "same" if change["absolute"] == 0 else "better" if good else "worse"
                expect(element).to_have_attribute("data-tone", tone)
                arrow = {"up": "▲", "down": "▼", "flat": "▬"}[direction]
                percent = "—" if change["percent"] is None else shown("pct", abs(change["percent"]))
                expect(element).to_have_text(f"{arrow} {percent}")
            # The target as a line on its chart, and only there.
            expect(page.locator('[data-kpi="total_listings"] .chart line.target')).to_have_count(1)
            expect(page.locator('[data-kpi="total_listings"] .chart line.target')).to_have_attribute("data-value", "50")
            expect(page.locator('[data-kpi="total_value"] .chart line.target')).to_have_count(0)

            # Download CSV: the API's own CSV of the window with its comparison, and of its history.
            with page.expect_download() as downloaded:
                page.click("#download-window")
            csv_api = api.get(f"/api/kpi?{window}&compare=previous_period&format=csv", headers=headers)
            assert downloaded.value.suggested_filename == f"kpi_{month_ago}_{today}_previous_period_UTC.csv"
            assert Path(downloaded.value.path()).read_bytes() == csv_api.get_data()  # CRLF and all
            with page.expect_download() as downloaded:
                page.click("#download-history")
            history = api.get(f"/api/kpi/history?{window}&interval=day&format=csv", headers=headers)
            assert Path(downloaded.value.path()).read_bytes() == history.get_data()
            assert len(history.get_data(as_text=True).splitlines()) == 31  # a header and 30 days

            # The period selector: the last 7 days, compared with the 7 before.
            page.select_option("#period", "7")
            week_from = (today - timedelta(days=6)).isoformat()
            expect(page.locator("#from")).to_have_value(week_from)
            week = api.get(f"/api/kpi?from={week_from}&to={today}&tz=UTC&compare=previous_period", headers=headers)
            expected = week.get_json()["comparison"]["change"]["total_listings"]["percent"]
            expect(page.locator('[data-kpi="total_listings"] .change')).to_have_attribute(
                "data-percent", "" if expected is None else str(expected)
            )
            context.close()
        assert errors == []
    finally:
        conn.execute("DELETE FROM kpi.kpi_targets")
