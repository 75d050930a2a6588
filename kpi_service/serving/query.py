"""A request's window: the query parameters parsed and validated into a KpiQuery."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validate, validates_schema

from kpi_service.config import canonical_zone
from kpi_service.serving.windows import COMPARISONS, INTERVALS, Window, bucket_count, buckets, compared_days

if TYPE_CHECKING:
    from werkzeug.datastructures import MultiDict

# Dates outside this range are refused rather than risking overflow at either end of the
# calendar once converted to UTC instants.
MIN_DATE = date(1900, 1, 1)
MAX_DATE = date(9998, 12, 31)
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# The same rule for the OpenAPI document: YYYY-MM-DD with a year from 1900 to 9998.
DATE_PATTERN = r"^(19[0-9]{2}|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-[0-9]{2}-[0-9]{2}$"


def repeated(args: MultiDict[str, str]) -> dict[str, list[str]]:
    """The parameters given more than once, as a ValidationError's messages: a window has one
    value of each, and which of two would win is not for the service to guess."""
    return {name: ["Given more than once."] for name in args if len(args.getlist(name)) > 1}


class IsoDate(fields.Date):
    """Exactly YYYY-MM-DD: date.fromisoformat alone would also take 20261101 or 2026-W48-1."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["metadata"] = {**kwargs.get("metadata", {}), "pattern": DATE_PATTERN}
        super().__init__(**kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> date:
        if not isinstance(value, str) or not _ISO_DATE.fullmatch(value):
            raise ValidationError("Not a valid date: expected YYYY-MM-DD.")
        day = super()._deserialize(value, attr, data, **kwargs)
        if not MIN_DATE <= day <= MAX_DATE:
            raise ValidationError(f"Must be between {MIN_DATE} and {MAX_DATE}.")
        return day


class TimeZone(fields.String):
    """An IANA zone name in any letter case, loaded as its canonical spelling. The OpenAPI
    document lists the canonical names (kpi_service.web.openapi)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        name = canonical_zone(super()._deserialize(value, attr, data, **kwargs))
        if name is None:
            raise ValidationError("Unknown time zone: expected an IANA name such as Europe/Berlin.")
        return name


@dataclass(frozen=True)
class KpiQuery:
    """A validated, normalized request: equal queries mean the same window and cache key."""

    date_from: date | None
    date_to: date | None
    tz: str
    aged_days: int
    interval: str | None = None
    compare: str | None = None

    @property
    def window(self) -> Window:
        return Window.of_dates(self.date_from, self.date_to, self.tz)

    @property
    def compared_dates(self) -> tuple[date, date] | None:
        """The compared window's days (windows.compared_days); None without `compare`."""
        if self.compare is None:
            return None
        assert self.date_from is not None and self.date_to is not None, "the schema refuses an open window"
        return compared_days(self.date_from, self.date_to, self.compare)

    @property
    def windows(self) -> list[Window]:
        """Every window the value's numbers are computed over: the window, then the compared one."""
        compared = self.compared_dates
        if compared is None:
            return [self.window]
        return [self.window, Window.of_dates(*compared, self.tz)]

    def describe(self) -> dict[str, Any]:
        """The `meta.window` of a response."""
        described: dict[str, Any] = {
            "from": None if self.date_from is None else self.date_from.isoformat(),
            "to": None if self.date_to is None else self.date_to.isoformat(),
            "tz": self.tz,
            "aged_days": self.aged_days,
        }
        if self.interval is not None:
            described["interval"] = self.interval
        if self.compare is not None:
            described["compare"] = self.compare
        return described


def windows_of(kind: str, query: KpiQuery) -> list[tuple[Window, tuple[date, date] | None]]:
    """The spans a value of `kind` ("kpi" or "history") is computed over, each with its days for a
    history's bucket: the window (then the one it is compared with, if any), or each bucket."""
    if kind == "kpi":
        return [(window, None) for window in query.windows]
    assert query.date_from is not None and query.date_to is not None and query.interval is not None
    days = buckets(query.date_from, query.date_to, query.interval)
    return [(Window.of_dates(first, last, query.tz), (first, last)) for first, last in days]


class WindowQuerySchema(Schema):
    """The window's parameters, shared by GET /api/kpi and its history. Defaults for tz and
    aged_days come from the settings."""

    class Meta:
        unknown = RAISE

    date_from = IsoDate(
        data_key="from",
        load_default=None,
        metadata={"description": "First day (inclusive) in `tz`, 1900-01-01 to 9998-12-31; open if absent."},
    )
    date_to = IsoDate(
        data_key="to",
        load_default=None,
        metadata={"description": "Last day (inclusive) in `tz`, not before `from`, up to 9998-12-31; open if absent."},
    )
    tz = TimeZone(load_default=None, metadata={"description": "IANA time zone of the days, any letter case."})
    aged_days = fields.Integer(
        load_default=None,
        validate=validate.Range(min=1, max=3650),
        metadata={"description": "Age in days from which a listing in stock counts as aged inventory."},
    )

    def __init__(self, *, default_tz: str = "UTC", default_aged_days: int = 60, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.default_tz = default_tz
        self.default_aged_days = default_aged_days

    @validates_schema
    def _ordered(self, data: dict[str, Any], **kwargs: Any) -> None:
        first, last = data.get("date_from"), data.get("date_to")
        if first is not None and last is not None and first > last:
            raise ValidationError("Must not be before 'from'.", "to")

    @post_load
    def _normalize(self, data: dict[str, Any], **kwargs: Any) -> KpiQuery:
        return KpiQuery(
            date_from=data["date_from"],
            date_to=data["date_to"],
            tz=data["tz"] or self.default_tz,
            aged_days=data["aged_days"] or self.default_aged_days,
            interval=data.get("interval"),
            compare=data.get("compare"),
        )


class KpiQuerySchema(WindowQuerySchema):
    """Parameters of GET /api/kpi (and of its stream): a window, and what it is compared with."""

    compare = fields.String(
        load_default=None,
        validate=validate.OneOf(COMPARISONS),
        metadata={
            "description": "Also compute the window this one is compared with, in the same statement: "
            "`previous_period` (as many days just before; a month or year to date: the same days of the "
            "previous month or year) or `previous_year` (the same dates a year earlier, 29 February as "
            '28 February). Needs both `from` and `to`. Rules: docs/kpis.md, "Comparison".'
        },
    )

    @validates_schema
    def _comparable(self, data: dict[str, Any], **kwargs: Any) -> None:
        first, last, compare = data.get("date_from"), data.get("date_to"), data.get("compare")
        if compare is None:
            return
        if first is None or last is None:
            raise ValidationError("An open window has no previous period: give both 'from' and 'to'.", "compare")
        if first > last:
            return  # _ordered says so
        if compared_days(first, last, compare)[0] < MIN_DATE:
            raise ValidationError(f"The compared window would start before {MIN_DATE}.", "compare")


class HistoryQuerySchema(WindowQuerySchema):
    """Parameters of GET /api/kpi/history: a bounded range cut into calendar buckets."""

    date_from = IsoDate(
        data_key="from", required=True, metadata={"description": "First day (inclusive) in `tz`, from 1900-01-01."}
    )
    date_to = IsoDate(
        data_key="to",
        required=True,
        metadata={"description": "Last day (inclusive) in `tz`, not before `from`, up to 9998-12-31."},
    )
    interval = fields.String(
        required=True,
        validate=validate.OneOf(INTERVALS),
        metadata={"description": "Bucket size: calendar days, ISO weeks (Monday first) or calendar months."},
    )

    def __init__(self, *, max_buckets: int = 400, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_buckets = max_buckets

    @validates_schema
    def _bounded(self, data: dict[str, Any], **kwargs: Any) -> None:
        first, last, interval = data.get("date_from"), data.get("date_to"), data.get("interval")
        if first is None or last is None or interval is None or first > last:
            return
        count = bucket_count(first, last, interval)
        if count > self.max_buckets:
            raise ValidationError(
                f"{count} {interval} buckets requested; at most {self.max_buckets} are allowed.", "interval"
            )
