"""This process's memo of GET /api/kpi hits: reused until their freshness ends, so the hot path
has no Redis round trip and no serialization. Bounded by the number of windows polled."""

from __future__ import annotations

import time

from kpi_service.ops.memo import Memo
from kpi_service.serving.responses import Served

# Hits of /api/kpi kept in-process (about 1 KB each, with their serialized bytes).
_MAX_RECENT = 1024
_KPI_KEYS = "kpi:"  # keys.cache_key's of /api/kpi


class Recent:
    def __init__(self) -> None:
        # Each hit with the latest change batch the process had heard of when it was read from
        # Redis (service.py serves one only while no later batch has been heard; -1: never).
        # Past their freshness they are never served from here again: dropped when it fills.
        self._served: Memo[str, tuple[Served, int]] = Memo(_MAX_RECENT, keep=lambda e: e[0].fresh_until > time.time())

    def get(self, key: str) -> Served | None:
        kept = self._served.get(key)
        return kept[0] if kept is not None else None

    def heard(self, key: str) -> int:
        kept = self._served.get(key)
        return kept[1] if kept is not None else -1

    def remember(self, key: str, served: Served, heard: int = -1) -> Served:
        if key.startswith(_KPI_KEYS):  # history bodies run to hundreds of KB: they stay in Redis only
            self._served.put(key, (served, heard))
        return served

    def clear(self) -> None:
        self._served.clear()
