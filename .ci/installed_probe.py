"""Run by `make lock-check` with the package installed, not editable, in a fresh venv, from a
directory outside the checkout: the installed package finds every SQL file and the dashboard's
files it ships (setup.cfg's package_data), and loads its named statements."""

import sys
from importlib import resources
from pathlib import Path

import kpi_service
from kpi_service.db.sql import queries, sql_text

assert "site-packages" in kpi_service.__file__, kpi_service.__file__
shipped = {
    p.relative_to(Path(__file__).parents[1] / "sql").as_posix()
    for p in (Path(__file__).parents[1] / "sql").rglob("*.sql")
}
for name in sorted(shipped):
    assert sql_text(name).strip(), name
assert hasattr(queries, "kpi_windows") and hasattr(queries, "kpi_windows_raw")
static = resources.files("kpi_service") / "static"
wanted = {"index.html", "dashboard.js", "kpi-client.js", "dashboard.css"}
assert wanted <= {entry.name for entry in static.iterdir()}, list(static.iterdir())
print(f"installed-probe: {len(shipped)} SQL files and the dashboard's {len(wanted)} files found in {sys.prefix}")
