"""Helpers shared by the test modules: settings, tokens, ports and polling, a redis-server of a
test's own, Chromium, and the data and clients several test modules use. Fixtures stay in
conftest.py."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
import redis
from flask import Flask
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from kpi_service.config import Settings
from kpi_service.db.connections import Database
from kpi_service.serving.responses import KpiValuesSchema
from kpi_service.serving.windows import Window
from tests import reference
from tests.dataset import Dataset, Lead, Listing, Purchase
from tests.strategies import instants, money, scores

SECRET = "test-secret-that-is-at-least-32-bytes-long"


# The browser tests drive Debian's Chromium through Playwright (no browser download).
CHROMIUM = os.environ.get("KPI_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)"
)


# The seconds between applier runs of a test app that should take in writes by itself
# (make_app(apply_interval=APPLYING), or the conftest `app` of a test marked `applying`). Other
# test apps run none: its batches announce changes, and an announced change has a cached window
# computed again, so a test that writes and then expects a cache hit would race it.
APPLYING = 0.05


def make_settings(database_url: str, **overrides: object) -> Settings:
    # development: the in-process Redis stand-in unless a test gives redis_url
    values: dict[str, object] = {
        "jwt_secret_key": SECRET,
        "database_url": database_url,
        "env": "development",
        "apply_interval": 0,
    }
    values.update(overrides)
    return Settings.from_env({}, **values)


def token(secret: str = SECRET, **claims: object) -> str:
    """A token as any standard JWT library makes it: sub and exp, HS256."""
    payload: dict[str, object] = {"sub": "dashboard", "exp": datetime.now(UTC) + timedelta(minutes=5)}
    payload.update(claims)
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, secret, algorithm="HS256")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(ready: Callable[[], bool], seconds: float = 15.0) -> None:
    """Poll `ready` until it holds; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached in time")
        time.sleep(0.02)


class RedisServer:
    """A redis-server of the test's own on a free loopback port, which the test may kill;
    `args` are more of its options (e.g. --replicaof)."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = args
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *self.args],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        wait_until(lambda: _answers(client))

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def two_listings(conn: psycopg.Connection) -> None:
    Dataset(
        listings=[
            Listing(1, Decimal("100.00"), "active", datetime(2026, 3, 1, tzinfo=UTC)),
            Listing(2, Decimal("300.00"), "active", datetime(2026, 3, 2, tzinfo=UTC)),
        ]
    ).insert(conn)


HOUR = 3600


def insert_listing(conn: psycopg.Connection, listed_at: datetime, price: str = "1000.00") -> int:
    return conn.execute(
        "INSERT INTO listings (price, status, listed_at) VALUES (%s, 'active', %s) RETURNING id",
        (Decimal(price), listed_at),
    ).fetchone()[0]


def today_window() -> str:
    return f"from={(date.today() - timedelta(days=1)).isoformat()}&tz=UTC"


WINDOW = "from=2026-03-01&to=2026-03-31&tz=UTC"


def post_ticket(base: str, bearer: str | None = None) -> tuple[int, dict]:
    headers = {} if bearer is None else {"Authorization": f"Bearer {bearer}"}
    request = urllib.request.Request(f"{base}/api/kpi/stream-ticket", method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def ticket(base: str) -> str:
    status, body = post_ticket(base, token())
    assert status == 200, body
    return body["ticket"]


def ws_url(base: str, query: str = "") -> str:
    return base.replace("http://", "ws://", 1) + "/api/kpi/ws" + (f"?{query}" if query else "")


def open_ws(url: str, headers: dict[str, str] | None = None, origin: str | None = None) -> ClientConnection:
    # proxy=None: an HTTP(S)_PROXY of the machine must not sit between the test and its server.
    return connect(url, additional_headers=headers, origin=origin, proxy=None, open_timeout=10)


def computed(db: Database, windows: list[Window], aged_days: int, now: datetime) -> list[dict[str, Any]]:
    """What a cache miss returns once the applier has taken in every committed change."""
    if db.mode() == "summaries":
        db.apply_changes(wait=True)
    rows, *_ = db.kpi_rows([(w.start, w.end, w.as_of(now)) for w in windows], aged_days)
    return [KpiValuesSchema().load(row) for row in rows]


def expected(data: Dataset, windows: list[Window], aged_days: int, now: datetime) -> list[dict[str, Any]]:
    return [reference.kpis(data, w.start, w.end, w.as_of(now), aged_days) for w in windows]


def apply_change(conn: psycopg.Connection, data: Dataset, draw: st.DrawFn) -> None:
    """One change the application makes to its rows, in the database and in `data` alike."""
    kinds = ["insert_listing", "insert_lead"]
    if data.listings:
        kinds += ["score", "reprice", "sell", "withdraw", "relist", "delete_listing"]
    if data.leads:
        kinds += ["move_lead", "delete_lead"]
    sellable = [x for x in data.listings if x.id not in {p.listing_id for p in data.purchases}]
    if sellable:
        kinds.append("purchase")
    if data.purchases:
        kinds += ["delete_purchase", "relink_purchase"]
    kind = draw(st.sampled_from(kinds))
    instant = instants()
    if kind == "insert_listing":
        listing = Listing(max((x.id for x in data.listings), default=0) + 1, draw(money), "active", draw(instant))
        conn.execute(
            "INSERT INTO listings (id, price, status, listed_at) VALUES (%s, %s, %s, %s)",
            [listing.id, listing.price, listing.status, listing.listed_at],
        )
        data.listings.append(listing)
    elif kind == "insert_lead":
        lead = Lead(max((x.id for x in data.leads), default=0) + 1, draw(st.sampled_from(data.buyers)), draw(instant))
        conn.execute(
            "INSERT INTO leads (id, buyer_id, created_at, status) VALUES (%s, %s, %s, 'open')",
            [lead.id, lead.buyer_id, lead.created_at],
        )
        data.leads.append(lead)
    elif kind in ("score", "reprice", "sell", "withdraw", "relist"):
        listing = draw(st.sampled_from(data.listings))
        if kind == "score":
            listing.score = draw(st.one_of(st.none(), scores))
        elif kind == "reprice":
            listing.price = draw(money)
            listing.acquisition_cost = draw(st.one_of(st.none(), money))
        elif kind == "sell":
            listing.status, listing.sold_at = "sold", draw(instant)
        elif kind == "withdraw":
            listing.status, listing.sold_at = "withdrawn", None
        else:  # corrected listing instant
            listing.listed_at = draw(instant)
        conn.execute(
            "UPDATE listings SET price = %s, acquisition_cost = %s, status = %s, listed_at = %s, sold_at = %s,"
            " score = %s WHERE id = %s",
            [
                listing.price,
                listing.acquisition_cost,
                listing.status,
                listing.listed_at,
                listing.sold_at,
                listing.score,
                listing.id,
            ],
        )
    elif kind == "delete_listing":
        listing = draw(st.sampled_from(data.listings))
        # The application removes what refers to it first (the foreign keys demand it).
        gone = [p for p in data.purchases if p.listing_id == listing.id]
        conn.execute("DELETE FROM purchases WHERE listing_id = %s", [listing.id])
        conn.execute("UPDATE leads SET listing_id = NULL WHERE listing_id = %s", [listing.id])
        conn.execute("DELETE FROM listings WHERE id = %s", [listing.id])
        data.purchases = [p for p in data.purchases if p not in gone]
        data.listings.remove(listing)
    elif kind == "move_lead":
        lead = draw(st.sampled_from(data.leads))
        lead.created_at, lead.buyer_id = draw(instant), draw(st.sampled_from(data.buyers))
        conn.execute(
            "UPDATE leads SET created_at = %s, buyer_id = %s WHERE id = %s", [lead.created_at, lead.buyer_id, lead.id]
        )
    elif kind == "delete_lead":
        lead = draw(st.sampled_from(data.leads))
        conn.execute("UPDATE purchases SET lead_id = NULL WHERE lead_id = %s", [lead.id])
        conn.execute("DELETE FROM leads WHERE id = %s", [lead.id])
        for p in data.purchases:
            if p.lead_id == lead.id:
                p.lead_id = None
        data.leads.remove(lead)
    elif kind == "purchase":  # often for an old lead: conversion of a past window changes
        listing = draw(st.sampled_from(sellable))
        free = sorted({x.id for x in data.leads} - {p.lead_id for p in data.purchases})
        purchase = Purchase(
            max((p.id for p in data.purchases), default=0) + 1,
            listing.id,
            draw(st.sampled_from(data.buyers)),
            draw(money),
            draw(instant),
            draw(st.one_of(st.none(), st.sampled_from(free))) if free else None,
        )
        conn.execute(
            "INSERT INTO purchases (id, listing_id, buyer_id, lead_id, sale_price, purchased_at)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            [purchase.id, purchase.listing_id, purchase.buyer_id, purchase.lead_id, purchase.sale_price,
             purchase.purchased_at],
        )  # fmt: skip
        data.purchases.append(purchase)
    elif kind == "delete_purchase":
        purchase = draw(st.sampled_from(data.purchases))
        conn.execute("DELETE FROM purchases WHERE id = %s", [purchase.id])
        data.purchases.remove(purchase)
    else:  # relink_purchase: the sale is attributed to another lead, or to none
        purchase = draw(st.sampled_from(data.purchases))
        free = sorted({x.id for x in data.leads} - {p.lead_id for p in data.purchases})
        purchase.lead_id = draw(st.one_of(st.none(), st.sampled_from(free))) if free else None
        purchase.purchased_at = draw(instant)
        conn.execute(
            "UPDATE purchases SET lead_id = %s, purchased_at = %s WHERE id = %s",
            [purchase.lead_id, purchase.purchased_at, purchase.id],
        )


def counted(app: Flask) -> list[int]:
    """Counts the executions of the KPI statement by this app."""
    calls = [0]
    db = app.extensions["kpi"].db
    original = db.kpi_rows

    def kpi_rows(*args: object, **kwargs: object):
        calls[0] += 1
        return original(*args, **kwargs)

    db.kpi_rows = kpi_rows
    return calls
