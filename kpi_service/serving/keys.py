"""The names of the service's Redis keys and channels. Their layout, version 2, is read by other
services and documented once, in docs/clients.md, "Redis key layout, version 2": change a format
only under a new prefix, and that table with it.

Every key and channel names the database it describes (its scope): deployments on different
databases sharing one Redis (staging and production, two dealerships) never see each other's
values, locks or batches, while instances on one database and its physical standbys (one system
identifier, one name) share them. In the process, a window is named by `cache_key` alone; the
cache adds the scope when it talks to Redis.

A value and its announcement are written by one script, so a reader never sees one without the
other, and only if the stored value was not computed later (cache.py, Cache.put).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from kpi_service.serving.query import KpiQuery

KEY_PREFIX = "kpi:v2"


@dataclass(frozen=True)
class Keys:
    """The keys and channels of one database's scope."""

    scope: str

    @property
    def prefix(self) -> str:
        return f"{KEY_PREFIX}:{self.scope}"

    def value(self, key: str) -> str:
        """The Redis key of a window's value (`key`: cache_key's)."""
        return f"{self.prefix}:{key}"

    def lock(self, key: str) -> str:
        """The single-flight lock of a window's value."""
        return f"{self.prefix}:lock:{key}"

    def window(self, redis_key: str) -> str | None:
        """The window's key of one of this scope's value keys (None: another scope's)."""
        head = f"{self.prefix}:"
        return redis_key[len(head) :] if redis_key.startswith(head) else None

    @property
    def announce(self) -> str:
        return f"{self.prefix}:announce"

    @property
    def changed(self) -> str:
        return f"{self.prefix}:changed"

    @property
    def change_seq(self) -> str:
        return f"{self.prefix}:change_seq"

    @property
    def change_position(self) -> str:
        return f"{self.prefix}:change_position"

    @property
    def caught_up(self) -> str:
        return f"{self.prefix}:caught_up_at"

    @property
    def watched(self) -> str:
        """A sorted set: the windows read lately (cache keys), by when (serving/advance.py)."""
        return f"{self.prefix}:watched"

    @property
    def watched_queries(self) -> str:
        """A hash: each watched window's kind and query, as JSON."""
        return f"{self.prefix}:watched_queries"

    def claim(self, name: str) -> str:
        """Who does `name` (a batch's advance, a tick) across instances."""
        return f"{self.prefix}:claim:{name}"

    @property
    def applier_turn(self) -> str:
        return f"{self.prefix}:applier_turn"


@functools.lru_cache(maxsize=4096)
def cache_key(kind: str, query: KpiQuery) -> str:
    """A window's name in the process, and in Redis after its scope (Keys.value)."""
    parts = [
        kind,
        query.date_from.isoformat() if query.date_from else "-",
        query.date_to.isoformat() if query.date_to else "-",
        query.tz,
        str(query.aged_days),
    ]
    if query.interval:
        parts.append(query.interval)
    if query.compare:
        # A window and its comparison are two values: forgetting this part would share a key.
        parts.append(query.compare)
    return ":".join(parts)
