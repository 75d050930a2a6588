"""Cache-miss benchmark of the KPI computation at scale (docs/benchmarks.md).

    .venv/bin/python bench/kpi_scale.py [--sizes 100000,1000000] [--runs 7] [--server URL]

For each size, a database kpi_bench_<size> on the server holds the seeder's data (built once:
reused while its parameters, recorded in the table bench_meta, are the same). Then, warm
(one untimed run first), the median of --runs runs of sql/runtime/kpi.sql for four cases: all time,
the last 365 days, the last 30 days and a 365-bucket daily history; and in the same run two
baselines on the same data: ten queries (one per metric, bench/per_metric.sql) and the
frontend's old way (fetch the rows, compute in Python: bench/python_baseline.py).

"Now" is the end of the seeded history (--until), so that runs on other days measure the same
thing. A case whose runs exceed --budget seconds stops early, after at least 3 runs, and one whose
warm-up alone exceeds it is measured by that single run; the table says how many runs each
median took.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import weakref
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosql
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import python_baseline

from kpi_service.cli.seed import seed
from kpi_service.db.connections import SESSION_OPTIONS as SERVICE_SESSION_OPTIONS
from kpi_service.db.schema import apply_schema
from kpi_service.db.sql import kpi_statement_rows

# The service's session settings, with the sales tables' schema searched too: the baselines (ten
# queries, Python) name them without a schema, as the service's statements no longer do.
SESSION_OPTIONS = f"{SERVICE_SESSION_OPTIONS} -c search_path=kpi,pg_catalog,public"
# The mode alone (kpi_service/db/sql.py, MODE, reads the schema version too).
SOURCE = "SELECT kpi.kpi_source() AS mode"

UNTIL = datetime(2026, 11, 25, tzinfo=UTC)
SEED = 1
AGED_DAYS = 60
per_metric = aiosql.from_path(Path(__file__).resolve().parent / "per_metric.sql", "psycopg")
Window = tuple[datetime | None, datetime | None, datetime]
_modes: weakref.WeakKeyDictionary[psycopg.Connection, str] = weakref.WeakKeyDictionary()


def cases(now: datetime) -> dict[str, list[Window]]:
    day, hour = timedelta(days=1), timedelta(hours=1)
    first = now - 365 * day
    return {
        "all time": [(None, None, now)],
        "last 365 days": [(now - 365 * day, now, now)],
        "last 30 days": [(now - 30 * day, now, now)],
        # A window in the past: most of its buyers come back after it (the links leaving it). As
        # of its end, as the service asks (min(end, now)): aged_inventory then, not now.
        "30 days a year ago": [(now - 395 * day, now - 365 * day, now - 365 * day)],
        # The same in Europe/Berlin's winter: its edges are 23:00 UTC, inside UTC days.
        "30 days a year ago, UTC+1": [(now - 395 * day - hour, now - 365 * day - hour, now - 365 * day - hour)],
        "365-day daily history": [(first + i * day, first + (i + 1) * day, first + (i + 1) * day) for i in range(365)],
    }


def ensure_database(server: str, listings: int) -> str:
    """kpi_bench_<listings>, seeded unless it already holds the same parameters' rows."""
    name = f"kpi_bench_{listings}"
    with psycopg.connect(server, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(server, dbname=name)
    apply_schema(url)  # idempotent: new indexes of sql/ reach an old bench database too
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_meta (listings bigint, seed bigint, until timestamptz)")
        row = conn.execute("SELECT listings, seed, until FROM bench_meta").fetchone()
        if row == (listings, SEED, UNTIL):
            print(f"{name}: reusing the seeded data ({listings:,} listings, seed {SEED}, until {UNTIL:%Y-%m-%d})")
            # New indexes and summaries: the visibility map for index-only scans, and statistics.
            conn.execute("VACUUM (ANALYZE) listings, leads, purchases, kpi.kpi_sums, kpi.kpi_buyer_buckets")
            return url
    print(f"{name}: seeding {listings:,} listings ...", flush=True)
    done = seed(url, listings, seed=SEED, until=UNTIL, truncate=True)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM bench_meta")
        conn.execute("INSERT INTO bench_meta VALUES (%s, %s, %s)", [listings, SEED, UNTIL])
    print(f"{name}: seeded in {done.seconds:.1f} s {done.rows}")
    return url


def samples(action: Callable[[], Any], runs: int, budget: float) -> tuple[float, list[float], Any]:
    """Milliseconds of the warm-up run and of up to `runs` warm runs after it (fewer, at least 3,
    past `budget` seconds; none when even the warm-up took longer than `budget`), and the last
    result. bench/read_shapes.py uses the warm-up's time too: the first read after init-db."""
    t0 = time.perf_counter()
    result = action()  # warm-up
    first = (time.perf_counter() - t0) * 1000
    if first > budget * 1000:  # a baseline that takes minutes: its one run is the measurement
        return first, [], result
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < runs:
        t0 = time.perf_counter()
        result = action()
        times.append((time.perf_counter() - t0) * 1000)
        if len(times) >= 3 and time.perf_counter() - started > budget:
            break
    return first, times, result


def timed(action: Callable[[], Any], runs: int, budget: float) -> tuple[float, int, Any]:
    """Median milliseconds of `runs` warm runs (fewer, at least 3, past `budget` seconds; a single
    run when even the warm-up took longer than `budget`)."""
    first, times, result = samples(action, runs, budget)
    if not times:
        return first, 1, result
    return statistics.median(times), len(times), result


def mode(conn: psycopg.Connection) -> str:
    """ "summaries" or "raw": which statement the service runs on this database (db/connections.py
    MODE), looked up once per connection, as the service does not look it up per request."""
    if conn not in _modes:
        (_modes[conn],) = conn.execute(SOURCE).fetchone().values()
    return _modes[conn]


def statement(conn: psycopg.Connection, windows: list[Window]) -> list[Any]:
    """sql/runtime/kpi.sql as Database.kpi_rows (db/connections.py) runs it (the other benches call this)."""
    return kpi_statement_rows(conn, mode(conn), windows, AGED_DAYS)


def ten_queries(conn: psycopg.Connection, windows: list[Window]) -> list[Any]:
    out = []
    for lo, hi, as_of in windows:
        row = {
            name: getattr(per_metric, name)(conn, lo=lo, hi=hi)
            for name in (
                "total_listings",
                "average_price",
                "total_value",
                "scoring_rate",
                "average_score",
                "average_profit_per_unit",
                "lead_to_purchase_time",
                "conversion_rate",
                "active_buyers",
            )
        }
        row["aged_inventory"] = per_metric.aged_inventory(conn, as_of=as_of, aged_days=AGED_DAYS)
        out.append(row)
    return out


def in_python(conn: psycopg.Connection, windows: list[Window]) -> list[Any]:
    rows = python_baseline.Rows(conn)
    return [python_baseline.kpis(rows, lo, hi, as_of, AGED_DAYS) for lo, hi, as_of in windows]


def normalized(row: Any) -> dict[str, Any]:
    return {key: float(value) for key, value in dict(row).items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="listings per dataset, comma separated")
    parser.add_argument("--runs", type=int, default=7, help="timed runs per case (median), after one warm-up")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per case before stopping early")
    parser.add_argument(
        "--no-history-baselines",
        action="store_true",
        help="time only the statement for the daily history (its baselines take minutes per run at 1M)",
    )
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    results: dict[tuple[int, str], dict[str, tuple[float, int]]] = {}
    for size in sizes:
        url = ensure_database(args.server, size)
        # The service's session settings (read-only, no JIT).
        with psycopg.connect(url, autocommit=True, row_factory=psycopg.rows.dict_row, options=SESSION_OPTIONS) as conn:
            for case, windows in cases(UNTIL).items():
                timings = {}
                methods = [("statement", statement), ("ten queries", ten_queries), ("python", in_python)]
                if args.no_history_baselines and len(windows) > 1:
                    methods = methods[:1]
                for label, method in methods:
                    median, runs, rows = timed(lambda m=method, w=windows: m(conn, w), args.runs, args.budget)
                    timings[label] = (median, runs)
                    if label == "statement":
                        reference = [normalized(r) for r in rows]
                    elif [normalized(r) for r in rows] != reference:
                        print(f"  MISMATCH: {label} differs from the statement for {case}")
                    print(f"  {size:>9,} {case:<22} {label:<12} {median:10.1f} ms  ({runs} runs)", flush=True)
                results[(size, case)] = timings
    print()
    print("| listings | case | statement (ms) | ten queries (ms) | ratio | Python (ms) | ratio | growth x10 data |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for size in sizes:
        for case in cases(UNTIL):
            t = results[(size, case)]
            nan = (float("nan"), 0)
            s, q, p = t["statement"][0], t.get("ten queries", nan)[0], t.get("python", nan)[0]
            smaller = [x for x in sizes if x < size]
            growth = f"{s / results[(smaller[-1], case)]['statement'][0]:.1f}" if smaller else ""
            runs = "/".join(str(t.get(k, nan)[1]) for k in ("statement", "ten queries", "python"))
            print(
                f"| {size:,} | {case} | {s:.1f} | {q:.1f} | {q / s:.1f} | {p:.0f} | {p / s:.0f} | {growth} |"
                f" <!-- runs {runs} -->"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
