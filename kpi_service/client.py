"""For internal services: the KPIs of a window as the service shares them, with no database.

    from kpi_service.client import KpiClient

    client = KpiClient("redis://redis:6379/0", "http://kpi:8000", token)
    body = client.get(date_from="2026-11-01", tz="Europe/Berlin")        # the GET /api/kpi body
    stop = client.subscribe(print, date_from="2026-11-01", tz="Europe/Berlin")  # each new value
    ...
    stop()

It reads the value the service stored in Redis (the key layout of kpi_service/serving/keys.py) and
computes nothing: when the value is missing, no longer fresh, or older than a batch of the
applier that can change it (heard on kpi:v2:<scope>:changed, by the rule the service itself applies,
serving/freshness.py), it asks the service's HTTP API with its token, which computes it once
for everyone and stores it. A subscription's window is asked for likewise after such a batch,
so its new value comes within about a second of the commit, as a poller's does. `tz` and `aged_days` must be
given as the service would fill them in (its KPI_TIMEZONE and KPI_AGED_DAYS default to UTC and
60): a window has one key, and the key names them.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import redis

from kpi_service.config import canonical_zone, parse_sentinels
from kpi_service.serving.bodies import with_flags
from kpi_service.serving.changes import affected
from kpi_service.serving.connection import close_quietly, redis_client
from kpi_service.serving.freshness import Changes
from kpi_service.serving.keys import Keys, cache_key
from kpi_service.serving.query import KpiQuery
from kpi_service.serving.windows import COMPARISONS


class KpiClient:
    def __init__(
        self,
        redis_url: str | None,
        base_url: str,
        token: str,
        *,
        timeout: float = 10.0,
        sentinels: str | None = None,
        sentinel_service: str | None = None,
        sentinel_password: str | None = None,
        scope: str | None = None,
    ) -> None:
        """`sentinels` ("host:port,host:port"), `sentinel_service` and `sentinel_password` as the
        service's REDIS_SENTINELS, REDIS_SENTINEL_SERVICE and REDIS_SENTINEL_PASSWORD: the client
        then follows the primary they name, and `redis_url` (may be None) gives only the database
        number and password. `scope`: the service's database's, whose keys in Redis it reads (its
        /readyz says it as `cache_scope`, and is asked when it is not given)."""
        self.redis = redis_client(
            redis_url, parse_sentinels(sentinels or ""), sentinel_service, sentinel_password, timeout=timeout
        )
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._scope = scope
        # The applier's batches heard, and the subscriptions' windows to ask for after one.
        self._changes = Changes()
        self._watched: dict[str, KpiQuery] = {}
        self._lock = threading.Lock()
        self._listener: threading.Thread | None = None

    def get(
        self,
        *,
        date_from: str | None = None,
        date_to: str | None = None,
        tz: str = "UTC",
        aged_days: int = 60,
        compare: str | None = None,
    ) -> dict[str, Any]:
        """The GET /api/kpi body of the window (with `compare`, its comparison too): the shared
        value while it is current, else the API's. A shared value has no `targets`: the service
        puts them in as it serves (docs/kpis.md, "Targets")."""
        query = _query(date_from, date_to, tz, aged_days, compare)
        self._listen_for_changes()
        keys = self._keys()
        raw = None if keys is None else self.redis.get(keys.value(cache_key("kpi", query)))
        if raw is not None:
            stored = json.loads(raw)
            seq = int(stored.get("seq", 0))
            if time.time() < float(stored["fresh_until"]) and self._changes.needed(query, seq) <= seq:
                return with_flags(stored["body"], cached=True)
        return self._ask(query)

    def _keys(self) -> Keys | None:
        """The keys of the service's database; None while the service cannot say (then every
        value is the API's)."""
        if self._scope is None:
            try:
                with urllib.request.urlopen(f"{self.base_url}/readyz", timeout=self.timeout) as response:
                    self._scope = json.loads(response.read()).get("cache_scope")
            except (OSError, ValueError):
                return None  # not ready, or not there: asked again next time
        return None if not self._scope else Keys(self._scope)

    def _ask(self, query: KpiQuery) -> dict[str, Any]:
        """GET /api/kpi for the window, which the service computes (once for all) if it must."""
        params = {
            "from": query.date_from and query.date_from.isoformat(),
            "to": query.date_to and query.date_to.isoformat(),
            "tz": query.tz,
            "aged_days": query.aged_days,
            "compare": query.compare,
        }
        encoded = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        request = urllib.request.Request(
            f"{self.base_url}/api/kpi?{encoded}", headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read())

    def _listen_for_changes(self) -> None:
        """Hear the applier's batches from now on, in a daemon thread (started once)."""
        with self._lock:
            if self._listener is not None:
                return
            self._listener = threading.Thread(target=self._hear_changes, name="kpi-client-changes", daemon=True)
            self._listener.start()

    def _hear_changes(self) -> None:
        pubsub: Any = None
        while True:
            try:
                if pubsub is None:
                    keys = self._keys()
                    if keys is None:
                        time.sleep(1.0)
                        continue
                    pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(keys.changed)
                    self._changes.subscribed(int(self.redis.get(keys.change_seq) or 0))
                message = pubsub.get_message(timeout=1.0)
                if message is not None:
                    changed = json.loads(message["data"])
                    self._changes.heard(int(changed["seq"]), changed)
                    now = datetime.now(UTC)
                    with self._lock:
                        due = [q for q in self._watched.values() if affected(q, changed, now)]
                    for query in due:  # computed and announced: the subscription hears it
                        self._ask(query)
            except (redis.RedisError, OSError, ValueError, KeyError) as error:
                # OSError: the API did not answer; the window's next batch or poll asks again.
                if isinstance(error, redis.RedisError):
                    self._changes.lost()
                    close_quietly(pubsub)
                    pubsub = None
                    time.sleep(1.0)

    def subscribe(
        self,
        on_update: Callable[[dict[str, Any]], None],
        *,
        date_from: str | None = None,
        date_to: str | None = None,
        tz: str = "UTC",
        aged_days: int = 60,
        compare: str | None = None,
    ) -> Callable[[], None]:
        """Call `on_update` with each new value of the window, whichever instance computed it,
        in a daemon thread; returns the function that stops it (and waits for the thread). While
        Redis is unreachable it tries again every second."""
        query = _query(date_from, date_to, tz, aged_days, compare)
        key = cache_key("kpi", query)
        stopped = threading.Event()
        # Subscribed before this returns: no value computed afterwards is missed.
        keys = self._keys()
        pubsub: Any = None if keys is None else self._announcements(keys)

        def listen() -> None:
            nonlocal pubsub, keys
            while not stopped.is_set():
                try:
                    keys = keys or self._keys()
                    if keys is None:
                        stopped.wait(1.0)
                        continue
                    pubsub = pubsub or self._announcements(keys)
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None and json.loads(message["data"]).get("key") == keys.value(key):
                        raw = self.redis.get(keys.value(key))
                        if raw is not None:
                            on_update(with_flags(json.loads(raw)["body"], cached=True))
                except redis.RedisError:
                    close_quietly(pubsub)
                    pubsub = None
                    stopped.wait(1.0)
            close_quietly(pubsub)

        thread = threading.Thread(target=listen, name="kpi-client", daemon=True)
        thread.start()
        with self._lock:
            self._watched[key] = query
        self._listen_for_changes()

        def stop() -> None:
            with self._lock:
                self._watched.pop(key, None)
            stopped.set()
            thread.join()

        return stop

    def _announcements(self, keys: Keys) -> Any:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(keys.announce)
        return pubsub


def _query(date_from: str | None, date_to: str | None, tz: str, aged_days: int, compare: str | None) -> KpiQuery:
    zone = canonical_zone(tz)
    if zone is None:
        raise ValueError(f"unknown time zone {tz!r}")
    first = None if date_from is None else date.fromisoformat(date_from)
    last = None if date_to is None else date.fromisoformat(date_to)
    if compare is not None:
        # The service's own rules (serving/query.py): asked here, a ValueError rather than its 400.
        if compare not in COMPARISONS:
            raise ValueError(f"compare must be one of {', '.join(COMPARISONS)}, not {compare!r}")
        if first is None or last is None:
            raise ValueError("an open window has no previous period: give both date_from and date_to")
    return KpiQuery(first, last, zone, aged_days, compare=compare)
