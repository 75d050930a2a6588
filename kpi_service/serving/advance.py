"""A window's value brought up to a later batch of the summaries without computing it again: the
batch's deltas added to the sums the value was divided from (docs/design.md, "Freshness").

A value computed by sql/runtime/kpi.sql keeps, beside its KPIs, the sums they divide (one `Sums`
per span: the window, or each bucket of a history) and the number of the summaries' last batch
in its statement's snapshot (kpi_announce, sql/schema/summary.sql). Each batch announces what it
added to the summaries: per 15-minute bucket, the additive sums; the buyers' bucket rows it
changed; the listing images whose stock it changed. Adding them is exact, in any order, because
every KPI of a span whose edges are 15-minute edges is a function of those rows:

- the additive sums: the buckets inside [lo, hi);
- active_buyers: a buyer's bucket row counts where it is inside the span and the buyer's
  previous bucket is not (before lo, or none): one count per buyer with a bucket inside;
- aged_inventory at a fixed instant T (a span that ended: T is its end): the images listed
  before T less aged_days and not sold by T. A span that holds the present (T is now) takes
  it from a statement instead, one for every such span (`aged` is window-independent).

Pure functions; serving/service.py decides when they apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

# The sums of a span, in the order of kpi_metrics_of's arguments (sql/runtime/kpi.sql).
SUMS = (
    "listings",
    "price_sum",
    "scored",
    "score_sum",
    "leads",
    "converted",
    "costed",
    "profit_sum",
    "led",
    "lead_seconds",
    "buyers",
    "aged",
)
# Where each comes from in a row of kpi_windows (the KPIs that are their own sum, and the rest).
_ROW_NAMES = {"listings": "total_listings", "buyers": "active_buyers", "aged": "aged_inventory"}
# The additive ones, in the order of a bucket's deltas (after its instant).
ADDITIVE = SUMS[:10]
MICROSECONDS_PER_DAY = 86_400_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_QUARTER_US = 900_000_000

Sums = tuple[Decimal, ...]


@dataclass(frozen=True)
class Span:
    """[lo, hi) in microseconds since the epoch (None: open), and its aged_days."""

    lo: int | None
    hi: int | None
    aged_days: int

    @property
    def aligned(self) -> bool:
        """Both edges 15-minute edges: the summaries hold its sums (kpi_windows' aligned)."""
        return all(edge is None or edge % _QUARTER_US == 0 for edge in (self.lo, self.hi))

    def holds(self, at: float) -> bool:
        return (self.lo is None or at >= self.lo) and (self.hi is None or at < self.hi)


def microseconds(value: Any) -> float:
    """An instant of the deltas (kpi_instant_us): whole microseconds, or an infinite one."""
    if isinstance(value, str):
        return float("inf") if value == "infinity" else float("-inf")
    return int(value)


def sums_of(row: dict[str, Any]) -> Sums | None:
    """The sums of a kpi_windows row; None for a row read from the rows (not aligned)."""
    if not row.get("aligned"):
        return None
    return tuple(Decimal(row[_ROW_NAMES.get(name, name)]) for name in SUMS)


def metrics_arguments(all_sums: list[Sums]) -> dict[str, list[Any]]:
    """kpi_metrics_of's arguments for these spans' sums."""
    names = ("listings", "price_sums", "scored", "score_sums", "leads", "converted", "costed", "profit_sums")
    names += ("led", "lead_seconds", "buyers", "aged")
    return {
        name: [s[i] if name.endswith("sums") or name == "lead_seconds" else int(s[i]) for s in all_sums]
        for i, name in enumerate(names)
    }


def advanced(sums: Sums, span: Span, as_of: int | None, batches: list[dict[str, Any]]) -> Sums:
    """`sums` with the deltas of `batches` added. `as_of`: the span's fixed instant T for
    aged_inventory, None when it holds the present (its aged count is replaced by the caller)."""
    values = list(sums)
    aged_before = None if as_of is None else as_of - span.aged_days * MICROSECONDS_PER_DAY
    for batch in batches:
        for bucket, *deltas in batch["sums"]:
            if span.holds(microseconds(bucket)):
                for i, delta in enumerate(deltas):
                    values[i] += Decimal(delta)
        for bucket, prev, n in batch["pairs"]:
            # The buyer's first bucket inside the span: the previous one is not inside it.
            first = prev is None or (span.lo is not None and microseconds(prev) < span.lo)
            if first and span.holds(microseconds(bucket)):
                values[10] += n
        if as_of is not None:
            for listed, sold, n in batch["stock"]:
                if microseconds(listed) < aged_before and (sold is None or microseconds(sold) > as_of):
                    values[11] += n
    return tuple(values)


def microseconds_of(at: datetime | None) -> int | None:
    """An instant as the spans hold it (exact: no float on the way)."""
    return None if at is None else (at - EPOCH) // timedelta(microseconds=1)


def state_of(parts: list[dict[str, Any]], as_ofs: list[datetime], now: datetime) -> dict[str, Any] | None:
    """What a value computed by kpi_windows keeps for later batches' deltas (Entry.state): the
    summaries' batch in its snapshot, each span's sums, each span's as-of instant; None when it
    was read from the rows alone (raw mode)."""
    if not parts or parts[0].get("batch") is None:
        return None
    return {
        "batch": parts[0]["batch"],
        "sums": [None if (sums := sums_of(row)) is None else encode(sums) for row in parts],
        "as_ofs": [microseconds_of(at) for at in as_ofs],
        "verified": now.timestamp(),
    }


def encode(sums: Sums) -> list[str]:
    return [str(value) for value in sums]


def decode(stored: list[str]) -> Sums:
    return tuple(Decimal(value) for value in stored)
