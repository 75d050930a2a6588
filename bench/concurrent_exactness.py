"""Numbers that cannot drift (issue 33): concurrent writers of every kind, VACUUMs and the
service's own applier, then every window of the summaries against the raw rows.

    .venv/bin/python bench/concurrent_exactness.py                      # 40 s, 6 writer threads, both zones
    .venv/bin/python bench/concurrent_exactness.py --seconds 10 --writers 4 --processes --timezones UTC

Per server TimeZone (`ALTER DATABASE ... SET timezone`; Europe/Berlin and UTC by default), in a
scratch database of its own after init-db: ~3,000 listings seeded around March 2026 with buyers,
leads and purchases (Berlin's and New York's DST changes inside); the service (`create_app`, as a
gunicorn worker makes it) running its applier at the default KPI_APPLY_INTERVAL_MS and
KPI_APPLY_BUSY_PERCENT, against a private redis-server (as in production; --no-redis for the
in-process stand-in); then --writers writers (threads, or processes with --processes) for --seconds, each a
random mix of every kind of change in autocommit transactions (tests/concurrent_workload.py:
inserts, a row updated twice in one and in two transactions, new buyers' leads deleted a fraction
of a second later, instants moved by hours and days across the DST days, sales, withdrawals and
relistings, costs changed and NULLed, bulk price updates, upserts, COPY, deletes), and a thread
that VACUUMs the change log and the sales tables every 1-4 s. Then the writes stop, the applier
drains the log, and for 12 windows (three Berlin weeks in three zones, both DST days, all time)
and aged_days 60 and 30, the KPI statement on the summaries is compared with the raw statement
and with the service's HTTP answer, and the summaries' tables with a rebuild (rolled back).

The writers' own failures (a foreign key or unique key raced by another writer, a deadlock) are
the application's business: counted, not retried. Prints a Markdown table, writes everything to
bench/results/concurrent_exactness-<time>.json, and exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.concurrent_workload import RunResult, run  # noqa: E402
from tests.helpers import RedisServer  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def table(results: list[RunResult]) -> str:
    lines = [
        "| server TimeZone | writers | seconds | transactions | tx/s | failed | log rows applied during the writes"
        " (batches) | left at stop | drained in (s) | windows compared (HTTP) | mismatches |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        kind = "processes" if r.processes else "threads"
        lines.append(
            f"| {r.timezone} | {r.writers} {kind} | {r.seconds:g} | {r.counts.transactions:,} | {r.tx_per_s:,.0f}"
            f" | {sum(r.counts.failed.values())} | {r.applied_during_writes:,} ({r.batches_during_writes})"
            f" | {r.left_at_stop:,} | {r.drain_seconds:.1f}"
            f" | {r.comparison.windows} ({r.comparison.http}) + {len(r.rebuild_tables)} tables | {len(r.mismatches)} |"
        )
    return "\n".join(lines)


def summary(result: RunResult) -> dict[str, Any]:
    # (Not asdict on the counts: it rebuilds a Counter from its items, counting the pairs.)
    data = {k: v for k, v in vars(result).items() if k not in ("counts", "comparison")}
    return {
        **data,
        "transactions": result.counts.transactions,
        "tx_per_s": round(result.tx_per_s, 1),
        "failed": dict(result.counts.failed),
        "committed_by_kind": dict(result.counts.kinds),
        "windows_compared": result.comparison.windows,
        "http_compared": result.comparison.http,
        "summary_tables_compared": list(result.rebuild_tables),
        "mismatches": result.mismatches,
        "windows": result.comparison.rows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--timezones", default="Europe/Berlin,UTC", help="server TimeZone of each run, comma-separated")
    parser.add_argument("--listings", type=int, default=3000)
    parser.add_argument("--writers", type=int, default=6)
    # Six threads gave the highest rate on the 2-core development machine (docs/benchmarks.md):
    # the work is PostgreSQL's, and processes of their own gained nothing.
    parser.add_argument("--processes", action="store_true", help="writers as processes of their own, not threads")
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--no-redis", action="store_true", help="the service's in-process Redis stand-in")
    parser.add_argument(
        "--busy-percent",
        type=int,
        default=None,
        help="KPI_APPLY_BUSY_PERCENT for the service (default: unset, the service's own default)",
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    redis = None
    if not args.no_redis:
        if not shutil.which("redis-server"):
            raise SystemExit("redis-server is not installed (or pass --no-redis)")
        # Its own: the service's keys (the applier's turn, the change announcements) are not
        # shared with whatever else uses the machine's Redis.
        redis = RedisServer()
        redis.start()
    results = []
    try:
        for timezone in args.timezones.split(","):
            results.append(
                run(
                    args.server,
                    timezone,
                    listings=args.listings,
                    writers=args.writers,
                    processes=args.processes,
                    seconds=args.seconds,
                    redis_url=redis.url if redis else None,
                    busy_percent=args.busy_percent,
                    seed_value=args.seed,
                    progress=lambda message: print(message, flush=True),
                )
            )
    finally:
        if redis is not None:
            redis.stop()

    revision = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print()
    print(table(results))
    for r in results:
        print(
            f"\n{r.timezone}: failed transactions {dict(r.counts.failed)}; VACUUM rounds {r.vacuums};"
            f" peak log backlog {r.backlog_max:,}"
        )
        for mismatch in r.mismatches:
            print(f"  MISMATCH {mismatch}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"concurrent_exactness-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(
        json.dumps(
            {"revision": revision, "command": sys.argv, "runs": [summary(r) for r in results]}, indent=2, default=str
        )
        + "\n"
    )
    print(f"\nwritten to {out}")
    return 1 if any(r.mismatches for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
