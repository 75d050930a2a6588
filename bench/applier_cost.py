"""The applier's cost per change-log row: the write mix of bench/write_cost.py run with no applier
until it has logged a backlog, then the backlog applied in full batches, unpaced, timed; for the
working tree and for each git revision of --revs, round after round on fresh clones of one shape.

    .venv/bin/python bench/applier_cost.py [--revs 9a1bd6c] [--seconds 30] [--rounds 2] \
        [--listings 1000000] [--stock 0.35] [--years 2] [--order random]

Per version: the log rows the mix left, the seconds to apply them, µs per row (the median over
rounds), and its ratio to the first version listed (the working tree). Nothing else should run
on the server meanwhile: the applier's time is wall time.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

import shapes
import write_cost as wc

from kpi_service.db.connections import SESSION_OPTIONS
from kpi_service.db.sql import APPLY, APPLY_BATCH


def backlog(service: wc.Service, template: str, args: argparse.Namespace, name: str) -> str:
    """A clone of the shape after `service`'s init-db, with the log of `args.seconds` of the mix."""
    url = shapes.clone(args.server, template, name)
    service.init_db(url)
    command = wc.pgbench_command(url, wc.MIX, wc.id_ranges(url), args.clients, args.seconds)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"pgbench failed: {done.stderr[-2000:]}")
    wc.checkpoint(url)
    return url


def drain(url: str) -> tuple[int, float]:
    """Apply the whole log in full batches; the rows and the seconds it took."""
    rows, started = 0, time.perf_counter()
    # As the service's sessions are (JIT off: its compile time would swamp a batch's plans).
    with psycopg.connect(url, autocommit=True, options=SESSION_OPTIONS) as conn:
        while True:
            with conn.transaction():
                for statement in APPLY[:-1]:
                    conn.execute(statement)
                taken = conn.execute(APPLY[-1], [APPLY_BATCH, 1.0]).fetchone()[0]
            rows += taken or 0
            if not taken:
                return rows, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shapes.add_arguments(parser)
    parser.add_argument("--revs", default="", help="git revisions to compare with the working tree, comma-separated")
    parser.add_argument("--seconds", type=float, default=30, help="seconds of the write mix (no applier)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--server", default=shapes.SERVER)
    args = parser.parse_args()
    template = shapes.default_name(args.listings, args.stock, args.years, args.order)
    shapes.ensure(args.server, template, args.listings, args.stock, args.years, args.order)
    services = [wc.Service()] + [wc.Service(rev) for rev in args.revs.split(",") if rev]
    per_row: dict[str, list[float]] = {s.describe(): [] for s in services}
    try:
        for round_ in range(args.rounds):
            for i, service in enumerate(services):
                name = f"{template}_apply{i}"
                url = backlog(service, template, args, name)
                rows, seconds = drain(url)
                shapes.drop(args.server, name)
                per_row[service.describe()].append(seconds / rows * 1e6)
                print(
                    f"round {round_ + 1} {service.describe()}: {rows:,} rows in {seconds:.2f} s,"
                    f" {per_row[service.describe()][-1]:.1f} µs per row",
                    flush=True,
                )
    finally:
        for service in services:
            service.close()
    base = statistics.median(per_row[services[0].describe()])
    print("\n| version | µs per log row (median) | ratio to the working tree |\n|---|---:|---:|")
    for version, values in per_row.items():
        print(f"| {version} | {statistics.median(values):.1f} | {statistics.median(values) / base:.2f} |")
    print(f"\nCommand: `{' '.join(['.venv/bin/python', 'bench/applier_cost.py', *sys.argv[1:]])}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
