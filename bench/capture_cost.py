"""Where the write cost of bench/write_cost.py goes: the machine's CPU time per transaction of
the application's mixed write load, for each part of what the service adds, each run next to a
run on the bare copy.

    .venv/bin/python bench/capture_cost.py [--listings 1000000] [--stock 0.35] [--years 2] \
        [--order random] [--seconds 10] [--rounds 3]

Parts, on one copy after `kpi-service init-db` (the others on the bare copy of the same shape):

- indexes: the service's indexes, its triggers disabled;
- empty trigger: instead of the service's triggers, statement triggers with the same transition
  tables whose function does nothing: the least any trigger-based capture costs;
- capture: the service's triggers, no applier (the log is emptied between runs);
- paced: the triggers and `kpi-service apply` at the default KPI_APPLY_BUSY_PERCENT;
- unpaced: the same at KPI_APPLY_BUSY_PERCENT=100.

CPU time is the machine's (user, system and interrupts, from /proc/stat: pgbench, PostgreSQL's
backends and background processes, the applier) divided by the transactions pgbench completed.
It varies far less from run to run than tps on a shared machine, and at saturation tps follows
its inverse. Prints a Markdown table of the medians; ratio = with / bare.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import statistics
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

import shapes
import write_cost as wc

TABLES = ("listings", "leads", "purchases")
PARTS = ("indexes", "empty trigger", "capture", "paced", "unpaced")
EMPTY_TRIGGERS = """
CREATE OR REPLACE FUNCTION bench_empty_trigger() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['listings', 'leads', 'purchases'] LOOP
        EXECUTE format('CREATE OR REPLACE TRIGGER bench_empty_insert AFTER INSERT ON %I'
                       ' REFERENCING NEW TABLE AS new_rows'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION bench_empty_trigger()', t);
        EXECUTE format('CREATE OR REPLACE TRIGGER bench_empty_update AFTER UPDATE ON %I'
                       ' REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION bench_empty_trigger()', t);
        EXECUTE format('CREATE OR REPLACE TRIGGER bench_empty_delete AFTER DELETE ON %I'
                       ' REFERENCING OLD TABLE AS old_rows'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION bench_empty_trigger()', t);
    END LOOP;
END
$$;
"""


def cpu_jiffies() -> int:
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq, *_ = map(int, stat.readline().split()[1:])
    return user + nice + system + irq + softirq


def execute(url: str, statement: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement)


def use_triggers(url: str, which: str | None) -> None:
    """Enable the service's triggers ('kpi'), the empty ones ('empty') or neither (None); the
    TRUNCATE triggers stay as they are."""
    for table in TABLES:
        switches = [
            f"{'ENABLE ALWAYS' if which == owner else 'DISABLE'} TRIGGER {prefix}_{event}"
            for owner, prefix in (("kpi", f"kpi_{table}"), ("empty", "bench_empty"))
            for event in ("insert", "update", "delete")
        ]
        execute(url, f"ALTER TABLE {table} " + ", ".join(switches))


@contextlib.contextmanager
def part(service: wc.Service, url: str, name: str, log_path: Path) -> Iterator[None]:
    use_triggers(url, {"indexes": None, "empty trigger": "empty"}.get(name, "kpi"))
    execute(url, "TRUNCATE kpi.kpi_changes")  # what an earlier part left, applied or not
    if name in ("paced", "unpaced"):
        service.env["KPI_APPLY_BUSY_PERCENT"] = "100" if name == "unpaced" else "10"
        with wc.applier(service, url, log_path):
            yield
    else:
        yield


def measure(url: str, ids: dict[str, int], seconds: float) -> tuple[float, float]:
    """One run of the mixed load on 4 clients: (tps, CPU µs per transaction)."""
    wc.checkpoint(url)
    command = wc.pgbench_command(url, wc.MIX, ids, 4, seconds)
    before = cpu_jiffies()
    done = subprocess.run(command, capture_output=True, text=True)
    used = cpu_jiffies() - before
    run = wc.parse_pgbench(done.stdout, done.stderr, wc.PgbenchRun())
    if done.returncode != 0 or run.aborted or not run.transactions:
        raise SystemExit(f"pgbench failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return run.tps, used * 1e6 / 100 / run.transactions  # USER_HZ: 100 jiffies a second


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shapes.add_arguments(parser)
    parser.add_argument("--seconds", type=float, default=10, help="length of each run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server", default=shapes.SERVER)
    args = parser.parse_args()
    command = shlex.join([".venv/bin/python", "bench/capture_cost.py", *sys.argv[1:]])
    started_at = datetime.now(UTC)
    wc.RESULTS.mkdir(parents=True, exist_ok=True)
    log_path = wc.RESULTS / f"capture_cost-{started_at:%Y%m%dT%H%M%SZ}-apply.log"

    name = shapes.default_name(args.listings, args.stock, args.years, args.order)
    shapes.ensure(args.server, name, args.listings, args.stock, args.years, args.order)
    bare = shapes.clone(args.server, name, f"{name}_bare")
    kpi = shapes.clone(args.server, name, f"{name}_kpi")
    service = wc.Service()
    try:
        print(f"kpi-service init-db: {service.init_db(kpi):.1f} s", flush=True)
        execute(kpi, EMPTY_TRIGGERS)
        ids = wc.id_ranges(bare)
        info = wc.machine(bare)
        runs: dict[str, list[tuple[float, float]]] = {"bare": [], **{p: [] for p in PARTS}}
        for number in range(args.rounds):
            for name_of_part in PARTS:
                with part(service, kpi, name_of_part, log_path):
                    pair = [("bare", bare), (name_of_part, kpi)]
                    for side, url in pair if number % 2 == 0 else reversed(pair):
                        runs[side].append(measure(url, ids, args.seconds))
                        tps, cpu = runs[side][-1]
                        print(f"  round {number + 1} {side:<14} {tps:8.0f} tps {cpu:6.0f} µs CPU/tx", flush=True)
    finally:
        service.close()
        for database in (f"{name}_bare", f"{name}_kpi"):
            shapes.drop(args.server, database)

    base_tps = statistics.median(t for t, _ in runs["bare"])
    base_cpu = statistics.median(c for _, c in runs["bare"])
    lines = [
        "",
        f"Where the write cost goes: {args.listings:,} listings, stock {args.stock}, {args.years} years, "
        f"{args.order} order; the mixed load on 4 clients, {args.seconds:g} s runs, medians of {args.rounds} "
        f"round(s) (bare: of all {len(runs['bare'])} runs).",
        "",
        "| part | tps | CPU µs per transaction | CPU ratio | tps ratio |",
        "|---|---:|---:|---:|---:|",
        f"| bare tables | {base_tps:.0f} | {base_cpu:.0f} | 1.00 | 1.00 |",
    ]
    for name_of_part in PARTS:
        tps = statistics.median(t for t, _ in runs[name_of_part])
        cpu = statistics.median(c for _, c in runs[name_of_part])
        lines.append(f"| {name_of_part} | {tps:.0f} | {cpu:.0f} | {cpu / base_cpu:.2f} | {tps / base_tps:.2f} |")
    lines += ["", wc.describe_machine(info), f"Command: `{command}` ({started_at:%Y-%m-%d %H:%M} UTC)"]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
