"""What `compare` costs on a cache miss (docs/benchmarks.md, "A comparison's cache miss"):

    .venv/bin/python bench/compare_cost.py [--listings 1000000] [--runs 15] [--reuse]

On a fresh copy of a shape of bench/shapes.py (default: one million listings, 35% in stock, two
years, random physical order) after `kpi-service init-db`, the KPI statement is timed as the
service runs it (bench/kpi_scale.py, statement: Database.kpi_rows' statement and parameters) for
the windows a dashboard asks, with "now" the end of the shape's history (2026-11-25T00:00Z):
once for the window alone (GET /api/kpi) and once for the window and its compared window
(GET /api/kpi?compare=…, one statement of two windows, as serving/service.py builds them from
KpiQuery.windows), and for reference the compared window alone (what a second request for it
would cost). The three are run in turn, so that the machine's other load falls on all alike;
the table gives each median, the ratio of the comparison's miss to the window's (the issue's
bound: 1.3), and the comparison's miss against the two single-window requests it replaces.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import kpi_scale
import shapes
import write_cost

from kpi_service.serving.query import KpiQuery
from kpi_service.serving.windows import COMPARISONS

NOW = shapes.UNTIL
LAST = date(2026, 11, 24)  # the last whole day before NOW, in UTC
CASES = {
    "last 7 days": (date(2026, 11, 18), LAST),
    "last 30 days": (date(2026, 10, 26), LAST),
    "last 90 days": (date(2026, 8, 27), LAST),
    "this month so far": (date(2026, 11, 1), LAST),
    "last 365 days": (date(2025, 11, 25), LAST),
}


def spans(query: KpiQuery) -> list[kpi_scale.Window]:
    return [(w.start, w.end, w.as_of(NOW)) for w in query.windows]


def measure(conn: psycopg.Connection, zone: str, runs: int) -> list[dict[str, object]]:
    rows = []
    for case, (first, last) in CASES.items():
        alone = spans(KpiQuery(first, last, zone, kpi_scale.AGED_DAYS))
        for compare in COMPARISONS:
            both = spans(KpiQuery(first, last, zone, kpi_scale.AGED_DAYS, compare=compare))
            cases = {"alone": alone, "compared": both[1:], "both": both}
            for windows in cases.values():
                kpi_scale.statement(conn, windows)  # warm-up, untimed
            times: dict[str, list[float]] = {name: [] for name in cases}
            for _ in range(runs):
                for name, windows in cases.items():
                    started = time.perf_counter()
                    kpi_scale.statement(conn, windows)
                    times[name].append((time.perf_counter() - started) * 1000)
            one, other, two = (statistics.median(times[name]) for name in cases)
            row = {"case": case, "zone": zone, "compare": compare, "alone": one, "compared": other, "both": two}
            rows.append({**row, "ratio": two / one, "against_two": two / (one + other)})
            print(f"  {zone} {case}, {compare}: {one:.1f} / {other:.1f} / {two:.1f} ms, {two / one:.2f}x", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/postgres")
    shapes.add_arguments(parser)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--reuse", action="store_true", help="time on the _compare copy an earlier run left")
    args = parser.parse_args()
    name = shapes.default_name(args.listings, args.stock, args.years, args.order)
    if args.reuse:
        url = shapes.url_for(args.server, f"{name}_compare")
    else:
        shapes.ensure(args.server, name, args.listings, args.stock, args.years, args.order)
        url = shapes.clone(args.server, name, f"{name}_compare")
        print(f"{name}_compare: init-db {write_cost.Service().init_db(url):.1f} s", flush=True)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE)")
    results = []
    with psycopg.connect(url, autocommit=True, options=kpi_scale.SESSION_OPTIONS) as conn:
        conn.row_factory = psycopg.rows.dict_row
        for zone in ("UTC", "Europe/Berlin"):
            results += measure(conn, zone, args.runs)
    print()
    print("| window | zone | compare | window alone (ms) | compared alone | both, one statement | ratio | ÷ two |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['case']} | {r['zone']} | {r['compare']} | {r['alone']:.1f} | {r['compared']:.1f} | {r['both']:.1f}"
            f" | {r['ratio']:.2f} | {r['against_two']:.2f} |"
        )
    worst = max(r["ratio"] for r in results)  # type: ignore[type-var]
    print(f"\nworst ratio {worst:.2f} (bound 1.3)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
