"""The per-process fan-out behind GET /api/kpi/stream and GET /api/kpi/ws: one Redis subscription
and one refresher per window, however many streams of that window the process serves.

- Every process runs one listener thread subscribed to `kpi:v1:announce` and `kpi:v1:changed`
  (cache.py). When any worker or instance computes a window that this process has subscribers
  for, the listener reads the stored value once and offers it to each of them.
- **Live (the summaries, with Redis): windows are recomputed when their numbers change, not on a
  timer.** The applier announces what each committed batch changed (`kpi:v1:changed`: the
  instants of the buckets it added to, and the earliest listing whose stock changed). A window
  whose period holds such an instant, or whose aged_inventory at its T can see that listing, is
  recomputed through `KpiService.current_after`: once across all processes (the service's Redis
  lock; the others wait for a value that includes that batch), and its new value reaches every
  process through the announcement. The one change without a write, a listing in stock passing
  aged_days while T is now, is scheduled for its instant (sql/runtime/kpi.sql, next_aging). With no
  writes and nothing aging, a stream gets heartbeats and no statement runs.
- **Otherwise (raw mode, where every write changes the numbers and nothing announces it, or
  Redis down)** each subscribed window has a due time, its value's `fresh_until`. When it
  passes, the listener has one refresh run through `KpiService.current`: one per window per
  process, and the service's Redis lock makes it one across processes.
- A subscriber is a mailbox holding only the newest event not yet sent: a slow client skips
  intermediate values instead of queueing them, since only the latest KPIs matter. An event
  with the same numbers and state as the one before is not sent.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from kpi_service.db.database import DatabaseUnavailable
from kpi_service.serving.cache import ANNOUNCE_CHANNEL, CHANGES_CHANNEL, Cache, cache_key, close_quietly
from kpi_service.serving.query import KpiQuery
from kpi_service.serving.service import KpiService, Served
from kpi_service.web.errors import ApiError

log = logging.getLogger(__name__)

# Longest the listener blocks on Redis before it looks at due refreshes and its stop flag.
_TICK = 1.0
# After a refresh that found the previous value still being recomputed elsewhere, look again
# this soon (doubling up to the TTL): the announcement usually arrives first anyway.
_FIRST_RETRY = 0.25

_hubs: weakref.WeakSet[Hub] = weakref.WeakSet()


class Full(Exception):
    """The process already serves its maximum number of streams."""


class Closed(Exception):
    """The hub is shutting down."""


def format_event_id(value: str | None) -> str | None:
    """An event id (a `computed_at`) in its canonical spelling, or None when it is not one.
    Canonical ids have a fixed width, so they order as strings in time order."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def affected(query: KpiQuery, changed: dict[str, Any], now: datetime) -> bool:
    """Whether a batch of changes (cache.py, kpi:v1:changed) can change the window's numbers:
    a changed bucket inside [start, end), or a listing whose stock changed and that
    aged_inventory at T = min(end, now) counts once older than aged_days."""
    if changed.get("all"):
        return True
    window = query.window
    first, last, stock = (_instant(changed.get(name)) for name in ("from", "to", "stock_from"))
    inside = (
        first is not None
        and last is not None
        and (window.end is None or first < window.end)
        and (window.start is None or last >= window.start)
    )
    return inside or (stock is not None and (window.as_of(now) - stock).total_seconds() > query.aged_days * 86400)


def _instant(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


@dataclass(frozen=True)
class Event:
    """One server-sent event: `kpi` (a body as GET /api/kpi answers it) or `unavailable`."""

    name: str
    computed_at: str  # of the value it carries (unavailable: of the last value known)
    state: str  # "fresh", "stale" or "unavailable": a change of state alone is news
    data: bytes
    numbers: str = ""  # the ten KPIs, to tell an event that changes nothing

    @classmethod
    def of(cls, served: Served) -> Event:
        stale = bool(served.body["meta"]["stale"])
        numbers = json.dumps(served.body["metrics"], sort_keys=True)
        return cls("kpi", served.body["meta"]["computed_at"], "stale" if stale else "fresh", served.payload, numbers)

    @classmethod
    def unavailable(cls, error: ApiError, computed_at: str) -> Event:
        body = {"metrics": None, "success": False, "message": error.message}
        return cls("unavailable", computed_at, "unavailable", json.dumps(body, separators=(",", ":")).encode())

    def newer_than(self, other: tuple[str, str] | None) -> bool:
        if other is None:
            return True
        computed_at, state = other
        return self.computed_at > computed_at or (self.computed_at == computed_at and self.state != state)

    def encode(self) -> bytes:
        """The event on the wire. `id:` only for KPI values: a browser reconnects with the
        last id it saw, and an error is not something to resume from."""
        head = f"id: {self.computed_at}\n" if self.name == "kpi" else ""
        # The JSON is compact, without newlines: one data line.
        return f"{head}event: {self.name}\ndata: ".encode() + self.data + b"\n\n"

    def frame(self) -> str:
        """The event as one WebSocket text frame: a JSON object with the same id and data as
        the server-sent event. The body is spliced in as it is, not parsed and dumped again."""
        head = f'{{"event":"{self.name}",' + (f'"id":"{self.computed_at}",' if self.name == "kpi" else "")
        return head + '"data":' + self.data.decode() + "}"


class Subscriber:
    """One stream's mailbox: the newest event not yet sent, or closed."""

    def __init__(self, key: str, last_event_id: str | None, expires_at: float) -> None:
        self.key = key
        self.expires_at = expires_at  # the token's exp: the stream ends then
        self._cond = threading.Condition()
        self._pending: Event | None = None
        # What the client already has: Last-Event-ID counts as a fresh value of that time.
        self._seen: tuple[str, str] | None = (last_event_id, "fresh") if last_event_id else None
        self._numbers: tuple[str, str] | None = None  # (numbers, state) of the last event offered
        self._woken = False
        self.closed = False

    def offer(self, event: Event) -> None:
        with self._cond:
            if self.closed or not event.newer_than(self._seen):
                return
            self._seen = (event.computed_at, event.state)
            if event.numbers and (event.numbers, event.state) == self._numbers:
                return  # recomputed, and nothing changed: the client has these numbers
            self._numbers = (event.numbers, event.state)
            self._pending = event
            self._cond.notify()

    def take(self, timeout: float) -> Event | None:
        """The next event; None after `timeout` seconds without one, or once woken. Raises Closed."""
        with self._cond:
            if self._pending is None and not self.closed and not self._woken:
                self._cond.wait(timeout)
            if self.closed:
                raise Closed
            event, self._pending, self._woken = self._pending, None, False
            return event

    def wake(self) -> None:
        """Return from take() now: the stream has something else to look at (a WebSocket's
        connection ended or its client sent a message)."""
        with self._cond:
            self._woken = True
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify()


@dataclass(eq=False)
class _Channel:
    """A subscribed window of this process."""

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
        self._channels: dict[str, _Channel] = {}
        self._count = 0
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        # Refreshes run here, not on the listener: a slow window must not delay the others.
        self._refresher = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kpi-stream-refresh")
        self._redis_down = False
        self._was_live = True
        _hubs.add(self)

    # --- subscribers ---------------------------------------------------------------------------

    def subscribe(self, query: KpiQuery, last_event_id: str | None, expires_at: float) -> Subscriber:
        """A new stream of `query`'s window. Raises Full beyond max_streams, Closed on shutdown."""
        key = cache_key("kpi", query)
        subscriber = Subscriber(key, last_event_id, expires_at)
        with self._lock:
            if self._stopped.is_set():
                raise Closed
            if self._count >= self.max_streams:
                raise Full
            self._count += 1
            channel = self._channels.get(key)
            if channel is None:
                channel = self._channels[key] = _Channel(query)
            channel.subscribers.add(subscriber)
            if self._thread is None:
                self._thread = threading.Thread(target=self._listen, name="kpi-stream-listener", daemon=True)
                self._thread.start()
        # Read once the window is registered: a batch announced from now on reaches it, and its
        # first live refresh asks for every batch before.
        seq = self.cache.change_seq()
        with self._lock:
            channel.seq = max(channel.seq, seq)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        subscriber.close()
        with self._lock:
            channel = self._channels.get(subscriber.key)
            if channel is None or subscriber not in channel.subscribers:
                return
            channel.subscribers.discard(subscriber)
            self._count -= 1
            if not channel.subscribers:
                del self._channels[subscriber.key]  # nobody watches it: no more refreshes

    @property
    def streams(self) -> int:
        return self._count

    def deliver(self, key: str, served: Served) -> None:
        """Offer a value of window `key` to its subscribers, and schedule the next refresh."""
        event = Event.of(served)
        with self._lock:
            channel = self._channels.get(key)
            if channel is None:
                return
            if event.newer_than(channel.latest):
                channel.latest = (event.computed_at, event.state)
            if self._live():
                if not channel.scheduled:
                    channel.due = min(channel.due, time.time())  # look its next aging instant up
            elif served.outcome in ("hit", "miss") and time.time() < served.fresh_until:
                channel.due = served.fresh_until
                channel.retry = _FIRST_RETRY
            elif math.isinf(channel.due):
                # A new window whose first value is an expired one (being refreshed) or a stale
                # one: look again soon rather than wait for an announcement that may not come.
                channel.due = time.time() + channel.retry
            subscribers = list(channel.subscribers)
        for subscriber in subscribers:
            subscriber.offer(event)

    def close(self) -> None:
        """End every stream (their generators return) and stop the listener."""
        self._stopped.set()
        with self._lock:
            subscribers = [s for channel in self._channels.values() for s in channel.subscribers]
        for subscriber in subscribers:
            subscriber.close()
        self._refresher.shutdown(wait=False, cancel_futures=True)

    # --- the listener thread -------------------------------------------------------------------

    def _listen(self) -> None:
        pubsub: Any = None
        backoff = _TICK
        while not self._stopped.is_set():
            if pubsub is None:
                try:
                    pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(ANNOUNCE_CHANNEL, CHANGES_CHANNEL)
                    if self._redis_down:
                        log.warning("stream listener: subscribed to announcements again")
                    self._redis_down = False
                    self._caught_up(self.cache.change_seq())
                    backoff = _TICK
                except redis.RedisError:
                    pubsub = self._lost(pubsub)
            try:
                if pubsub is not None:
                    message = pubsub.get_message(timeout=self._until_due())
                    if message is not None and message.get("type") == "message":
                        if message["channel"] in (CHANGES_CHANNEL, CHANGES_CHANNEL.encode()):
                            self._changed(message["data"])
                        else:
                            self._announced(message["data"])
                else:
                    # Without announcements the refreshes still run: wait for the next one due.
                    self._stopped.wait(min(self._until_due(), backoff))
                    backoff = min(backoff * 2, 30.0)
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
            for channel in self._channels.values():
                channel.scheduled = False
                channel.not_before = max(channel.not_before, not_before)
                channel.due = time.time()

    def _caught_up(self, seq: int) -> None:
        """Subscribed (again): batches announced before were not heard, so every window asks for
        at least the latest one."""
        with self._lock:
            for channel in self._channels.values():
                if channel.seq < seq:
                    channel.seq = seq
                    channel.due = time.time()

    def _changed(self, raw: bytes) -> None:
        """A batch of changes was applied: the windows it touches are due now."""
        try:
            changed = json.loads(raw)
            seq = int(changed["seq"])
        except (ValueError, KeyError, TypeError):
            return
        now = datetime.now(UTC)
        with self._lock:
            for channel in self._channels.values():
                if affected(channel.query, changed, now):
                    channel.seq = max(channel.seq, seq)
                    channel.due = time.time()

    def _until_due(self) -> float:
        with self._lock:
            due = min((c.due for c in self._channels.values() if not c.refreshing), default=math.inf)
        return max(0.0, min(_TICK, due - time.time()))

    def _announced(self, raw: bytes) -> None:
        try:
            announced = json.loads(raw)
            key, computed_at = announced["key"], announced["computed_at"]
        except (ValueError, KeyError, TypeError):
            return
        with self._lock:
            if key not in self._channels:
                return  # a window nobody streams from this process
        entry = self.cache.get(key)
        if entry is None or entry.body["meta"]["computed_at"] < computed_at:
            return  # overwritten or gone already; the refresh will find the current value
        body = {**entry.body, "meta": {**entry.body["meta"], "cached": True, "stale": False}}
        self.deliver(key, Served(body, "hit", entry.fresh_until))

    def _refresh_due(self) -> None:
        live = self._live()
        if live != self._was_live:
            # Into TTL mode: every window due now, then by its TTL. Back to live: announcements
            # were missed meanwhile, so every window once more, computed from now on.
            self._resync(not_before=time.time() if live else 0.0)
            self._was_live = live
        now = time.time()
        due: list[tuple[str, _Channel]] = []
        with self._lock:
            for key, channel in self._channels.items():
                if not channel.refreshing and channel.due <= now:
                    channel.refreshing = True
                    due.append((key, channel))
        for key, channel in due:
            try:
                self._refresher.submit(self._refresh, key, channel)
            except RuntimeError:  # shut down
                return

    def _refresh(self, key: str, channel: _Channel) -> None:
        if self._live():
            self._refresh_live(key, channel)
        else:
            self._refresh_by_ttl(key, channel)

    def _refresh_live(self, key: str, channel: _Channel) -> None:
        """The window's value including every change announced for it, then its next aging."""
        with self._lock:
            seq, not_before = channel.seq, channel.not_before
        aging, retry = math.inf, None
        try:
            served = self.service.current_after(channel.query, seq, not_before)
            self.deliver(key, served)
            aging = self._next_aging(channel.query)
        except (ApiError, DatabaseUnavailable, TimeoutError) as error:
            # The numbers changed and cannot be recomputed: the last value, flagged stale (or an
            # unavailable event), and another try in a TTL, still asking for this batch.
            self._tell_failed(key, channel, error)
            retry = time.time() + self.cache.ttl
        except Exception:
            log.exception("stream refresh of %s failed", key)
            retry = time.time() + self.cache.ttl
        with self._lock:
            channel.scheduled = True
            if math.isfinite(aging):
                channel.not_before = max(channel.not_before, aging)
            # A change announced while this ran asks for another round at once.
            channel.due = time.time() if channel.seq > seq else retry if retry is not None else aging
            channel.refreshing = False

    def _tell_failed(self, key: str, channel: _Channel, error: Exception) -> None:
        last = self.service.last_known(channel.query)
        if last is not None:
            self.deliver(key, last)
            return
        message = error.message if isinstance(error, ApiError) else "The database is unavailable."
        event = Event.unavailable(ApiError(503, message), channel.latest[0] if channel.latest else "")
        with self._lock:
            subscribers = list(channel.subscribers)
        for subscriber in subscribers:
            subscriber.offer(event)

    def _next_aging(self, query: KpiQuery) -> float:
        """When the window's aged_inventory next grows with no write: inf when its T is past."""
        now = datetime.now(UTC)
        end = query.window.end
        if end is not None and end <= now:
            return math.inf
        at = self.service.db.next_aging(now, query.aged_days)
        if at is None or (end is not None and at >= end):
            return math.inf
        return at.timestamp() + 0.001  # aged once strictly older: just after the instant

    def _refresh_by_ttl(self, key: str, channel: _Channel) -> None:
        """GET /api/kpi for the window, as a poller would: computes once when it expired."""
        try:
            served = self.service.current(channel.query)
        except ApiError as error:
            # Nothing cached and the database failing: tell the subscribers, try again in a TTL.
            computed_at = channel.latest[0] if channel.latest else ""
            event = Event.unavailable(error, computed_at)
            with self._lock:
                channel.due = time.time() + self.cache.ttl
                subscribers = list(channel.subscribers)
            for subscriber in subscribers:
                subscriber.offer(event)
        except Exception:
            log.exception("stream refresh of %s failed", key)
            with self._lock:
                channel.due = time.time() + self.cache.ttl
        else:
            with self._lock:
                if served.outcome == "refresh":
                    # The previous value, while a refresh runs (here or in another process).
                    channel.due = time.time() + channel.retry
                    channel.retry = min(channel.retry * 2, self.cache.ttl)
                elif served.outcome == "stale":
                    channel.due = time.time() + self.cache.ttl
            self.deliver(key, served)
        finally:
            with self._lock:
                channel.refreshing = False


def close_all() -> None:
    """End the streams of every hub of this process (a worker told to stop)."""
    for hub in list(_hubs):
        hub.close()
