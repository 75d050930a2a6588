"""Calendar dates in a time zone turned into the instants the KPI query works with."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

INTERVALS = ("day", "week", "month")


def midnight(day: date, zone: str) -> datetime:
    """00:00 of `day` in `zone`, as a UTC instant.

    Where midnight does not exist (a DST gap) it is read with the offset before the change,
    which lands on the first instant of the day; where it happens twice, the first is taken.
    """
    return datetime.combine(day, time(0), tzinfo=ZoneInfo(zone)).astimezone(UTC)


@dataclass(frozen=True)
class Window:
    """[start, end) in UTC; None is an open side."""

    start: datetime | None
    end: datetime | None

    @classmethod
    def of_dates(cls, first: date | None, last: date | None, zone: str) -> Window:
        """The window of calendar days first..last (both inclusive) in `zone`."""
        return cls(
            start=None if first is None else midnight(first, zone),
            end=None if last is None else midnight(last + timedelta(days=1), zone),
        )

    def as_of(self, now: datetime) -> datetime:
        """T = min(end, now); now when the window has no end."""
        return now if self.end is None else min(self.end, now)


def buckets(first: date, last: date, interval: str) -> list[tuple[date, date]]:
    """Calendar buckets covering first..last, the first and last clipped to the range.

    Weeks are ISO weeks (Monday first). Each bucket is (first day, last day), inclusive.
    """
    result = []
    start = first
    while start <= last:
        end = min(_bucket_last_day(start, interval), last)
        result.append((start, end))
        start = end + timedelta(days=1)
    return result


def bucket_count(first: date, last: date, interval: str) -> int:
    """len(buckets(...)) without building them, so a huge range is refused cheaply."""
    if interval == "day":
        return (last - first).days + 1
    if interval == "week":
        return (last - timedelta(days=last.weekday()) - (first - timedelta(days=first.weekday()))).days // 7 + 1
    return (last.year - first.year) * 12 + last.month - first.month + 1


def _bucket_last_day(day: date, interval: str) -> date:
    if interval == "day":
        return day
    if interval == "week":
        return day + timedelta(days=6 - day.weekday())
    next_month = date(day.year + day.month // 12, day.month % 12 + 1, 1)
    return next_month - timedelta(days=1)


COMPARISONS = ("previous_period", "previous_year")


def compared_days(first: date, last: date, compare: str) -> tuple[date, date]:
    """The days a window first..last is compared with (docs/kpis.md, "Comparison"):

    - previous_year: the same dates a year earlier, 29 February becoming 28 February;
    - previous_period: for a period-to-date window (from the 1st of a month to a day of that
      month; from 1 January to a later month of that year) the same days of the previous month
      (year), the last clipped to that month's end; otherwise as many days, just before `first`.
    """
    if compare == "previous_year":
        return _year_before(first), _year_before(last)
    if first.day == 1 and (first.year, first.month) == (last.year, last.month):
        month_before = first - timedelta(days=1)
        # month_before is that month's last day: a longer month's 31st becomes it.
        return month_before.replace(day=1), month_before.replace(day=min(last.day, month_before.day))
    if (first.month, first.day) == (1, 1) and first.year == last.year:
        return _year_before(first), _year_before(last)
    length = last - first + timedelta(days=1)
    return first - length, first - timedelta(days=1)


def _year_before(day: date) -> date:
    if (day.month, day.day) == (2, 29):
        return date(day.year - 1, 2, 28)
    return day.replace(year=day.year - 1)
