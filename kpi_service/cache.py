"""Computed KPI responses in Redis, shared by every worker and instance.

Layout (version 1, documented in the README for other services):
  key   kpi:v1:<kind>:<from|->:<to|->:<tz>:<aged_days>[:<interval>]
  value JSON {"fresh_until": <unix seconds>, "body": <the 200 response, meta.cached false>}
The key lives for KPI_STALE_TTL; its value is fresh until `fresh_until` (KPI_CACHE_TTL after
the computation). Past that it is the last good answer, served only while the database fails.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import fakeredis
import redis

from kpi_service.config import Settings
from kpi_service.schemas import KpiQuery

log = logging.getLogger(__name__)

KEY_PREFIX = "kpi:v1"


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


@dataclass(frozen=True)
class Entry:
    body: dict[str, Any]
    fresh_until: float

    @property
    def fresh(self) -> bool:
        return time.time() < self.fresh_until


def connect(settings: Settings) -> redis.Redis:
    """The configured Redis, or an in-process stand-in when REDIS_URL is not set."""
    if not settings.redis_url:
        return fakeredis.FakeRedis()
    timeout = settings.redis_timeout_ms / 1000
    return redis.Redis.from_url(settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)


class Cache:
    """Never raises on a Redis failure: the caller then computes from the database."""

    def __init__(self, client: redis.Redis, ttl: int, stale_ttl: int) -> None:
        self.client = client
        self.ttl = ttl
        self.stale_ttl = max(stale_ttl, ttl)

    def get(self, key: str) -> Entry | None:
        try:
            raw = self.client.get(key)
        except redis.RedisError as error:
            log.warning("redis get failed: %s", error.__class__.__name__)
            return None
        if raw is None:
            return None
        try:
            stored = json.loads(raw)
            return Entry(body=stored["body"], fresh_until=float(stored["fresh_until"]))
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring malformed cache entry %s", key)
            return None

    def put(self, key: str, body: dict[str, Any]) -> Entry:
        entry = Entry(body=body, fresh_until=time.time() + self.ttl)
        value = json.dumps({"fresh_until": entry.fresh_until, "body": body}, separators=(",", ":"))
        try:
            self.client.set(key, value, ex=self.stale_ttl)
        except redis.RedisError as error:
            log.warning("redis set failed: %s", error.__class__.__name__)
        return entry
