"""In-process single-flight: concurrent calls for one key share one execution."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")


class SingleFlight:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, Future] = {}

    def do(self, key: str, fn: Callable[[], T], timeout: float) -> T:
        """fn(), run by the first caller for `key`; the others wait (up to `timeout` seconds) for
        its result or its exception."""
        with self._lock:
            future = self._calls.get(key)
            leader = future is None
            if leader:
                future = self._calls[key] = Future()
        if not leader:
            return future.result(timeout)
        try:
            result = fn()
        except BaseException as error:
            future.set_exception(error)
            raise
        else:
            future.set_result(result)
            return result
        finally:
            with self._lock:
                del self._calls[key]
