"""Stopping cleanly on Ctrl-C, SIGTERM and SIGHUP."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """A stop signal arrived. A KeyboardInterrupt, whatever the signal: no `except Exception`
    swallows it on its way up through the cleanups, and psycopg cancels a running query on it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Handler:
    def __init__(self) -> None:
        self.deferring = False
        self.pending: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        # One stop is enough: a second Ctrl-C must not interrupt the cleanup of the first.
        for each in SIGNALS:
            signal.signal(each, signal.SIG_IGN)
        if self.deferring:
            self.pending = signum
        else:
            raise Stopped(signum)


_handler = _Handler()


def stop_on_signals() -> None:
    """From now on a stop signal raises Stopped in the main thread (atexit alone would not run
    on SIGTERM or SIGHUP, and the embedded server would outlive us)."""
    for each in SIGNALS:
        signal.signal(each, _handler)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold a stop signal until the block is done (starting the server must not be cut in half:
    a half-started server has no owner left to stop it)."""
    _handler.deferring = True
    try:
        yield
    finally:
        _handler.deferring = False
        pending, _handler.pending = _handler.pending, None
    if pending is not None:
        raise Stopped(pending)
