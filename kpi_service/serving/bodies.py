"""What several parts read or write in a stored KPI body, in one place: its flags, and the
spelling of its instants (`computed_at`, which is also a stream's event id)."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def with_flags(body: dict[str, Any], *, cached: bool, stale: bool | None = None) -> dict[str, Any]:
    """The body with meta.cached (and meta.stale, when given) set."""
    flags: dict[str, bool] = {"cached": cached} if stale is None else {"cached": cached, "stale": stale}
    return {**body, "meta": {**body["meta"], **flags}}


def format_instant(at: datetime) -> str:
    """An instant as the bodies spell it: ISO 8601 in UTC, whole milliseconds, Z. Fixed width,
    so such strings order as their instants do."""
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_instant(text: str) -> datetime | None:
    """An instant in ISO 8601 with its offset (Z included); None for anything else."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None
