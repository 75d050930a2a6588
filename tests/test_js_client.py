"""The JS package in clients/js against the real service: its API client's suite run against a
gunicorn server, and its committed OpenAPI types against the document the service serves.
`make test` runs `npm ci` there first (and the package's own suite after pytest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
from flask.testing import FlaskClient

from tests.helpers import SECRET, token, two_listings
from tests.servers import gunicorn

PACKAGE = Path(__file__).resolve().parent.parent / "clients" / "js"


def node(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert (PACKAGE / "node_modules").is_dir(), "clients/js has no node_modules: `make test` runs npm ci"
    return subprocess.run(
        args, cwd=PACKAGE, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300
    )


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
