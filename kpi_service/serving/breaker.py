"""The circuit breaker in front of Redis (serving/cache.py)."""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


class Breaker:
    """Skips Redis for `retry_after` seconds after a failure, then lets one call try it again.

    Not pybreaker: its CircuitBreaker.call holds one lock across the wrapped call, which made
    every Redis round trip of a process wait for the one before it (eight 100 ms GETs took
    0.8 s). Here the lock guards only the state. One line is logged when Redis goes away and
    one when it is back, not one per request.
    """

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        self._lock = threading.Lock()
        self._down = False
        self._retry_at = 0.0

    @property
    def closed(self) -> bool:
        return not self._down

    def allow(self) -> bool:
        if not self._down:
            return True
        with self._lock:
            if self._down and time.monotonic() >= self._retry_at:
                self._retry_at = time.monotonic() + self.retry_after  # this call is the one trial
                return True
        return False

    def failed(self) -> None:
        with self._lock:
            if not self._down:
                log.warning("redis unavailable; serving from the database until it is back")
            self._down = True
            self._retry_at = time.monotonic() + self.retry_after

    def succeeded(self) -> None:
        if self._down:
            with self._lock:
                if self._down:
                    log.warning("redis is back")
                self._down = False

    def retry_now(self) -> None:
        """Let the next call try Redis at once (as it would after `retry_after`)."""
        self._retry_at = 0.0
