"""The Redis key layout, version 1 (documented in the README for other services):
  kpi:v1:<kind>:<from|->:<to|->:<tz>:<aged_days>[:<interval>]
      JSON {"fresh_until": <unix seconds>, "seq": <change batch>, "body": <the 200 response, meta.cached false>}.
      Kept for KPI_STALE_TTL; fresh until `fresh_until` (KPI_CACHE_TTL after the computation),
      after which it is the last good answer.
  kpi:v1:lock:<same suffix>
      The single-flight lock of that key while one process computes it.
  kpi:v1:announce (pub/sub channel)
      JSON {"key", "kind", "window", "computed_at", "fresh_until"} after each fresh computation.
  kpi:v1:change_seq
      The number of the summaries' latest applied batch (INCR by the applier after its commit).
      A value stores the number it read before its SQL ran ("seq"): it includes every batch up
      to that one.
  kpi:v1:change_position
      With a read replica (DATABASE_READ_URL): the primary's WAL position (bytes) after that
      batch's commit, set before the INCR; a read on the replica waits until it has replayed it.
  kpi:v1:caught_up_at
      Unix time at which an applier last found the change log empty (set on every such tick): while
      rows are pending, every write committed before it is in the summaries, and the applier's
      lag is the time since (meta.includes_commits_before, /readyz, the metrics).
  kpi:v1:applier_turn
      SET NX PX KPI_APPLY_INTERVAL_MS by the applier that calls next: one call per interval
      across all instances (a backlog's further batches do not wait for it).
  kpi:v1:changed (pub/sub channel)
      JSON {"seq", "from", "to", "stock_from"} (instants, ISO 8601; or {"seq", "all": true})
      after each applied batch: what it changed, for live updates (live/hub.py).
  kpi:v1:ticket:<sha256 of a stream ticket>
      JSON {"sub", "exp"} of the token it was issued for; SET EX 30, consumed by GETDEL (live/tickets.py).
A value and its announcement are written by one script, so a reader never sees one without the
other, and only if the stored value was not computed later (cache.py, Cache.put).
"""

from __future__ import annotations

import functools

from kpi_service.serving.query import KpiQuery

KEY_PREFIX = "kpi:v1"
ANNOUNCE_CHANNEL = f"{KEY_PREFIX}:announce"
CHANGES_CHANNEL = f"{KEY_PREFIX}:changed"
CHANGE_SEQ = f"{KEY_PREFIX}:change_seq"
CHANGE_POSITION = f"{KEY_PREFIX}:change_position"
CAUGHT_UP = f"{KEY_PREFIX}:caught_up_at"
APPLIER_TURN = f"{KEY_PREFIX}:applier_turn"


@functools.lru_cache(maxsize=4096)
def cache_key(kind: str, query: KpiQuery) -> str:
    parts = [
        KEY_PREFIX,
        kind,
        query.date_from.isoformat() if query.date_from else "-",
        query.date_to.isoformat() if query.date_to else "-",
        query.tz,
        str(query.aged_days),
    ]
    if query.interval:
        parts.append(query.interval)
    return ":".join(parts)


def lock_key(key: str) -> str:
    return key.replace(f"{KEY_PREFIX}:", f"{KEY_PREFIX}:lock:", 1)
