"""The per-process fan-out behind GET /api/kpi/stream and GET /api/kpi/ws: one Redis subscription
and one refresher per window, however many streams of that window the process serves.

- Every process runs one listener thread subscribed to `kpi:v2:<scope>:announce` and
  `kpi:v2:<scope>:changed` (serving/keys.py: its database's). When any worker or instance computes
  a window that this process has subscribers for, the listener reads the stored value once and
  offers it to each of them.
- When a window is recomputed (the stream rules: docs/api.md, "GET /api/kpi/stream"): with the
  summaries and Redis, after an applier batch that changes it (`kpi:v2:<scope>:changed`, matched to
  the window by changes.py), through `KpiService.current_after`, whose Redis lock makes it once across
  processes; a listing in stock passing aged_days is scheduled for its instant (next_aging). In raw
  mode or with Redis down, at its value's `fresh_until`, through `KpiService.current`: one refresh
  per window per process, one across processes.
- A subscriber is a mailbox holding only the newest event not yet sent: a slow client skips
  intermediate values instead of queueing them, since only the latest KPIs matter. An event
  with the same numbers and state as the one before is not sent.

Over 250 lines because the hub is one object: its listener, its subscriptions and its refresh
schedule share one lock and one table of watched windows. Events and mailboxes are events.py,
the match of a change to a window changes.py.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import threading
import time
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from kpi_service.db.errors import DatabaseUnavailable
from kpi_service.live.events import Closed, Event, Subscriber
from kpi_service.serving.cache import Cache
from kpi_service.serving.changes import affected
from kpi_service.serving.connection import close_quietly
from kpi_service.serving.errors import InvalidKpis, WindowUnavailable
from kpi_service.serving.keys import Keys, cache_key
from kpi_service.serving.query import KpiQuery
from kpi_service.serving.responses import Served, hit
from kpi_service.serving.service import KpiService

log = logging.getLogger(__name__)

# Longest the listener blocks on Redis before it looks at due refreshes and its stop flag.
_TICK = 1.0
# The longest wait between two attempts to subscribe again: the cache's breaker retries as often.
_RECONNECT_MAX = 5.0
# After a refresh that found the previous value still being recomputed elsewhere, look again
# this soon (doubling up to the TTL): the announcement usually arrives first anyway.
_FIRST_RETRY = 0.25

_hubs: weakref.WeakSet[Hub] = weakref.WeakSet()


class Full(Exception):
    """The process already serves its maximum number of streams."""


@dataclass(eq=False)
class _Watched:
    """A window this process streams: its subscribers and when to refresh it."""

    query: KpiQuery
    subscribers: set[Subscriber] = field(default_factory=set)
    due: float = math.inf  # when to refresh; set by the first value delivered
    retry: float = _FIRST_RETRY
    refreshing: bool = False
    latest: tuple[str, str] | None = None  # (computed_at, state) of the newest value delivered
    # Live: the value must include change batch `seq` and be computed at or after `not_before`
    # (an aging instant); `scheduled` once the next aging instant has been looked up.
    seq: int = 0
    not_before: float = 0.0
    scheduled: bool = False


class Hub:
    def __init__(self, service: KpiService, cache: Cache, client: redis.Redis, max_streams: int) -> None:
        self.service = service
        self.cache = cache
        self.client = client
        self.max_streams = max_streams
        self._lock = threading.Lock()
        self._watched: dict[str, _Watched] = {}
        self._count = 0
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        # Refreshes run on the service's refresher (one pool for pollers and streams), not on the
        # listener: a slow window must not delay the others.
        self.refresher = service.refresher
        self._redis_down = False
        self._was_live = True
        # Raised by every switch between live and TTL mode: a refresh that began before one
        # must not schedule its window by the rules of the mode it began in (a live refresh
        # finishing after the switch to TTL mode would leave its window due never).
        self._mode_epoch = 0
        # aged_days -> (the latest batch heard then, the next aging instant found): _next_aging.
        self._aging: dict[int, tuple[int, datetime | None]] = {}
        # A target changed (serving/targets.py): every open stream gets its value again with it.
        service.targets.on_change(self._targets_changed)
        _hubs.add(self)

    # --- subscribers ---------------------------------------------------------------------------

    def subscribe(self, query: KpiQuery, last_event_id: str | None, expires_at: float) -> Subscriber:
        """A new stream of `query`'s window. Raises Full beyond max_streams, Closed on shutdown."""
        key = cache_key("kpi", query)
        subscriber = Subscriber(key, last_event_id, expires_at)
        self.service.know_scope()  # the channels the listener subscribes to are the database's
        with self._lock:
            if self._stopped.is_set():
                raise Closed
            if self._count >= self.max_streams:
                raise Full
            self._count += 1
            watched = self._watched.get(key)
            if watched is None:
                watched = self._watched[key] = _Watched(query)
            watched.subscribers.add(subscriber)
            self._start()
        # Read once the window is registered: a batch announced from now on reaches it, and its
        # first live refresh asks for every batch before.
        seq = self.cache.change_seq()
        with self._lock:
            watched.seq = max(watched.seq, seq)
        return subscriber

    def listen(self) -> None:
        """Start the listener without a stream: the service's change-driven freshness of polled
        windows hears the applier's batches through it (serving/freshness.py)."""
        with self._lock:
            if not self._stopped.is_set():
                self._start()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._listen, name="kpi-stream-listener", daemon=True)
            self._thread.start()

    def unsubscribe(self, subscriber: Subscriber) -> None:
        subscriber.close()
        with self._lock:
            watched = self._watched.get(subscriber.key)
            if watched is None or subscriber not in watched.subscribers:
                return
            watched.subscribers.discard(subscriber)
            self._count -= 1
            if not watched.subscribers:
                del self._watched[subscriber.key]  # nobody watches it: no more refreshes

    @property
    def streams(self) -> int:
        return self._count

    def deliver(self, key: str, served: Served) -> None:
        """Offer a value of window `key` to its subscribers, and schedule the next refresh."""
        with self._lock:
            watched = self._watched.get(key)
        if watched is None:
            return
        # Whichever way the value came (an announcement, a refresh): the window's targets now.
        event = Event.of(self.service.targets.served(served, watched.query))
        with self._lock:
            watched = self._watched.get(key)
            if watched is None:
                return
            if event.newer_than(watched.latest):
                watched.latest = event.mark
            if self._live():
                if not watched.scheduled:
                    watched.due = min(watched.due, time.time())  # look its next aging instant up
            elif served.outcome in ("hit", "miss") and time.time() < served.fresh_until:
                watched.due = served.fresh_until
                watched.retry = _FIRST_RETRY
            elif math.isinf(watched.due):
                # A new window whose first value is an expired one (being refreshed) or a stale
                # one: look again soon rather than wait for an announcement that may not come.
                watched.due = time.time() + watched.retry
            subscribers = list(watched.subscribers)
        for subscriber in subscribers:
            subscriber.offer(event)

    def _targets_changed(self) -> None:
        with self._lock:
            watched = list(self._watched.items())
        for key, window in watched:
            try:
                self.deliver(key, self.service.current(window.query))
            except Exception as error:  # its next refresh or batch sends the targets instead
                log.warning("sending %s its new targets failed: %s", key, error.__class__.__name__)

    def close(self) -> None:
        """End every stream (their generators return) and stop the listener."""
        self._stopped.set()
        with self._lock:
            subscribers = [s for watched in self._watched.values() for s in watched.subscribers]
        for subscriber in subscribers:
            subscriber.close()

    # --- the listener thread -------------------------------------------------------------------

    def _listen(self) -> None:
        pubsub: Any = None
        keys: Keys | None = None
        backoff = _TICK
        while not self._stopped.is_set():
            # The database's channels: until its scope is known, as without Redis.
            if pubsub is None and (keys := self.cache.keys) is not None:
                try:
                    pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(keys.announce, keys.changed)
                    if self._redis_down:
                        log.warning("stream listener: subscribed to announcements again")
                    self._redis_down = False
                    seq = self.cache.change_seq()
                    self.service.changes.subscribed(seq)
                    self._caught_up(seq)
                    backoff = _TICK
                except redis.RedisError:
                    pubsub = self._lost(pubsub)
            try:
                if pubsub is not None:
                    message = pubsub.get_message(timeout=self._until_due())
                    if message is not None and message.get("type") == "message" and keys is not None:
                        if message["channel"] in (keys.changed, keys.changed.encode()):
                            self._changed(message["data"])
                        else:
                            self._announced(keys, message["data"])
                elif keys is None:
                    self._stopped.wait(min(self._until_due(), _TICK))  # the scope is looked up by requests
                else:
                    # Without announcements the refreshes still run: wait for the next one due.
                    self._stopped.wait(min(self._until_due(), backoff))
                    backoff = min(backoff * 2, _RECONNECT_MAX)
            except redis.RedisError:
                pubsub = self._lost(pubsub)
            except Exception:  # never let the thread die: streams would go silent
                log.exception("stream listener failed; going on")
            self._refresh_due()
        close_quietly(pubsub)

    def _lost(self, pubsub: Any) -> None:
        if not self._redis_down:
            log.warning("stream listener: redis unavailable; refreshing windows without announcements")
            self._redis_down = True
        self.service.changes.lost()
        close_quietly(pubsub)
        return None

    def _live(self) -> bool:
        """Whether windows are recomputed on announced changes (else by their TTL): with the
        summaries, while this process reaches Redis (the listener, and the cache's breaker,
        which the applier's announcements go through, both say so)."""
        if self._redis_down or not self.cache.available:
            return False
        try:
            return self.service.db.mode(quiet=True) == "summaries"
        except DatabaseUnavailable:
            return False

    def _resync(self, not_before: float) -> None:
        with self._lock:
            self._mode_epoch += 1
            for watched in self._watched.values():
                watched.scheduled = False
                watched.not_before = max(watched.not_before, not_before)
                watched.due = time.time()

    def _caught_up(self, seq: int) -> None:
        """Subscribed (again): batches announced before were not heard, so every window asks for
        at least the latest one."""
        with self._lock:
            for watched in self._watched.values():
                if watched.seq < seq:
                    watched.seq = seq
                    watched.due = time.time()

    def _changed(self, raw: bytes) -> None:
        """A batch of changes was applied: the windows it touches are due now."""
        try:
            changed = json.loads(raw)
            seq = int(changed["seq"])
        except (ValueError, KeyError, TypeError):
            return
        self.service.changed(seq, changed)
        now = datetime.now(UTC)
        with self._lock:
            for watched in self._watched.values():
                if affected(watched.query, changed, now):
                    watched.seq = max(watched.seq, seq)
                    watched.due = time.time()

    def _until_due(self) -> float:
        with self._lock:
            due = min((c.due for c in self._watched.values() if not c.refreshing), default=math.inf)
        return max(0.0, min(_TICK, due - time.time()))

    def _announced(self, keys: Keys, raw: bytes) -> None:
        try:
            announced = json.loads(raw)
            key, computed_at = keys.window(announced["key"]), announced["computed_at"]
        except (ValueError, KeyError, TypeError, AttributeError):
            return
        with self._lock:
            if key not in self._watched:
                return  # a window nobody streams from this process
        entry = self.cache.get(key)
        if entry is None or entry.body["meta"]["computed_at"] < computed_at:
            return  # overwritten or gone already; the refresh will find the current value
        self.deliver(key, hit(entry))

    def _refresh_due(self) -> None:
        live = self._live()
        if live != self._was_live:
            # Into TTL mode: every window due now, then by its TTL. Back to live: announcements
            # were missed meanwhile, so every window once more, computed from now on.
            self._resync(not_before=time.time() if live else 0.0)
            self._was_live = live
        now = time.time()
        due: list[tuple[str, _Watched]] = []
        with self._lock:
            for key, watched in self._watched.items():
                if not watched.refreshing and watched.due <= now:
                    watched.refreshing = True
                    due.append((key, watched))
        for key, watched in due:
            if not self.refresher.submit(functools.partial(self._refresh, key, watched)):
                return  # shut down

    def _refresh(self, key: str, watched: _Watched) -> None:
        if self._stopped.is_set():  # queued before the hub closed: its streams are gone
            with self._lock:
                watched.refreshing = False
            return
        if self._live():
            self._refresh_live(key, watched)
        else:
            self._refresh_by_ttl(key, watched)

    def _refresh_live(self, key: str, watched: _Watched) -> None:
        """The window's value including every change announced for it, then its next aging."""
        with self._lock:
            # (A value computed after the next aging instant is asked for once it has come: a batch
            # that makes the window due before it takes the value the batch's advance stored.)
            not_before = watched.not_before if watched.not_before <= time.time() else 0.0
            seq, epoch = watched.seq, self._mode_epoch
        aging, retry = math.inf, None
        try:
            served = self.service.current_after(watched.query, seq, not_before)
            self.deliver(key, served)
            aging = self._next_aging(watched.query)
        except (WindowUnavailable, InvalidKpis, DatabaseUnavailable, TimeoutError) as error:
            # The numbers changed and cannot be recomputed: the last value, flagged stale (or an
            # unavailable event), and another try in a TTL, still asking for this batch.
            self._tell_failed(key, watched, error)
            retry = time.time() + self.cache.ttl
        except Exception:
            log.exception("stream refresh of %s failed", key)
            retry = time.time() + self.cache.ttl
        with self._lock:
            watched.scheduled = True
            if math.isfinite(aging):
                watched.not_before = max(watched.not_before, aging)
            # A change announced while this ran asks for another round at once, and so does a
            # switch of mode (the window is then scheduled by the new mode's rules).
            if watched.seq > seq or self._mode_epoch != epoch:
                watched.due = time.time()
            else:
                watched.due = retry if retry is not None else aging
            watched.refreshing = False

    def _tell_failed(self, key: str, watched: _Watched, error: Exception) -> None:
        last = self.service.last_known(watched.query)
        if last is not None:
            self.deliver(key, last)
            return
        message = (
            error.message if isinstance(error, WindowUnavailable | InvalidKpis) else "The database is unavailable."
        )
        event = Event.unavailable(message, watched.latest[0] if watched.latest else "")
        with self._lock:
            subscribers = list(watched.subscribers)
        for subscriber in subscribers:
            subscriber.offer(event)

    def _next_aging(self, query: KpiQuery) -> float:
        """When the window's aged_inventory next grows with no write: inf when its T is past."""
        now = datetime.now(UTC)
        end = query.window.end
        if end is not None and end <= now:
            return math.inf
        # The same instant for every window whose T is now and that has these aged_days: looked
        # up once per batch heard, not once per stream (nothing ages before it without a write).
        heard = self.service.changes.latest
        known = self._aging.get(query.aged_days)
        if known is not None and known[0] == heard and (known[1] is None or known[1] > now):
            at = known[1]
        else:
            at = self.service.db.next_aging(now, query.aged_days)
            self._aging[query.aged_days] = (heard, at)
        if at is None or (end is not None and at >= end):
            return math.inf
        return at.timestamp() + 0.001  # aged once strictly older: just after the instant

    def _refresh_by_ttl(self, key: str, watched: _Watched) -> None:
        """GET /api/kpi for the window, as a poller would: computes once when it expired."""
        with self._lock:
            epoch = self._mode_epoch
        try:
            served = self.service.current(watched.query)
        except (WindowUnavailable, InvalidKpis) as error:
            # Nothing cached and the database failing: tell the subscribers, try again in a TTL.
            computed_at = watched.latest[0] if watched.latest else ""
            event = Event.unavailable(error.message, computed_at)
            with self._lock:
                watched.due = time.time() + self.cache.ttl
                subscribers = list(watched.subscribers)
            for subscriber in subscribers:
                subscriber.offer(event)
        except Exception:
            log.exception("stream refresh of %s failed", key)
            with self._lock:
                watched.due = time.time() + self.cache.ttl
        else:
            with self._lock:
                if served.outcome == "refresh":
                    # The previous value, while a refresh runs (here or in another process).
                    watched.due = time.time() + watched.retry
                    watched.retry = min(watched.retry * 2, self.cache.ttl)
                elif served.outcome == "stale":
                    watched.due = time.time() + self.cache.ttl
            self.deliver(key, served)
        finally:
            with self._lock:
                if self._mode_epoch != epoch:
                    watched.due = time.time()
                watched.refreshing = False


def close_all() -> None:
    """End the streams of every hub of this process (a worker told to stop)."""
    for hub in list(_hubs):
        hub.close()
