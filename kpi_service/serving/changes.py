"""Which streamed windows a batch of the applier's changes (kpi:v2:<scope>:changed) can change."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kpi_service.serving.query import KpiQuery
from kpi_service.serving.windows import Window


def affected(query: KpiQuery, changed: dict[str, Any], now: datetime) -> bool:
    """Whether a batch of changes (serving/keys.py, kpi:v2:<scope>:changed) can change the value's numbers:
    those of its window or of the window it is compared with (either changes the comparison)."""
    if changed.get("all"):
        return True
    return any(_affects(window, query.aged_days, changed, now) for window in query.windows)


def _affects(window: Window, aged_days: int, changed: dict[str, Any], now: datetime) -> bool:
    """A changed bucket inside [start, end), or a listing whose stock changed and that
    aged_inventory at T = min(end, now) counts once older than aged_days."""
    first, last, stock = (_instant(changed.get(name)) for name in ("from", "to", "stock_from"))
    inside = (
        first is not None
        and last is not None
        and (window.end is None or first < window.end)
        and (window.start is None or last >= window.start)
    )
    return inside or (stock is not None and (window.as_of(now) - stock).total_seconds() > aged_days * 86400)


def _instant(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
