"""CSV of a KPI body (GET /api/kpi and /api/kpi/history with `Accept: text/csv` or `format=csv`):
RFC 4180 as Python's csv module writes it (CRLF line ends, fields quoted where they must be), a
header row, numbers as plain decimals. Built from the same served body as the JSON, so the two
never disagree (docs/api.md, "CSV export")."""

from __future__ import annotations

import csv
import io
import re
from decimal import Decimal
from typing import Any

from kpi_service.serving.responses import BETTER

# The ten KPIs in the order docs/kpis.md defines them.
COLUMNS = tuple(BETTER)
FORMATS = ("json", "csv")
CSV_TYPE = "text/csv"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def plain(value: Any) -> str:
    """A number as a plain decimal (never 1e+16); null as an empty field."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    # repr is the shortest text that reads back as the same float, which Decimal keeps exactly.
    return format(Decimal(repr(value)), "f")


def _rows(header: list[str], rows: list[list[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)  # the "excel" dialect: RFC 4180's commas, quotes and CRLF
    writer.writerow(header)
    writer.writerows([plain(value) for value in row] for row in rows)
    return out.getvalue()


def kpi_csv(body: dict[str, Any]) -> str:
    """One row: the window, its ten KPIs, and with a comparison the compared window, its KPIs
    and each KPI's change (`<kpi>_compared`, `<kpi>_change`, `<kpi>_change_percent`)."""
    window = body["meta"]["window"]
    header = ["from", "to", "tz", "aged_days", *COLUMNS]
    row = [window["from"], window["to"], window["tz"], window["aged_days"], *(body["metrics"][k] for k in COLUMNS)]
    comparison = body.get("comparison")
    if comparison is not None:
        header += ["compare", "compared_from", "compared_to"]
        row += [comparison["compare"], comparison["from"], comparison["to"]]
        for name in COLUMNS:
            header += [f"{name}_compared", f"{name}_change", f"{name}_change_percent"]
            change = comparison["change"][name]
            row += [comparison["metrics"][name], change["absolute"], change["percent"]]
    return _rows(header, [row])


def history_csv(body: dict[str, Any]) -> str:
    """A row per bucket: its first and last local day, its ten KPIs."""
    rows = [[bucket["start"], bucket["end"], *(bucket["metrics"][k] for k in COLUMNS)] for bucket in body["series"]]
    return _rows(["start", "end", *COLUMNS], rows)


def filename(kind: str, window: dict[str, Any]) -> str:
    """The download's name, naming the window: kpi_2026-12-01_2026-12-07_UTC.csv,
    kpi_history_2026-01-01_2026-12-31_day_Europe-Berlin.csv; `open` for an open side."""
    parts = ["kpi"] + (["history"] if kind == "history" else [])
    parts += [window["from"] or "open", window["to"] or "open"]
    parts += [window[name] for name in ("interval", "compare") if window.get(name)]
    parts.append(window["tz"])
    return _UNSAFE.sub("-", "_".join(parts)) + ".csv"
