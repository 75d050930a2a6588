"""Throughput of a cached, authenticated GET /api/kpi against a hello-world Flask endpoint,
both served by the same gunicorn configuration (gunicorn.conf.py), measured with wrk in one run.

    .venv/bin/python bench/hot_path.py [--seconds 10] [--rounds 3] [--connections 32]

Needs wrk (apt-get install wrk), the local PostgreSQL and Redis. The rounds alternate between
the two servers so that drift of the machine affects both alike; the ratio is of the medians.
The environment passes through (KPI_LOG_LEVEL=WARNING measures without the request log).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jwt
import psycopg
from psycopg import sql

ROOT = Path(__file__).parents[1]
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
SECRET = "bench-secret-bench-secret-bench-secret"
SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
DATABASE = "kpi_bench_hot_path"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def prepare_database() -> str:
    """A small seeded database: the hot path never reaches it after the first request."""
    with psycopg.connect(SERVER, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    url = f"postgresql://postgres@127.0.0.1:5432/{DATABASE}"
    env = {**os.environ, "DATABASE_URL": url}
    kpi = str(Path(sys.executable).with_name("kpi-service"))
    subprocess.run([kpi, "init-db"], env=env, check=True, stdout=subprocess.DEVNULL)
    with psycopg.connect(url) as conn:
        empty = conn.execute("SELECT NOT EXISTS (SELECT 1 FROM listings)").fetchone()[0]
    if empty:
        subprocess.run([kpi, "seed", "--listings", "20000"], env=env, check=True, stdout=subprocess.DEVNULL)
    return url


def serve(app: str, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [GUNICORN, "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}", app],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{base}/hello" if "hello" in app else f"{base}/healthz", timeout=1)
            return process, base
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def wrk(url: str, seconds: int, connections: int, headers: list[str]) -> float:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", *[f"-H{h}" for h in headers], url]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in output:
        raise SystemExit(f"non-2xx responses from {url}:\n{output}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk")

    # One worker by default: with two, how wrk's keep-alive connections happen to split between
    # the workers swings a run by 3x, for both servers alike. KPI_* settings pass through.
    common = {"GUNICORN_WORKERS": os.environ.get("GUNICORN_WORKERS", "1")}
    database_url = prepare_database()
    hello, hello_base = serve("bench.hello_app:app", common)
    kpi_env = {
        **common,
        "DATABASE_URL": database_url,
        "REDIS_URL": "redis://127.0.0.1:6379/3",
        "JWT_SECRET_KEY": SECRET,
        "KPI_CACHE_TTL": "3600",  # the hot path: every request after the first is a hit
    }
    kpi, kpi_base = serve("wsgi:app", kpi_env)
    try:
        # As the main application issues them: any standard JWT library, HS256, sub and exp.
        bearer = jwt.encode({"sub": "bench", "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")
        auth = [f"Authorization: Bearer {bearer}"]
        kpi_url = f"{kpi_base}/api/kpi?from=2026-01-01&to=2026-06-30&tz=Europe/Berlin"
        request = urllib.request.Request(kpi_url, headers={"Authorization": f"Bearer {bearer}"})
        urllib.request.urlopen(request, timeout=30).read()  # computed once, then cached

        wrk(f"{hello_base}/hello", 2, args.connections, [])  # warm-up of both
        wrk(kpi_url, 2, args.connections, auth)
        hello_rates, kpi_rates = [], []
        for round_ in range(1, args.rounds + 1):
            hello_rates.append(wrk(f"{hello_base}/hello", args.seconds, args.connections, []))
            kpi_rates.append(wrk(kpi_url, args.seconds, args.connections, auth))
            print(f"round {round_}: hello {hello_rates[-1]:8.0f} req/s   kpi {kpi_rates[-1]:8.0f} req/s")
    finally:
        for process in (hello, kpi):
            process.terminate()
            process.wait(timeout=30)
    hello_median, kpi_median = statistics.median(hello_rates), statistics.median(kpi_rates)
    print(f"hello-world  median {hello_median:8.0f} req/s")
    print(f"cached /api/kpi median {kpi_median:8.0f} req/s")
    print(f"ratio kpi / hello-world: {kpi_median / hello_median:.2f}")


if __name__ == "__main__":
    main()
