"""The names of the service's Redis keys and channels. Their layout, version 1, is read by other
services and documented once, in docs/clients.md, "Redis key layout, version 1": change a format
only under a new prefix, and that table with it.

A value and its announcement are written by one script, so a reader never sees one without the
other, and only if the stored value was not computed later (cache.py, Cache.put).
"""

from __future__ import annotations

import functools

from kpi_service.serving.query import KpiQuery

KEY_PREFIX = "kpi:v1"
ANNOUNCE_CHANNEL = f"{KEY_PREFIX}:announce"
CHANGES_CHANNEL = f"{KEY_PREFIX}:changed"
CHANGE_SEQ = f"{KEY_PREFIX}:change_seq"
CHANGE_POSITION = f"{KEY_PREFIX}:change_position"
CAUGHT_UP = f"{KEY_PREFIX}:caught_up_at"
APPLIER_TURN = f"{KEY_PREFIX}:applier_turn"


@functools.lru_cache(maxsize=4096)
def cache_key(kind: str, query: KpiQuery) -> str:
    parts = [
        KEY_PREFIX,
        kind,
        query.date_from.isoformat() if query.date_from else "-",
        query.date_to.isoformat() if query.date_to else "-",
        query.tz,
        str(query.aged_days),
    ]
    if query.interval:
        parts.append(query.interval)
    return ":".join(parts)


def lock_key(key: str) -> str:
    return key.replace(f"{KEY_PREFIX}:", f"{KEY_PREFIX}:lock:", 1)
