"""The process's one pool of refresh threads: a poller's expired window (KpiService) and a stream's
due window (live/hub.py) are recomputed here, off the request and listener threads, so a slow
window never holds up the others. At most one refresh per key at a time."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

# Two for the pollers' refreshes and two for the streams', as when each had its own pool.
WORKERS = 4


class Refresher:
    def __init__(self, workers: int = WORKERS) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kpi-refresh")
        self._running: set[Hashable] = set()
        self._lock = threading.Lock()

    def claim(self, key: Hashable) -> bool:
        """Reserve `key` for one refresh; False while another refresh of it is claimed."""
        with self._lock:
            if key in self._running:
                return False
            self._running.add(key)
            return True

    def release(self, key: Hashable) -> None:
        """Give up a claim without running (or once run)."""
        with self._lock:
            self._running.discard(key)

    def run(self, key: Hashable, refresh: Callable[[], None]) -> bool:
        """Run a claimed key's refresh on the pool, releasing the claim after it; False (claim
        released, nothing run) once the pool is shut down."""

        def job() -> None:
            try:
                refresh()
            finally:
                self.release(key)

        try:
            self._executor.submit(job)
        except RuntimeError:  # shutting down
            self.release(key)
            return False
        return True

    def submit(self, refresh: Callable[[], None]) -> bool:
        """Run an unkeyed refresh (its caller tracks what is in flight); False once shut down."""
        try:
            self._executor.submit(refresh)
        except RuntimeError:
            return False
        return True

    def close(self) -> None:
        """Finish the refreshes running and queued; none is accepted from now on."""
        self._executor.shutdown(wait=True)
