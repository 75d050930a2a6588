"""What the pinned search path of the SECURITY DEFINER trigger functions costs the application's
writes: a one-row INSERT and a one-row UPDATE of `listings` per transaction, pgbench at
`--clients`, the trigger functions alternately with and without their `SET search_path`, on one
database after `kpi-service init-db`.

    .venv/bin/python bench/search_path_cost.py [--rounds 4] [--seconds 6] [--clients 2]

Prints each run's tps and the median ratio pinned / unpinned (1.0: no cost). The trigger
functions are left pinned, as init-db leaves them.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

import shapes

from kpi_service.db.schema import apply_schema

SCRIPT = """
INSERT INTO listings (price, status, listed_at) VALUES (100, 'active', now());
UPDATE listings SET price = price + 1 WHERE id = (SELECT max(id) FROM listings);
"""
FUNCTIONS = ("kpi.kpi_listings_inserted()", "kpi.kpi_listings_updated()")


def tps(url: str, script: Path, clients: int, seconds: float) -> float:
    out = subprocess.run(
        ["pgbench", "-n", "-c", str(clients), "-j", str(clients), "-T", str(int(seconds)), "-f", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(re.search(r"tps = ([0-9.]+)", out).group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--server", default=shapes.SERVER)
    args = parser.parse_args()
    name = "kpi_bench_search_path"
    shapes.drop(args.server, name)
    with psycopg.connect(args.server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = shapes.url_for(args.server, name)
    apply_schema(url)
    runs: dict[str, list[float]] = {"pinned": [], "unpinned": []}
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as script, psycopg.connect(url, autocommit=True) as conn:
        script.write(SCRIPT)
        script.flush()
        for _ in range(args.rounds):
            for variant in runs:
                for function in FUNCTIONS:
                    pinned = "SET search_path = kpi, pg_catalog, pg_temp"
                    setting = pinned if variant == "pinned" else "RESET search_path"
                    conn.execute(f"ALTER FUNCTION {function} {setting}")
                conn.execute("TRUNCATE kpi.kpi_changes")
                runs[variant].append(tps(url, Path(script.name), args.clients, args.seconds))
                print(f"{variant:9} {runs[variant][-1]:9.0f} tps", flush=True)
    shapes.drop(args.server, name)
    ratio = statistics.median(runs["pinned"]) / statistics.median(runs["unpinned"])
    print(f"median tps pinned / unpinned: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
