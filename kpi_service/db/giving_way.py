"""Statements of init-db and uninstall that lock the application's tables, made to give way.

While a DDL statement waits for its lock, every write of the application queued behind it waits
too; and a service statement that waits for a lock one application transaction holds, while
holding a lock another statement of that transaction then asks for, is a deadlock whose victim
PostgreSQL picks. So each such step runs with a lock_timeout well under the server's
deadlock_timeout: the service's statement stops waiting first (its locks go with its
transaction), before the deadlock detector runs, and the step is tried again after a pause that
doubles, until RETRY_FOR_S have passed."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg

from kpi_service.db.errors import LockNotGranted

T = TypeVar("T")

LOCK_TIMEOUT_MS = 50
# How long a step keeps retrying for its locks before giving up (running the command again finishes it).
RETRY_FOR_S = 120.0


def lock_timeout_ms(conn: psycopg.Connection) -> int:
    """LOCK_TIMEOUT_MS, or half the server's deadlock_timeout where that is shorter."""
    deadlock_ms = conn.execute("SELECT setting::int FROM pg_settings WHERE name = 'deadlock_timeout'").fetchone()[0]
    return max(1, min(LOCK_TIMEOUT_MS, deadlock_ms // 2))


def giving_way(
    conn: psycopg.Connection,
    attempt: Callable[[], T],
    what: str,
    *,
    command: str,
    transaction: bool = True,
    say: Callable[[str], None] | None = None,
) -> T:
    """`attempt()` on an autocommit connection (in one transaction unless told not), with a short
    lock_timeout, again after a random pause whenever it waited that long for a lock. `say` is
    told the first time, so that an operator knows what the command is waiting for."""
    previous = conn.execute("SELECT current_setting('lock_timeout')").fetchone()[0]
    conn.execute("SELECT set_config('lock_timeout', %s, false)", [f"{lock_timeout_ms(conn)}ms"])
    deadline = time.monotonic() + RETRY_FOR_S
    pause = 0.01
    gave_way = False
    try:
        while True:
            try:
                if transaction:
                    with conn.transaction():
                        return attempt()
                return attempt()
            # (A deadlock too, in case the server's deadlock_timeout is as short as ours.)
            except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
                if say is not None and not gave_way:
                    say(f"{what}: giving way to the application's transactions, trying again for {RETRY_FOR_S:g} s")
                gave_way = True
                if time.monotonic() > deadline:
                    raise LockNotGranted(
                        f"{what}: the application held a conflicting lock at every try for {RETRY_FOR_S:g} s;"
                        f" run {command} again at a quieter time (it finishes what this one left)"
                    ) from None
                time.sleep(pause * (0.5 + random.random()))
                pause = min(pause * 2, 1.0)
    finally:
        conn.execute("SELECT set_config('lock_timeout', %s, false)", [previous])
