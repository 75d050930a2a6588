"""The KPI statement of several revisions timed on the same database, and their answers compared.

    .venv/bin/python bench/statement_revs.py --revs main,HEAD [--listings 1000000] [--stock 0.35] \
        [--years 2] [--order random] [--runs 9] [--keep]

A fresh copy <shape>_revs of a shape of bench/shapes.py gets this worktree's init-db (the
summaries of this version); then each case of bench/kpi_scale.py runs kpi_windows of each
revision's sql/runtime/kpi.sql (`git show REV:sql/runtime/kpi.sql`) on one connection with the
service's session settings, the revisions alternating run by run, after one untimed run each.
Prints the median and p95 per case and revision, and stops if two revisions' rows differ: a
faster statement must give the same numbers. A revision's statement must read what this
version installs. `--keep` keeps the copy (for EXPLAIN); `--db NAME` times on that database instead,
as this version's init-db left it (bench/read_shapes.py --keep leaves <shape>_read).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiosql
import psycopg
from psycopg.rows import dict_row

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kpi_scale
import read_shapes
import shapes

from kpi_service.db.schema import apply_schema
from kpi_service.db.sql import windows_rows


def statement_of(rev: str):  # an aiosql query function
    text = subprocess.run(
        ["git", "show", f"{rev}:sql/runtime/kpi.sql"], cwd=shapes.ROOT, check=True, capture_output=True, text=True
    ).stdout
    return aiosql.from_str(text, "psycopg").kpi_windows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shapes.add_arguments(parser)
    parser.add_argument("--revs", default="main,HEAD", help="comma-separated git revisions")
    parser.add_argument("--runs", type=int, default=9, help="timed runs per case and revision")
    parser.add_argument("--keep", action="store_true", help="keep the copy afterwards")
    parser.add_argument("--db", help="an initialized database to time on, instead of a fresh copy")
    parser.add_argument("--server", default=shapes.SERVER)
    args = parser.parse_args()
    revs = args.revs.split(",")
    statements = {rev: statement_of(rev) for rev in revs}
    if args.db:
        copy, url = None, shapes.url_for(args.server, args.db)
    else:
        name = shapes.default_name(args.listings, args.stock, args.years, args.order)
        shapes.ensure(args.server, name, args.listings, args.stock, args.years, args.order)
        copy = f"{name}_revs"
        url = shapes.clone(args.server, name, copy)
        started = time.perf_counter()
        apply_schema(url, aged_days=kpi_scale.AGED_DAYS)
        print(f"{copy}: init-db {time.perf_counter() - started:.1f} s", flush=True)
    print("| case | " + " | ".join(f"{rev}: median / p95 (ms)" for rev in revs) + " |")
    print("|---|" + "---:|" * len(revs))
    try:
        with psycopg.connect(url, autocommit=True, row_factory=dict_row, options=kpi_scale.SESSION_OPTIONS) as conn:
            for case, windows in kpi_scale.cases(shapes.UNTIL).items():
                times: dict[str, list[float]] = {rev: [] for rev in revs}
                answers = {rev: windows_rows(statements[rev], conn, windows, kpi_scale.AGED_DAYS) for rev in revs}
                if any(rows != answers[revs[0]] for rows in answers.values()):
                    raise SystemExit(f"{case}: the revisions' rows differ")
                for _ in range(args.runs):
                    for rev in revs:
                        t0 = time.perf_counter()
                        windows_rows(statements[rev], conn, windows, kpi_scale.AGED_DAYS)
                        times[rev].append((time.perf_counter() - t0) * 1000)
                cells = (f"{statistics.median(times[rev]):.1f} / {read_shapes.p95(times[rev]):.1f}" for rev in revs)
                print(f"| {case} | " + " | ".join(cells) + " |", flush=True)
    finally:
        if copy and not args.keep:
            shapes.drop(args.server, copy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
