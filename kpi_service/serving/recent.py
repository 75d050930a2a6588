"""This process's memo of GET /api/kpi hits: reused until their freshness ends, so the hot path
has no Redis round trip and no serialization. Bounded by the number of windows polled."""

from __future__ import annotations

import time

from kpi_service.serving.keys import KEY_PREFIX
from kpi_service.serving.responses import Served

# Hits of /api/kpi kept in-process (about 1 KB each, with their serialized bytes).
_MAX_RECENT = 1024
_KPI_KEYS = f"{KEY_PREFIX}:kpi:"


class Recent:
    def __init__(self) -> None:
        self._served: dict[str, Served] = {}
        # The latest change batch the process had heard of when each was read from Redis
        # (service.py serves one only while no later batch has been heard; -1: never).
        self._heard: dict[str, int] = {}
        self._prune_at = 256

    def get(self, key: str) -> Served | None:
        return self._served.get(key)

    def fresh(self, key: str) -> Served | None:
        """The hit kept for `key` while it is fresh."""
        served = self._served.get(key)
        return served if served is not None and time.time() < served.fresh_until else None

    def heard(self, key: str) -> int:
        return self._heard.get(key, -1)

    def remember(self, key: str, served: Served, heard: int = -1) -> Served:
        if not key.startswith(_KPI_KEYS):
            return served  # history bodies run to hundreds of KB: they stay in Redis only
        if len(self._served) >= self._prune_at:
            # Entries past their freshness are never served from here again: drop them, so the
            # memo holds about the windows polled within a TTL rather than every window ever
            # asked for. Amortized O(1): the next prune waits until the memo has doubled.
            now = time.time()
            live = {k: v for k, v in list(self._served.items()) if v.fresh_until > now}
            if len(live) > _MAX_RECENT:
                live.clear()  # rare: very many windows fresh at once
            self._served = live
            self._heard = {k: v for k, v in self._heard.items() if k in live}
            self._prune_at = max(256, 2 * len(live))
        self._served[key] = served
        self._heard[key] = heard
        return served

    def clear(self) -> None:
        self._served.clear()
        self._heard.clear()
