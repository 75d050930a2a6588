"""What a window's request gets back: the ten KPIs validated, the body's flags, and Served, a body
with how it was obtained (for headers, logs, metrics)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from functools import cached_property
from typing import TYPE_CHECKING, Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from kpi_service.serving.bodies import parse_instant, with_flags
from kpi_service.serving.cache import Entry
from kpi_service.serving.errors import InvalidKpis

if TYPE_CHECKING:
    from datetime import date

    from kpi_service.serving.query import KpiQuery
    from kpi_service.serving.windows import Window

log = logging.getLogger(__name__)

# Whether a higher or a lower number is better, per KPI: defined in docs/kpis.md ("better"
# column, tests/test_docs.py compares), stated in the OpenAPI document (x-better), and what the
# dashboard colours a change by.
BETTER = {
    "total_listings": "higher",
    "total_value": "higher",
    "average_price": "higher",
    "scoring_rate": "higher",
    "average_score": "higher",
    "aged_inventory": "lower",
    "average_profit_per_unit": "higher",
    "lead_to_purchase_time": "lower",
    "conversion_rate": "higher",
    "active_buyers": "higher",
}
_CENT = Decimal("0.01")


def _described(summary: str, better: str) -> dict[str, str]:
    return {
        "description": f"{summary} {better.capitalize()} is better. Exact definition: docs/kpis.md.",
        "x-better": better,
    }


def _count(summary: str, better: str = "higher") -> fields.Integer:
    return fields.Integer(
        required=True, strict=True, validate=validate.Range(min=0), metadata=_described(summary, better)
    )


def _number(summary: str, better: str = "higher", **bounds: float) -> fields.Float:
    return fields.Float(
        required=True,
        allow_nan=False,
        validate=validate.Range(**bounds) if bounds else None,
        metadata=_described(summary, better),
    )


class KpiValuesSchema(Schema):
    """The ten KPIs (defined in docs/kpis.md). Loading a database row validates it; a row that
    fails is never served."""

    class Meta:
        unknown = RAISE

    average_profit_per_unit = _number("Mean sale price minus cost, sales of the window.")
    lead_to_purchase_time = _number("Mean days from lead to sale, sales of the window.", "lower")
    aged_inventory = _count("Listings in stock at the window's end (or now) older than aged_days.", "lower")
    total_listings = _count("Listings listed in the window.")
    active_buyers = _count("Distinct buyers with a lead or a purchase in the window.")
    conversion_rate = _number("Percent of the window's leads that became a sale.", min=0, max=100)
    average_price = _number("Mean asking price of the window's listings.", min=0)
    total_value = _number("Sum of the asking prices of the window's listings.", min=0)
    scoring_rate = _number("Percent of the window's listings that have a score.", min=0, max=100)
    average_score = _number("Mean score of the window's scored listings.", min=0, max=100)


_kpi_values = KpiValuesSchema()


@dataclass(frozen=True)
class Served:
    """A response body and how it was obtained, for headers, logs and metrics."""

    body: dict[str, Any]
    outcome: str  # "hit", "refresh" (previous value while refreshing), "miss" or "stale"
    fresh_until: float  # unix time until which the body is fresh
    db_ms: float | None = None  # duration of the SQL when it ran for this request

    @cached_property
    def payload(self) -> bytes:
        """The serialized body: computed once per Served, which hits share in-process."""
        return json.dumps(self.body, separators=(",", ":")).encode()

    @cached_property
    def etag(self) -> str:
        """A weak ETag's value: the answer that computed a value says `cached: false` and the hits
        after it `true`, the same value otherwise, so the flag is left out and a poller that got
        the computing answer gets its 304 from the first hit on (If-None-Match compares weakly)."""
        meta = {name: value for name, value in self.body["meta"].items() if name != "cached"}
        identity = json.dumps({**self.body, "meta": meta}, separators=(",", ":")).encode()
        return hashlib.blake2b(identity, digest_size=16).hexdigest()


def hit(entry: Entry) -> Served:
    return Served(with_flags(entry.body, cached=True, stale=False), "hit", entry.fresh_until)


def computed_at(entry: Entry) -> float:
    """When an entry's SQL ran, as unix time."""
    moment = parse_instant(entry.body["meta"]["computed_at"])
    assert moment is not None, "a stored body's computed_at is written by format_instant"
    return moment.timestamp()


def validated(row: dict[str, Any]) -> dict[str, Any]:
    try:
        return _kpi_values.load(row)
    except ValidationError as error:
        # A row outside the definitions (docs/kpis.md) means a bug or corrupt data: never pass it on.
        log.error("KPI row failed validation: %s", error.messages)
        raise InvalidKpis from None


def kpi_data(query: KpiQuery, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The data of GET /api/kpi's body from the statement's rows, one per window of
    query.windows: `metrics`, and with `compare` the `comparison` (docs/kpis.md, "Comparison")."""
    data: dict[str, Any] = {"metrics": validated(rows[0])}
    compared = query.compared_dates
    if compared is not None:
        data["comparison"] = {
            "compare": query.compare,
            "from": compared[0].isoformat(),
            "to": compared[1].isoformat(),
            "metrics": validated(rows[1]),
            "change": changes(rows[0], rows[1]),
        }
    return data


def data_of(
    kind: str, query: KpiQuery, spans: list[tuple[Window, tuple[date, date] | None]], rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """The data of a body of `kind` from the statement's rows, one per span (query.windows_of):
    kpi_data's, or a history's `series`."""
    if kind == "kpi":
        return kpi_data(query, rows)
    series = []
    for (_, days), row in zip(spans, rows, strict=True):
        assert days is not None
        series.append({"start": days[0].isoformat(), "end": days[1].isoformat(), "metrics": validated(row)})
    return {"series": series}


def changes(current: dict[str, Any], base: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per KPI, the window's number less the compared window's, and that difference in percent of
    the compared number's size (so that its sign says up or down when the base is negative),
    rounded to 2 decimals halves away from zero; percent null where the base is 0. From the
    rows' exact decimals, not from floats."""
    result = {}
    for name, field in _kpi_values.fields.items():
        now, then = Decimal(str(current[name])), Decimal(str(base[name]))
        absolute = now - then
        percent = None if then == 0 else (absolute * 100 / abs(then)).quantize(_CENT, rounding=ROUND_HALF_UP)
        result[name] = {
            # A count's change is a whole number, whatever type the row gave it.
            "absolute": int(absolute) if isinstance(field, fields.Integer) else float(absolute),
            "percent": None if percent is None else float(percent),
        }
    return result
