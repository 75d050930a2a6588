"""The JS package in clients/js against the real service: its API client's suite run against a
gunicorn server, and its committed OpenAPI types against the document the service serves.
`make test` runs `npm ci` there first (and the package's own suite after pytest)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from playwright.sync_api import TimeoutError as PageTimeout

from kpi_service.app import create_app
from kpi_service.serving.windows import Window
from tests import make_vectors, reference
from tests.dataset import Dataset, Lead, Listing, Purchase
from tests.helpers import APPLYING, SECRET, make_settings, needs_chromium, token, two_listings
from tests.servers import gunicorn
from tests.sse import serving

PACKAGE = Path(__file__).resolve().parent.parent / "clients" / "js"


def node(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert (PACKAGE / "node_modules").is_dir(), "clients/js has no node_modules: `make test` runs npm ci"
    return subprocess.run(
        args, cwd=PACKAGE, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300
    )


CONSUMERS = PACKAGE / "test" / "consumers"


def test_the_packed_tarball_installs_in_a_vite_react_app_and_a_node_cjs_script(tmp_path: Path) -> None:
    """npm pack, then the tarball installed (from npm's cache where it can) into an application
    of React 19 and TypeScript 5: type-checked under `bundler` and built with Vite; and required
    by a CommonJS script type-checked under `node16`, and imported by an ES module under `nodenext`."""
    # Packed from a copy: its prepack build writes the copy's dist/, not the one the example page
    # is built from, which another pytest worker may be reading meanwhile.
    source = tmp_path / "package"
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("node_modules", "dist", "test", "example"))
    (source / "node_modules").symlink_to(PACKAGE / "node_modules")
    packed = subprocess.run(
        ["npm", "pack", "--json", "--pack-destination", str(tmp_path)],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert packed.returncode == 0, packed.stderr
    tarball = tmp_path / json.loads(packed.stdout[packed.stdout.index("[") :])[0]["filename"]
    wanted = json.loads((PACKAGE / "package.json").read_text())["devDependencies"]
    app = tmp_path / "app"
    shutil.copytree(CONSUMERS / "vite-react", app)
    for name in ("check.cts", "check.mts", "tsconfig.node16.json", "tsconfig.nodenext.json"):
        shutil.copy(CONSUMERS / "node" / name, app)
    pick = ["react", "react-dom", "typescript", "vite", "@types/react", "@types/react-dom"]
    (app / "package.json").write_text(
        json.dumps(
            {
                "name": "consumer",
                "private": True,
                "type": "module",
                "dependencies": {"@kpi-service/client": f"file:{tarball}", **{n: wanted[n] for n in pick}},
            }
        )
    )

    def run(*args: str) -> str:
        done = subprocess.run(args, cwd=app, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    run("npm", "install", "--prefer-offline", "--no-audit", "--no-fund", "--ignore-scripts")
    assert json.loads((app / "node_modules/typescript/package.json").read_text())["version"].startswith("5.")
    assert json.loads((app / "node_modules/react/package.json").read_text())["version"].startswith("19.")
    run("npx", "tsc", "-p", "tsconfig.json")
    run("npx", "vite", "build", "--logLevel", "warn")
    assert any(
        "createKpiStore" in f.read_text() or "kpi-service" in f.read_text() for f in (app / "dist/assets").glob("*.js")
    )
    run("npx", "tsc", "-p", "tsconfig.node16.json")
    printed = json.loads(run("node", "check.cjs"))
    assert printed["metrics"]["total_listings"] == 1 and printed["metrics"]["total_value"] == 10.01
    assert printed["key"] == ["kpi-service", "http://kpi.test/", "tz=UTC"]
    assert printed["auth"] == "auth" and printed["store"] == 0
    # The CommonJS build, not the ES one, answered the require.
    assert "/dist/cjs/" in run("node", "-p", "require.resolve('@kpi-service/client')")
    run("npx", "tsc", "-p", "tsconfig.nodenext.json")
    from_esm = json.loads(run("node", "check.mjs"))
    assert from_esm["metrics"]["total_listings"] == 0 and from_esm["key"] == printed["key"]


def test_api_client_suite_against_a_running_service(database_url: str, conn: psycopg.Connection) -> None:
    two_listings(conn)
    # One worker: development keeps its cache in-process, and a 304 needs the value cached.
    with gunicorn({"DATABASE_URL": database_url, "JWT_SECRET_KEY": SECRET, "GUNICORN_WORKERS": "1"}) as base:
        run = node(
            "npx",
            "vitest",
            "run",
            "test/service.test.ts",
            "--reporter=json",
            env={"KPI_SERVICE_URL": base, "KPI_TOKEN": token(), "CI": "1"},
        )
    report = json.loads(run.stdout[run.stdout.index("{") :])
    failures = [
        f"{t['fullName']}: {t['failureMessages']}" for r in report["testResults"] for t in r["assertionResults"]
    ]
    assert run.returncode == 0, "\n".join(failures) + run.stderr
    # Skipped tests would also exit 0: the suite skips itself without the service's URL.
    assert report["numPassedTests"] == report["numTotalTests"] >= 6, failures


def test_committed_types_are_those_of_the_served_document(client: FlaskClient, tmp_path: Path) -> None:
    document = tmp_path / "openapi.json"
    document.write_text(json.dumps(client.get("/api/openapi.json").get_json()))
    run = node("node", "scripts/gen-types.mjs", "--check", str(document), env={"KPI_PYTHON": sys.executable})
    assert run.returncode == 0, run.stderr + run.stdout


# The page's window (clients/js/example/main.tsx) and the rows behind it, which the page also
# gets as rows.json for its computeKpis fallback.
PAID = datetime(2026, 3, 10, tzinfo=UTC)
PAGE_WINDOW = Window.of_dates(date(2026, 3, 1), date(2026, 3, 31), "UTC")
PAGE_DATA = Dataset(
    buyers=[1, 2],
    listings=[
        Listing(1, Decimal("100.00"), "active", datetime(2026, 3, 1, tzinfo=UTC), score=Decimal("80.00")),
        Listing(2, Decimal("300.00"), "sold", datetime(2026, 3, 2, tzinfo=UTC), Decimal("250.00"), PAID),
        Listing(3, Decimal("50.00"), "active", datetime(2026, 1, 1, tzinfo=UTC)),  # aged at the window's end
    ],
    leads=[Lead(1, 1, datetime(2026, 3, 5, tzinfo=UTC)), Lead(2, 2, datetime(2026, 3, 6, tzinfo=UTC))],
    purchases=[Purchase(1, 2, 1, Decimal("290.00"), PAID, 1)],
)


@pytest.fixture(scope="module")
def vite_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """clients/js/example built with Vite, as an application builds its page, against the
    package's build in dist/ (what is shipped), not its sources."""
    built = node("npm", "run", "build")
    assert built.returncode == 0, built.stderr + built.stdout
    out = tmp_path_factory.mktemp("vite-page")
    run = node("npx", "vite", "build", "--config", "example/vite.config.ts", "--outDir", str(out), "--logLevel", "warn")
    assert run.returncode == 0, run.stderr + run.stdout
    return out


def with_page(app: Flask, page_dir: Path, rows: bytes) -> Callable:
    """The app, and the built page under /app/ (the service sends no CORS headers: an application
    serves its page from the service's origin, or puts both behind one proxy)."""
    types = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".json": "application/json"}

    def wsgi(environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        if not path.startswith("/app/"):
            return app(environ, start_response)
        name = path.removeprefix("/app/") or "index.html"
        file = (page_dir / name).resolve()
        if name == "rows.json":
            body = rows
        elif file.is_relative_to(page_dir) and file.is_file():
            body = file.read_bytes()
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not here"]
        start_response("200 OK", [("Content-Type", types.get(file.suffix, "application/octet-stream"))])
        return [body]

    return wsgi


def shown(page, source: str, listings: int) -> dict[str, Any]:
    """The page's figures once it shows `listings` listings from `source`."""
    try:
        page.wait_for_function(
            "([source, listings]) => document.getElementById('source')?.textContent === source"
            " && JSON.parse(document.getElementById('metrics').textContent || 'null')?.total_listings === listings",
            arg=[source, listings],
            timeout=20_000,
        )
    except PageTimeout as error:
        raise AssertionError(f"the page shows: {page.inner_text('body')!r}") from error
    return json.loads(page.inner_text("#metrics"))


@pytest.mark.slow
@pytest.mark.applying
@needs_chromium
def test_a_vite_built_react_page_shows_the_service_live_and_computes_locally_while_it_is_down(
    app: Flask, browser, conn: psycopg.Connection, database_url: str, vite_page: Path
) -> None:
    PAGE_DATA.insert(conn)
    now = datetime.now(UTC)
    expected = reference.kpis(PAGE_DATA, PAGE_WINDOW.start, PAGE_WINDOW.end, PAGE_WINDOW.as_of(now), 60)
    rows = json.dumps(make_vectors.rows_of(PAGE_DATA)).encode()
    with serving(app, with_page(app, vite_page, rows)) as base:
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{base}/app/#{token()}")
        assert shown(page, "service", 2) == expected
        assert page.inner_text("#status") == "ready"
        assert page.inner_text("#transport") in ("websocket", "sse")
        # A committed write: the applier announces it and the service pushes the new value.
        conn.execute("INSERT INTO listings (id, price, status, listed_at) VALUES (4, 1000, 'active', '2026-03-15Z')")
        assert shown(page, "service", 3)["total_value"] == expected["total_value"] + 1000
    # The service stopped: the hook shows computeKpis over the page's rows (which lack the new
    # listing), and they are the reference's numbers.
    assert shown(page, "local", 2) == expected
    assert page.inner_text("#status") == "ready"
    restarted = create_app(make_settings(database_url, apply_interval=APPLYING))
    try:
        with serving(restarted, with_page(restarted, vite_page, rows), port=urlsplit(base).port):
            shown(page, "service", 3)
            assert page.inner_text("#status") == "ready"
            assert errors == []
            page.close()
    finally:
        restarted.extensions["kpi"].close()
