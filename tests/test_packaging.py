"""The wheel carries its SQL and the dashboard: installed outside the checkout, it still runs the KPI
query and has the page to serve."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

PROBE = """
import sys
from datetime import datetime, timezone
from kpi_service.config import Settings
from kpi_service.db.connections import Database
from kpi_service.db.sql import sql_text
import kpi_service
assert "site-packages" in kpi_service.__file__, kpi_service.__file__
assert "CREATE TABLE IF NOT EXISTS listings" in sql_text("schema/schema.sql")
from pathlib import Path
static = Path(kpi_service.__file__).parent / "static"
shipped = {"index.html", "dashboard.js", "kpi-client.js", "dashboard.css"}
assert shipped <= {p.name for p in static.iterdir()}, list(static.iterdir())
# installed without fakeredis: only the demo's and the tests' extras have it
settings = Settings.from_env({}, jwt_secret_key="x" * 32, database_url=sys.argv[1], redis_url="redis://127.0.0.1")
db = Database(settings)
rows, *_ = db.kpi_rows([(None, None, datetime.now(timezone.utc))], 60)
db.close()
print(rows[0]["total_listings"])
"""


@pytest.mark.slow
def test_wheel_installed_elsewhere_finds_its_sql(tmp_path: Path, database_url: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path / "dist"), str(ROOT)],
        check=True,
    )
    (wheel,) = (tmp_path / "dist").glob("kpi_service-*.whl")
    venv.create(tmp_path / "env", with_pip=True)
    python = tmp_path / "env" / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--quiet", str(wheel)], check=True)
    result = subprocess.run(
        [python, "-c", PROBE, database_url], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().isdigit()
