"""How long a committed change takes to reach the summaries (and so the next cache miss), while
the application writes at a steady rate and `kpi-service apply` runs as in production.

    .venv/bin/python bench/freshness.py [--listings 1000000] [--rate 100] [--probes 200]

On a fresh clone of a bench/shapes.py shape after `kpi-service init-db`, the write mix of
bench/write_cost.py runs at --rate transactions per second. Meanwhile a probe commits, one at
a time and a random 0-0.5 s apart, a listing at an instant of its own (a 15-minute bucket of
1990 that nothing else uses), then polls kpi_sums every 5 ms until that bucket counts it: the
time from the commit returning to the bucket showing it is the freshness of that change. A
cache miss computed after that instant includes the change. Prints p50, p95, p99 and the
maximum, then, once the writes have stopped and the applier has drained the log, whether the
summaries equal a rebuild from the sales tables (rolled back). Results also go to
bench/results/freshness-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

import shapes
import write_cost

PROBE_EPOCH = datetime(1990, 1, 1, tzinfo=UTC)
VISIBLE = "SELECT listings FROM kpi.kpi_sums WHERE grain = 900 AND bucket = %s"
SUMMARIES = (
    "SELECT * FROM kpi.kpi_sums ORDER BY 1, 2",
    "SELECT * FROM kpi.kpi_buyer_buckets ORDER BY 1, 2",
    "SELECT * FROM kpi.kpi_sales ORDER BY 1",
    "SELECT * FROM kpi.kpi_purchase_facts ORDER BY 1",
    "SELECT * FROM kpi.kpi_conversions ORDER BY 1",
)


def probe(url: str, count: int, timeout: float) -> list[float]:
    """Seconds from each probe's commit to its bucket counting it."""
    delays = []
    with psycopg.connect(url, autocommit=True) as conn:
        for k in range(count):
            bucket = PROBE_EPOCH + timedelta(minutes=15 * k)
            conn.execute("INSERT INTO listings (price, status, listed_at) VALUES (1, 'withdrawn', %s)", [bucket])
            committed = time.perf_counter()
            while not (row := conn.execute(VISIBLE, [bucket]).fetchone()):
                if time.perf_counter() - committed > timeout:
                    raise SystemExit(f"probe {k}: not applied after {timeout} s")
                time.sleep(0.005)
            assert row == (1,)
            delays.append(time.perf_counter() - committed)
            time.sleep(random.uniform(0, 0.5))
    return delays


def equals_rebuild(url: str) -> bool:
    with psycopg.connect(url) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # kpi.kpi_rebuild's rule
        applied = [conn.execute(q).fetchall() for q in SUMMARIES]
        conn.execute("SELECT kpi.kpi_rebuild()")
        rebuilt = [conn.execute(q).fetchall() for q in SUMMARIES]
        conn.rollback()
    return applied == rebuilt


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=shapes.SERVER)
    shapes.add_arguments(parser)
    parser.add_argument("--rate", type=float, default=100.0, help="the application's writes, transactions/s")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=60.0, help="a probe not applied by then fails the run")
    args = parser.parse_args()

    random.seed(1)
    name = shapes.default_name(args.listings, args.stock, args.years, args.order)
    shapes.ensure(args.server, name, args.listings, args.stock, args.years, args.order)
    url = shapes.clone(args.server, name, f"{name}_fresh")
    service = write_cost.Service()
    init_seconds = service.init_db(url)
    ids = write_cost.id_ranges(url)
    command = write_cost.pgbench_command(url, write_cost.MIX, ids, args.clients, seconds=86400, rate=args.rate)
    write_cost.RESULTS.mkdir(exist_ok=True)
    with (
        write_cost.applier(service, url, write_cost.RESULTS / "apply.log") as applied,
        tempfile.TemporaryFile("w+") as out,
    ):
        pgbench = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            time.sleep(5)  # the rate reached, the applier in its rhythm
            delays = probe(url, args.probes, args.timeout)
        finally:
            pgbench.send_signal(signal.SIGTERM)
            pgbench.wait()
    exact = equals_rebuild(url)
    figures = {
        "probes": len(delays),
        "p50_ms": round(1000 * statistics.median(delays), 1),
        "p95_ms": round(1000 * percentile(delays, 95), 1),
        "p99_ms": round(1000 * percentile(delays, 99), 1),
        "max_ms": round(1000 * max(delays), 1),
        "equals_rebuild_after_writes": exact,
    }
    print(f"shape {name}, init-db {init_seconds:.1f} s, writes at {args.rate:g} tx/s ({args.clients} clients)")
    print(json.dumps(figures))
    out_path = write_cost.RESULTS / f"freshness-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out_path.write_text(
        json.dumps(
            {**figures, "shape": name, "rate": args.rate, "command": shlex.join(command), "applier": asdict(applied)},
            indent=2,
        )
        + "\n"
    )
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
