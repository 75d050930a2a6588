"""What the summaries' audit costs: one whole pass over a shape of bench/shapes.py, slice by slice
(a UTC day each, sql/schema/summary.sql, kpi_audit), timed; and, as a baseline measured in the
same run, what a rebuild of the same summaries takes (the only other way to know they are right).

    .venv/bin/python bench/audit_cost.py [--listings 1000000] [--stock 0.35] [--years 2] [--order random] \
        [--interval 30]

On a fresh clone of the shape after `kpi-service init-db`, the audit runs as the applier runs it
(kpi_apply_changes with kpi.audit_seconds set, in REPEATABLE READ, each call its own
transaction) with no pause between slices, until the pass ends. Reported: the slices, the
pass's wall time (a single backend: its CPU time, nothing else running), the median and p95
of a slice, the repairs (0 on summaries the applier built), what the audit costs per hour at
--interval seconds between slices (the service's KPI_AUDIT_INTERVAL_S), how long a whole pass
takes at that interval, and the rebuild's time against the pass's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

import shapes
import write_cost as wc


def audit_pass(url: str, slices: int | None = None) -> tuple[list[float], int]:
    """Every slice of one pass (or its first `slices`), timed (seconds), and the rows it repaired."""
    durations: list[float] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET kpi.audit_seconds = 0")
        while True:
            started = time.perf_counter()
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                conn.execute("SELECT kpi.kpi_apply_changes()")
                found = json.loads(conn.execute("SELECT current_setting('kpi.audited', true)").fetchone()[0])
            if found.get("pass_ended"):
                return durations, found["repairs"]
            durations.append(time.perf_counter() - started)
            if slices is not None and len(durations) == slices:
                return durations, conn.execute("SELECT pass_repairs FROM kpi.kpi_audit_state").fetchone()[0]


def rebuild_seconds(url: str) -> float:
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction(force_rollback=True):
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        started = time.perf_counter()
        conn.execute("SELECT kpi.kpi_rebuild()")
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shapes.add_arguments(parser)
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between slices (KPI_AUDIT_INTERVAL_S)")
    parser.add_argument("--server", default=shapes.SERVER)
    parser.add_argument(
        "--slices", type=int, help="audit only the first N days and extrapolate the pass (and skip the rebuild)"
    )
    args = parser.parse_args()
    template = shapes.ensure(args.server, None, args.listings, args.stock, args.years, args.order)
    url = shapes.clone(args.server, template.rsplit("/", 1)[-1], f"{template.rsplit('/', 1)[-1]}_audit")
    service = wc.Service()
    print(f"init-db: {service.init_db(url):.1f} s", flush=True)
    durations, repairs = audit_pass(url, args.slices)
    with psycopg.connect(url) as conn:
        days = conn.execute("SELECT count(*) FROM kpi.kpi_sums WHERE grain = 86400").fetchone()[0]
    total = statistics.fmean(durations) * days if args.slices else sum(durations)
    median = statistics.median(durations)
    p95 = statistics.quantiles(durations, n=20)[-1]
    per_hour = 3600 / args.interval * statistics.fmean(durations)
    rebuild = None if args.slices else rebuild_seconds(url)
    audited = f"{len(durations)} of {days} days audited, {repairs} rows repaired"
    print(f"\n{args.listings:,} listings, {args.years} years; {audited}\n")
    print("| measure | value |")
    print("|---|---|")
    print(f"| one pass, back to back{' (extrapolated)' if args.slices else ''} | {total:.1f} s |")
    print(f"| a slice (a UTC day), median / p95 | {median * 1000:.0f} / {p95 * 1000:.0f} ms |")
    print(f"| the audit's time per hour at {args.interval:g} s between slices | {per_hour:.1f} s/h |")
    print(f"| a whole pass at that interval | {days * args.interval / 3600:.1f} h |")
    if rebuild is not None:
        baseline = f"{rebuild:.1f} s; a pass takes {total / rebuild:.2f} of it"
        print(f"| a rebuild of the same summaries (baseline) | {baseline} |")
    shapes.drop(args.server, url.rsplit("/", 1)[-1])


if __name__ == "__main__":
    main()
