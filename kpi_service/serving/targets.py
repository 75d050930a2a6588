"""The owner's targets in GET /api/kpi's body (docs/kpis.md, "Targets").

A target is not a sum: it is put into a window's body when it is served, never stored with its
numbers, so that a target changed by `kpi-service target` computes nothing again. Each process
reads the table every POLL_S while it serves (one primary-key scan of a few rows) and, when what
it reads differs, tells its stream hub, which sends every open stream its value again with the
new targets; a poll serves them from its next request. A target set is thus in the next poll
after at most POLL_S, and on an open stream within about as long.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from kpi_service.db.errors import DatabaseUnavailable
from kpi_service.db.targets import Target
from kpi_service.serving.query import KpiQuery
from kpi_service.serving.responses import BETTER, Served

log = logging.getLogger(__name__)

POLL_S = 0.25


def window_length(query: KpiQuery) -> str | None:
    """Which scoped targets a window takes: 'daily' for one day, 'monthly' for a month or a month
    to date (from the 1st to a day of that month); None for any other window."""
    first, last = query.date_from, query.date_to
    if first is None or last is None:
        return None
    if first == last:
        return "daily"
    if first.day == 1 and (first.year, first.month) == (last.year, last.month):
        return "monthly"
    return None


def of_window(targets: tuple[Target, ...], query: KpiQuery, metrics: dict[str, Any]) -> dict[str, Any]:
    """Per KPI with a target for this window: its value, which window length it was set for, and
    whether the window's number meets it (at least it, or for a lower-is-better KPI at most it)."""
    length = window_length(query)
    chosen: dict[str, Target] = {}
    for target in targets:
        if target.window_length == length or (target.window_length == "any" and target.kpi not in chosen):
            chosen[target.kpi] = target
    result = {}
    for name, target in chosen.items():
        number = Decimal(str(metrics[name]))
        met = number >= target.value if BETTER[name] == "higher" else number <= target.value
        result[name] = {"value": float(target.value), "window": target.window_length, "met": met}
    return result


class Targets:
    """The targets as this process last read them, kept current by a thread while it serves."""

    def __init__(self, read: Callable[[], tuple[Target, ...]], poll_s: float = POLL_S) -> None:
        self._read = read
        self.poll_s = poll_s
        self.current: tuple[Target, ...] = ()
        self._listeners: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        # id(a Served) -> (it, the targets' version, it with them).
        self._memo: dict[int, tuple[Served, int, Served]] = {}
        self._version = 0

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def start(self) -> None:
        """Read them now (the first request's body has them) and keep them current from then on."""
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._run, name="kpi-targets", daemon=True)
        self.poll()
        self._thread.start()

    def poll(self) -> bool:
        """Read the table; True when it changed (the listeners are told)."""
        try:
            found = self._read()
        except DatabaseUnavailable as error:
            # The last targets read stay: a value without its target would look like one unset.
            log.debug("reading the targets failed: %s", error.__class__.__name__)
            return False
        with self._lock:
            if found == self.current:
                return False
            self.current = found
            self._version += 1
            self._memo.clear()
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                log.exception("telling of a target change failed")
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)

    def served(self, served: Served, query: KpiQuery) -> Served:
        """`served` with this window's `targets` in its body (an empty object when none is set).
        The same Served in gives the same Served out while the targets stand: a hit of the
        in-process memo (serving/recent.py) keeps its serialized payload and ETag, computed once."""
        if served.body.get("metrics") is None:
            return served
        with self._lock:
            known = self._memo.get(id(served))
            if known is not None and known[0] is served and known[1] == self._version:
                return known[2]
            version, targets = self._version, self.current
        result = Served(
            {**served.body, "targets": of_window(targets, query, served.body["metrics"])},
            served.outcome,
            served.fresh_until,
            served.db_ms,
        )
        with self._lock:
            if len(self._memo) > 4096:
                self._memo.clear()
            # Keyed by identity (a Served holds a dict: no hash), kept with it so that the id is
            # not reused while it is here.
            self._memo[id(served)] = (served, version, result)
        return result
