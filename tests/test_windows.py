"""Calendar buckets and the instants of a window."""

from __future__ import annotations

from datetime import date, timedelta
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kpi_service.config import canonical_zone
from kpi_service.serving.windows import INTERVALS, Window, bucket_count, buckets


@pytest.mark.parametrize(
    ("first", "last", "interval", "expected"),
    [
        # ISO weeks start on Monday; the first and last bucket are clipped to the range.
        (date(2026, 11, 25), date(2026, 12, 8), "week",
         [(date(2026, 11, 25), date(2026, 11, 29)), (date(2026, 11, 30), date(2026, 12, 6)),
          (date(2026, 12, 7), date(2026, 12, 8))]),
        # A week that spans the turn of the year is one bucket.
        (date(2026, 12, 28), date(2027, 1, 3), "week", [(date(2026, 12, 28), date(2027, 1, 3))]),
        (date(2026, 1, 30), date(2026, 3, 2), "month",
         [(date(2026, 1, 30), date(2026, 1, 31)), (date(2026, 2, 1), date(2026, 2, 28)),
          (date(2026, 3, 1), date(2026, 3, 2))]),
        (date(2028, 2, 1), date(2028, 3, 31), "month",
         [(date(2028, 2, 1), date(2028, 2, 29)), (date(2028, 3, 1), date(2028, 3, 31))]),
        (date(2026, 12, 1), date(2027, 1, 31), "month",
         [(date(2026, 12, 1), date(2026, 12, 31)), (date(2027, 1, 1), date(2027, 1, 31))]),
        (date(2028, 2, 28), date(2028, 3, 1), "day",
         [(date(2028, 2, 28), date(2028, 2, 28)), (date(2028, 2, 29), date(2028, 2, 29)),
          (date(2028, 3, 1), date(2028, 3, 1))]),
        (date(2026, 5, 5), date(2026, 5, 5), "month", [(date(2026, 5, 5), date(2026, 5, 5))]),
    ],
)  # fmt: skip
def test_buckets(first: date, last: date, interval: str, expected: list[tuple[date, date]]) -> None:
    assert buckets(first, last, interval) == expected


@given(
    first=st.dates(date(1990, 1, 1), date(2100, 1, 1)),
    length=st.integers(0, 800),
    interval=st.sampled_from(INTERVALS),
)
def test_buckets_tile_the_range(first: date, length: int, interval: str) -> None:
    last = first + timedelta(days=length)
    result = buckets(first, last, interval)
    assert len(result) == bucket_count(first, last, interval)
    assert result[0][0] == first and result[-1][1] == last
    for (_, end), (start, _) in pairwise(result):
        assert start == end + timedelta(days=1)
    if interval == "week":
        assert all(start.weekday() == 0 for start, _ in result[1:])
        assert all(end.weekday() == 6 for _, end in result[:-1])
    if interval == "month":
        assert all(start.day == 1 for start, _ in result[1:])
        assert all((end + timedelta(days=1)).day == 1 for _, end in result[:-1])


@pytest.mark.parametrize(
    ("zone", "day", "hours"),
    [
        ("America/New_York", date(2026, 3, 8), 23),
        ("America/New_York", date(2026, 11, 1), 25),
        ("Europe/Berlin", date(2026, 3, 29), 23),
        ("Europe/Berlin", date(2026, 10, 25), 25),
        ("Asia/Kolkata", date(2026, 3, 29), 24),
        ("UTC", date(2028, 2, 29), 24),
    ],
)
def test_day_length_follows_dst(zone: str, day: date, hours: int) -> None:
    window = Window.of_dates(day, day, zone)
    assert window.end - window.start == timedelta(hours=hours)


def test_midnight_in_a_dst_gap_starts_the_day_at_its_first_instant() -> None:
    # America/Santiago skipped 00:00-01:00 on 2024-09-08: that day begins at 01:00 local, 04:00 UTC.
    window = Window.of_dates(date(2024, 9, 8), date(2024, 9, 8), "America/Santiago")
    assert window.start.isoformat() == "2024-09-08T04:00:00+00:00"


def test_zone_names_are_case_insensitive() -> None:
    assert canonical_zone("america/new_york") == "America/New_York"
    assert canonical_zone("UTC") == "UTC"
    assert canonical_zone("Nowhere/Land") is None
