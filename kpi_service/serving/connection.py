"""The Redis client: the configured server, one found through Sentinel, or an in-process stand-in."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.retry import Retry
from redis.sentinel import Sentinel

from kpi_service.config import Settings


def connect(settings: Settings) -> redis.Redis:
    """The configured Redis, or an in-process stand-in when neither REDIS_URL nor REDIS_SENTINELS is set."""
    if not settings.uses_redis:
        import fakeredis  # only the demo and KPI_ENV=development have it (the embedded extra)

        return fakeredis.FakeRedis()
    timeout = settings.redis_timeout_ms / 1000
    return redis_client(
        settings.redis_url,
        settings.redis_sentinels,
        settings.redis_sentinel_service,
        settings.redis_sentinel_password,
        timeout=timeout,
        connect_timeout=timeout,
    )


def redis_client(
    url: str | None,
    sentinels: Sequence[tuple[str, int]] = (),
    service: str | None = None,
    sentinel_password: str | None = None,
    *,
    timeout: float | None,
    connect_timeout: float | None = None,
) -> redis.Redis:
    """A client of the Redis at `url`, or, with sentinels, of the primary they name for `service`
    (`url` then gives only the database number and the credentials).

    The sentinel-managed pool asks the sentinels for the primary whenever it opens a connection,
    and drops idle connections when the answer changes; a connection to a demoted primary fails
    (closed by Sentinel, or READONLY). So after a failover every user of this client (cache,
    locks, tickets, the stream hub's subscription) reaches the new primary on its next
    connection, with no restart."""
    if not sentinels:
        if url is None:
            raise ValueError("a Redis URL or sentinels are needed")
        return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=connect_timeout)
    if not service:
        raise ValueError("sentinels need the name of the service they monitor")
    credentials = {k: v for k, v in parse_url(url).items() if k in ("db", "username", "password")} if url else {}
    sentinel = Sentinel(
        list(sentinels),
        sentinel_kwargs={
            "socket_timeout": timeout,
            "socket_connect_timeout": connect_timeout,
            "password": sentinel_password,
            # One try per sentinel: a dead one is skipped for the next (redis-py's default would
            # retry it ten times with back-off, seconds per connection during an outage).
            "retry": Retry(NoBackoff(), 0),
        },
    )
    return sentinel.master_for(service, socket_timeout=timeout, socket_connect_timeout=connect_timeout, **credentials)


def close_quietly(pubsub: Any) -> None:
    """Close a pub/sub connection that may be gone already (or None)."""
    if pubsub is not None:
        with contextlib.suppress(redis.RedisError, OSError):
            pubsub.close()
