"""Cache-miss reads (one execution of sql/runtime/kpi.sql) across data shapes: right after init-db, and
while the application writes.

    .venv/bin/python bench/read_shapes.py [--listings 1000000] [--runs 7] [--rate 100] \
        [--stocks 0.01,0.35] [--years 2,6] [--orders time,random]

Sweeps the shapes of bench/shapes.py (stock x years of history x physical order: 8 by default,
each built once and reused). For each, a fresh clone <shape>_read gets `kpi-service init-db`
(timed; no VACUUM of ours after it: the reads see what init-db leaves), then the KPI statement
is timed as the service runs it (bench/kpi_scale.py: the same statement and parameters as
Database.kpi_rows, on a connection with the service's SESSION_OPTIONS) for the cases of CASES
with "now" = 2026-11-25T00:00Z: all time, the last 30 days, 30 days a year before (in UTC and
with Berlin's 23:00 UTC edges), a 365-day daily history. Per case, the
first run (the first read after init-db, in phase a), then the median and p95 of --runs runs:

- (a) right after init-db, nothing else running;
- (b) while pgbench runs the application's write mix of bench/write_cost.py at --rate
  transactions per second (pgbench -R, 4 clients) with `kpi-service apply` running (a warning,
  and no applier, when the installed service has no such command).

After phase a, each case's rows are compared with the naive statement's (kpi_windows_raw, the
raw rows alone) in one snapshot; a difference stops the bench (a case whose raw statement runs
past --naive-limit seconds is reported as not compared). A row whose p95 exceeds its target
(all time 100 ms, 30 days 20 ms, daily history 250 ms) is flagged MISS. Prints a Markdown table
and writes bench/results/read_shapes-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kpi_scale
import shapes
import write_cost

from kpi_service.db.sql import kpi_statement_rows

# target p95, ms
CASES = {
    "all time": 100.0,
    "last 30 days": 20.0,
    "30 days a year ago": 20.0,
    "30 days a year ago, UTC+1": 20.0,
    "365-day daily history": 250.0,
}
PHASES = ("after init-db", "under writes")
WRITE_CLIENTS = 4


def p95(values: list[float]) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def time_cases(url: str, runs: int, budget: float) -> dict[str, dict[str, Any]]:
    """Each case's first run, and the median and p95 of the `runs` runs after it (ms)."""
    out = {}
    windows = kpi_scale.cases(shapes.UNTIL)
    with psycopg.connect(url, autocommit=True, row_factory=dict_row, options=kpi_scale.SESSION_OPTIONS) as conn:
        for case in CASES:
            first, times, _ = kpi_scale.samples(
                lambda w=windows[case]: kpi_scale.statement(conn, w), runs=runs, budget=budget
            )
            times = times or [first]  # a single slow run is the measurement (kpi_scale.timed)
            out[case] = {"first_ms": first, "median_ms": statistics.median(times), "p95_ms": p95(times), "times": times}
        out["_mode"] = kpi_scale.mode(conn)
    return out


def same_as_naive(url: str, limit: float) -> dict[str, float | None]:
    """Each case's rows from the summaries and from the raw rows alone (kpi_windows_raw), in one
    snapshot; the naive statement's seconds per case, None where it ran out of `limit` seconds
    (at ten million, all time from the raw rows takes minutes). Raises if any row differs."""
    windows = kpi_scale.cases(shapes.UNTIL)
    seconds: dict[str, float | None] = {}
    with psycopg.connect(url, row_factory=dict_row, options=kpi_scale.SESSION_OPTIONS) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        for case in CASES:
            summed = kpi_scale.statement(conn, windows[case])
            started = time.perf_counter()
            try:
                with conn.transaction():
                    conn.execute("SELECT set_config('statement_timeout', %s, true)", [f"{limit * 1000:.0f}"])
                    naive = kpi_statement_rows(conn, "raw", windows[case], kpi_scale.AGED_DAYS)
            except psycopg.errors.QueryCanceled:
                seconds[case] = None
                continue
            seconds[case] = time.perf_counter() - started
            if summed != naive:
                raise SystemExit(f"{case}: the summaries' rows differ from the raw statement's: {summed} != {naive}")
        conn.rollback()
    return seconds


def progress_totals(stderr: str) -> dict[str, Any]:
    """Rate, failures and schedule lag from pgbench's progress lines (-P): pgbench is stopped
    when the reads are done, before its final report."""
    lines = [line for line in stderr.splitlines() if line.startswith("progress:")]
    tps = [float(line.split(",")[1].split()[0]) for line in lines]
    failed = sum(int(part.split()[0]) for line in lines for part in line.split(",") if part.strip().endswith("failed"))
    lags = [float(part.split()[1]) for line in lines for part in line.split(",") if part.strip().startswith("lag")]
    return {
        "intervals": len(lines),
        "tps": statistics.mean(tps) if tps else float("nan"),
        "failed": failed,
        "max_interval_lag_ms": max(lags) if lags else None,
    }


def under_writes(
    service: write_cost.Service, url: str, args: argparse.Namespace, log_path: Path
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The cases timed while the write mix runs at args.rate with the applier; what pgbench did."""
    ids = write_cost.id_ranges(url)
    deadlocks = write_cost.database_counter(url, "deadlocks")
    # Longer than the reads can take; stopped as soon as they are done.
    command = write_cost.pgbench_command(
        url, write_cost.MIX, ids, WRITE_CLIENTS, seconds=86400, rate=args.rate, progress=1
    )
    with (
        write_cost.applier(service, url, log_path) as applied,
        tempfile.TemporaryFile("w+") as out,
        tempfile.TemporaryFile("w+") as err,
    ):
        pgbench = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        try:
            time.sleep(args.warmup)
            if pgbench.poll() is not None:
                err.seek(0)
                raise SystemExit(f"pgbench stopped early ({pgbench.returncode}): {err.read()[-2000:]}")
            timings = time_cases(url, args.runs, args.budget)
        finally:
            write_cost.stop_pgbench(pgbench)
        err.seek(0)
        stderr = err.read()
    writes = progress_totals(stderr)
    writes["deadlocks"] = write_cost.database_counter(url, "deadlocks") - deadlocks
    writes["errors"] = write_cost.parse_pgbench("", stderr, write_cost.PgbenchRun()).errors
    writes["applier"] = asdict(applied)
    writes["command"] = shlex.join(command)
    return timings, writes


def compared(naive: dict[str, float | None]) -> str:
    """Which cases were found equal to the raw statement."""
    left = [case for case, seconds in naive.items() if seconds is None]
    return "every case" if not left else "all but " + "; ".join(left) + " (raw statement over the limit)"


def label(stock: float, years: int, order: str) -> str:
    return f"stock {stock:.0%}, {years} y, {order}"


def report(results: list[dict[str, Any]]) -> str:
    lines = [
        "| shape | phase | case | first run (ms) | median (ms) | p95 (ms) | target (ms) | |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for shape in results:
        for phase in PHASES:
            for case, target in CASES.items():
                t = shape["phases"][phase][case]
                first = f"{t['first_ms']:.1f}" if phase == PHASES[0] else ""
                verdict = "ok" if t["p95_ms"] <= target else "**MISS**"
                lines.append(
                    f"| {shape['label']} | {phase} | {case} | {first} | {t['median_ms']:.1f} | {t['p95_ms']:.1f}"
                    f" | {target:g} | {verdict} |"
                )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listings", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7, help="timed runs per case, after the first")
    parser.add_argument("--rate", type=float, default=100, help="write transactions per second in phase b")
    parser.add_argument("--stocks", default="0.01,0.35")
    parser.add_argument("--years", default="2,6")
    parser.add_argument("--orders", default="time,random")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of writes before phase b's reads")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per case before stopping early")
    parser.add_argument("--keep", action="store_true", help="keep the _read databases afterwards")
    parser.add_argument(
        "--naive-limit", type=float, default=600.0, help="seconds the raw statement may take per case (comparison)"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="time on a _read database an earlier --keep run left (no init-db)"
    )
    parser.add_argument("--server", default=shapes.SERVER)
    args = parser.parse_args()
    # SIGTERM as Ctrl-C: the finally blocks stop pgbench and the applier, which would outlive us.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    command = shlex.join([".venv/bin/python", "bench/read_shapes.py", *sys.argv[1:]])
    started_at = datetime.now(UTC)
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    write_cost.RESULTS.mkdir(parents=True, exist_ok=True)
    log_path = write_cost.RESULTS / f"read_shapes-{stamp}-apply.log"
    sweep = [
        (float(stock), int(years), order)
        for stock in args.stocks.split(",")
        for years in args.years.split(",")
        for order in args.orders.split(",")
    ]
    service = write_cost.Service()
    service.has_apply()
    results = []
    for stock, years, order in sweep:
        name = shapes.default_name(args.listings, stock, years, order)
        shapes.ensure(args.server, name, args.listings, stock, years, order)
        if args.reuse:
            url, init_seconds = shapes.url_for(args.server, f"{name}_read"), float("nan")
            print(f"{name}_read: reused, as an earlier run's init-db left it", flush=True)
        else:
            url = shapes.clone(args.server, name, f"{name}_read")
            init_seconds = service.init_db(url)
            print(f"{name}_read: init-db {init_seconds:.1f} s", flush=True)
        after = time_cases(url, args.runs, args.budget)
        naive = same_as_naive(url, args.naive_limit)
        print(f"  equal to the raw statement (its seconds; None: not compared, over the limit): {naive}", flush=True)
        timings, writes = under_writes(service, url, args, log_path)
        for phase, found in zip(PHASES, (after, timings), strict=True):
            for case in CASES:
                t = found[case]
                print(
                    f"  {phase:<14} {case:<22} first {t['first_ms']:8.1f}  median {t['median_ms']:8.1f}"
                    f"  p95 {t['p95_ms']:8.1f} ms ({found['_mode']})",
                    flush=True,
                )
        print(
            f"  writes: {writes['tps']:.1f} tps, {writes['failed']} failed, {writes['deadlocks']} deadlocks,"
            f" max lag {writes['max_interval_lag_ms']} ms; applier {writes['applier']}",
            flush=True,
        )
        results.append(
            {
                "label": label(stock, years, order),
                "shape": name,
                "init_db_seconds": init_seconds,
                "naive_seconds": naive,
                "phases": {PHASES[0]: after, PHASES[1]: timings},
                "writes": writes,
            }
        )
        if not args.keep:
            shapes.drop(args.server, f"{name}_read")

    info = write_cost.machine(args.server)
    applier_note = (
        "`kpi-service apply` ran during phase b."
        if service.has_apply()
        else "`kpi-service apply` does not exist yet: no applier ran in phase b (the change log only grew)."
    )
    text = "\n".join(
        [
            "",
            f"KPI statement, {args.listings:,} listings per shape; {args.runs} runs per case after a first one;"
            f" phase b: the write mix at {args.rate:g} tx/s ({WRITE_CLIENTS} clients). {applier_note}",
            "",
            "| shape | init-db (s) | equal to the raw statement | phase b writes (tps) | failed | deadlocks |",
            "|---|---:|---|---:|---:|---:|",
            *(
                f"| {r['label']} | {r['init_db_seconds']:.1f} | {compared(r['naive_seconds'])}"
                f" | {r['writes']['tps']:.1f} | {r['writes']['failed']} | {r['writes']['deadlocks']} |"
                for r in results
            ),
            "",
            report(results),
            "",
            write_cost.describe_machine(info),
            f"Command: `{command}` ({started_at:%Y-%m-%d %H:%M} UTC)",
        ]
    )
    print(text)
    out = write_cost.RESULTS / f"read_shapes-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "command": command,
                "started_at": started_at.isoformat(),
                "args": vars(args),
                "applier": service.has_apply(),
                "machine": info,
                "results": results,
                "report": text,
            },
            indent=2,
        )
    )
    print(f"\nwritten: {out.relative_to(write_cost.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
