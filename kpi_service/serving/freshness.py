"""Change-driven freshness of the cached windows (with the summaries and Redis): which applied
batches of changes this process has heard of (kpi:v2:<scope>:changed, through the stream hub's
listener, live/hub.py), whether a stored value is still current, and which windows were
requested recently enough to be refreshed when a batch changes them.

- A stored value includes the batches up to its `seq`. It is current while no batch after it
  can change its window (serving/changes.py, the rule the streams use). A batch this process has
  not heard of (before it subscribed, lost in a reconnect, or more than MAX_BATCHES back)
  counts as one that changes it: the value is computed again rather than served past a change.
- A batch that announces its deltas brings every watched window forward with no statement of
  its own (serving/advancer.py); the rest of this module is the path for the others.
- "Recently requested": a window this process answered within the last KPI_CACHE_TTL seconds
  (at most MAX_REQUESTED windows), and since a batch last had it refreshed: a window polled
  every 5 s pays at most one refresh per poll, however many batches come between. When a batch
  without deltas changes one, it is refreshed in the background,
  once across all instances (the cache's lock; an instance that finds the value computed by
  another takes it), so a poller's next request finds the new value and a new ETag. Windows
  not requested lately cost nothing per batch: their next request computes them.
- Without the listener (Redis down, or not subscribed yet) nothing here applies: values are
  fresh for their TTL, as in raw mode, where no batch is ever announced.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

from kpi_service.serving.changes import affected
from kpi_service.serving.query import KpiQuery

# Batches remembered: at two a second, over half an hour. A value older than that is recomputed.
MAX_BATCHES = 4096
MAX_REQUESTED = 1024


class Changes:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._batches: OrderedDict[int, dict[str, Any]] = OrderedDict()
        # The same batches by the summaries' own number (kpi_announce), which values record.
        self._numbered: OrderedDict[int, tuple[int, dict[str, Any]]] = OrderedDict()
        self.latest = 0
        self.live = False  # subscribed: every batch from here on is heard

    def subscribed(self, seq: int) -> None:
        """The listener (re)subscribed when the latest batch was `seq`: those before it that were
        not heard stay unknown, so values that predate them are recomputed."""
        with self._lock:
            self.latest = max(self.latest, seq)
            self.live = True

    def lost(self) -> None:
        with self._lock:
            self.live = False

    def heard(self, seq: int, changed: dict[str, Any]) -> None:
        with self._lock:
            self._batches[seq] = changed
            self.latest = max(self.latest, seq)
            while len(self._batches) > MAX_BATCHES:
                self._batches.popitem(last=False)
            if isinstance(changed.get("batch"), int):
                self._numbered[changed["batch"]] = (seq, changed)
                while len(self._numbered) > MAX_BATCHES:
                    self._numbered.popitem(last=False)

    def numbered_between(self, after: int, upto: int) -> list[dict[str, Any]] | None:
        """The announcements of the summaries' batches after `after` up to `upto`, each with its
        deltas (serving/advance.py); None when one was not heard or has no deltas (a change of
        everything, a batch too large)."""
        with self._lock:
            found = []
            for number in range(after + 1, upto + 1):
                _, changed = self._numbered.get(number, (0, {}))
                if changed.get("all") or not isinstance(changed.get("deltas"), dict):
                    return None
                found.append(changed)
            return found

    def announced(self, seq: int) -> dict[str, Any] | None:
        """What the announcement of change batch `seq` said, if heard."""
        with self._lock:
            return self._batches.get(seq)

    def numbered(self, batch: int) -> tuple[int, dict[str, Any]] | None:
        """The announcement (its seq, and what it said) of the summaries' batch `batch`, if heard."""
        with self._lock:
            return self._numbered.get(batch)

    def needed(self, query: KpiQuery, seq: int) -> int:
        """The batch a value of `query` that includes batches up to `seq` must include to be
        current: `seq` itself when no later batch can change it (or while not live)."""
        with self._lock:
            if not self.live or seq >= self.latest:
                return seq
            latest = self.latest
            if latest - seq > MAX_BATCHES:
                return latest
            batches = [self._batches.get(s) for s in range(seq + 1, latest + 1)]
        now = datetime.now(UTC)
        if any(batch is None or affected(query, batch, now) for batch in batches):
            return latest
        return seq


class Requested:
    """The windows this process answered lately: key -> (kind, query, when, refreshed), where
    `refreshed` is when a batch last had it refreshed."""

    def __init__(self, within: float) -> None:
        self.within = within
        self._windows: dict[str, tuple[str, KpiQuery, float, float]] = {}

    def saw(self, key: str, kind: str, query: KpiQuery) -> None:
        if len(self._windows) >= MAX_REQUESTED and key not in self._windows:
            cutoff = time.time() - self.within
            self._windows = {k: v for k, v in list(self._windows.items()) if v[2] > cutoff}
            if len(self._windows) >= MAX_REQUESTED:
                return  # very many windows at once: the rest are computed on request
        refreshed = self._windows[key][3] if key in self._windows else 0.0
        self._windows[key] = (kind, query, time.time(), refreshed)

    def changed_by(self, changed: dict[str, Any]) -> list[tuple[str, str, KpiQuery]]:
        """The windows requested lately whose numbers the batch can change, and that were
        requested since a batch last had them refreshed: batches faster than a window's polls
        would otherwise each pay a statement whose value nobody reads (its next request, after
        a batch that was not refreshed, computes it, needed() says so)."""
        started = time.time()
        cutoff = started - self.within
        now = datetime.now(UTC)
        due = [
            (key, kind, query)
            for key, (kind, query, at, refreshed) in list(self._windows.items())
            if at > cutoff and at > refreshed and affected(query, changed, now)
        ]
        for key, kind, query in due:
            at = self._windows.get(key, (kind, query, started, started))[2]
            self._windows[key] = (kind, query, at, started)
        return due
