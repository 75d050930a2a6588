"""Soak test (not part of CI): a fixed request rate for N minutes against gunicorn, with the real
local PostgreSQL (its own database, seeded) and a private redis-server.

    .venv/bin/python bench/soak.py                     # 10 minutes at 200 req/s
    .venv/bin/python bench/soak.py --minutes 1 --rate 50

The load is open-loop: request i is due at start + i/rate whatever the earlier ones did, and its
latency is measured from that due time, so a stalled server shows up in the percentiles instead
of silently lowering the rate (coordinated omission). Mixed traffic: mostly a set of popular
windows that dashboards poll (hits, and a refresh every TTL), some history requests and a share
of random windows that are cache misses computed by PostgreSQL.

Prints a summary and writes it as JSON (bench/results/soak-<time>.json). Exit status 1 when any
request failed or a worker's RSS grew by 5% or more between the end of the warm-up and the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import psutil
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))

from kpi_service.cli.seed import has_rows  # noqa: E402
from kpi_service.db.schema import apply_schema  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(ready: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            raise SystemExit(f"soak: {what} not ready after {seconds} s")
        time.sleep(0.1)


def prepare_database(url: str, listings: int, reseed: bool) -> None:
    """The soak database exists, has the schema and `listings` seeded listings."""
    params = conninfo_to_dict(url)
    name = params.get("dbname") or "kpi_soak"
    admin = make_conninfo(url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    apply_schema(url)
    with psycopg.connect(url) as conn:
        count = conn.execute("SELECT count(*) FROM listings").fetchone()[0]
    if reseed or not has_rows(url) or count != listings:
        print(f"seeding {listings:,} listings into {name} ...", flush=True)
        env = {**os.environ, "DATABASE_URL": url}
        subprocess.run(
            [str(BIN / "kpi-service"), "seed", "--listings", str(listings), "--truncate"], env=env, check=True
        )
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ANALYZE")


def start_redis(port: int, workdir: str) -> subprocess.Popen:
    binary = shutil.which("redis-server")
    if not binary:
        raise SystemExit("soak: redis-server is not installed")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    wait_for(answers, 10, "redis-server")
    return process


def start_gunicorn(port: int, env: dict[str, str]) -> subprocess.Popen:
    process = subprocess.Popen(
        [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}", "wsgi:app"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(env["SOAK_LOG"], "w"),  # noqa: SIM115 - kept open for the server's lifetime
    )

    def healthy() -> bool:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/healthz")
            return c.getresponse().status == 200
        except OSError:
            return False

    wait_for(healthy, 30, "gunicorn")
    return process


def popular_paths(today: date) -> list[str]:
    """What dashboards poll: a few ranges in a few zones, and two histories."""
    paths = ["/api/kpi", "/api/kpi?tz=Europe/Berlin", "/api/kpi?aged_days=90"]
    for days in (7, 30, 90, 365):
        start = today - timedelta(days=days - 1)
        for tz in ("UTC", "Europe/Berlin", "America/New_York"):
            paths.append(f"/api/kpi?from={start}&to={today}&tz={tz}")
    first = today.replace(day=1)
    paths.append(f"/api/kpi/history?from={first - timedelta(days=365)}&to={today}&interval=month")
    paths.append(f"/api/kpi/history?from={today - timedelta(days=89)}&to={today}&interval=week&tz=Europe/Berlin")
    return paths


def random_path(rng: random.Random, today: date) -> str:
    """A window nobody asked for yet: a cache miss computed by PostgreSQL."""
    start = today - timedelta(days=rng.randrange(0, 730))
    end = min(today, start + timedelta(days=rng.randrange(0, 120)))
    return f"/api/kpi?from={start}&to={end}&aged_days={rng.randrange(1, 3651)}"


class Client:
    """One keep-alive HTTP connection per load thread."""

    def __init__(self, port: int, bearer: str) -> None:
        self.port = port
        self.headers = {"Authorization": f"Bearer {bearer}"}
        self.local = threading.local()

    def get(self, path: str) -> tuple[int, bytes]:
        for attempt in (1, 2):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                conn.request("GET", path, headers=self.headers)
                response = conn.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # gunicorn closed an idle keep-alive connection between two requests: reconnect once.
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def worker_rss(master: psutil.Process) -> dict[int, int]:
    return {child.pid: child.memory_info().rss for child in master.children()}


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def run(args: argparse.Namespace) -> dict[str, Any]:
    prepare_database(args.database_url, args.listings, args.reseed)
    workdir = tempfile.mkdtemp(prefix="kpi-soak-")
    redis_port, http_port = free_port(), free_port()
    secret = secrets.token_urlsafe(48)
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "DATABASE_URL": args.database_url,
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "JWT_SECRET_KEY": secret,
        "GUNICORN_WORKERS": str(args.workers),
        "GUNICORN_THREADS": str(args.threads),
        "KPI_LOG_LEVEL": "WARNING",
        "SOAK_LOG": str(Path(workdir) / "gunicorn.log"),
    }
    redis_process = start_redis(redis_port, workdir)
    server = start_gunicorn(http_port, env)
    master = psutil.Process(server.pid)
    bearer = jwt.encode(
        {"sub": "soak", "exp": datetime.now(UTC) + timedelta(minutes=args.minutes + 10)}, secret, algorithm="HS256"
    )
    client = Client(http_port, bearer)
    rng = random.Random(args.seed)
    today = datetime.now(UTC).date()
    popular = popular_paths(today)

    statuses: Counter[int] = Counter()
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []  # from each request's due time, ms
    failures: list[str] = []
    lock = threading.Lock()

    def one(path: str, due: float) -> None:
        try:
            status, body = client.get(path)
        except OSError as error:
            status, body = 0, repr(error).encode()
        elapsed = (time.perf_counter() - due) * 1000
        outcome = "error"
        if status == 200:
            meta = json.loads(body)["meta"]
            outcome = "stale" if meta["stale"] else ("cached" if meta["cached"] else "computed")
        with lock:
            statuses[status] += 1
            outcomes[outcome] += 1
            latencies.append(elapsed)
            if status != 200 and len(failures) < 20:
                failures.append(f"{status} {path} {body[:200]!r}")

    total = int(args.minutes * 60 * args.rate)
    warmup_seconds = min(60.0, args.minutes * 60 / 5)
    rss_series: list[tuple[float, dict[int, int]]] = [(0.0, worker_rss(master))]
    rss_warm: dict[int, int] | None = None
    next_sample = 10.0
    print(f"soak: {total:,} requests at {args.rate}/s for {args.minutes} min on port {http_port}", flush=True)
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        start = time.perf_counter()
        for i in range(total):
            due = start + i / args.rate
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            path = random_path(rng, today) if rng.random() < args.miss_ratio else rng.choice(popular)
            pool.submit(one, path, due)
            elapsed = time.perf_counter() - start
            if rss_warm is None and elapsed >= warmup_seconds:
                rss_warm = worker_rss(master)
                rss_series.append((elapsed, rss_warm))
            if elapsed >= next_sample:
                next_sample += 10.0
                sample = worker_rss(master)
                rss_series.append((elapsed, sample))
                done = sum(statuses.values())
                bad = done - statuses[200]
                print(
                    f"  {elapsed:6.0f} s  {done:8,} done  {bad} failed  "
                    f"rss MiB {[round(v / 2**20, 1) for v in sample.values()]}",
                    flush=True,
                )
        duration = time.perf_counter() - start
    rss_end = worker_rss(master)
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=60)
    redis_process.kill()
    redis_process.wait()
    shutil.rmtree(workdir, ignore_errors=True)

    latencies.sort()
    warm = rss_warm or rss_series[0][1]
    growth = {pid: (rss_end[pid] - warm[pid]) / warm[pid] * 100 for pid in rss_end if pid in warm}
    return {
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "minutes": args.minutes,
        "rate": args.rate,
        "achieved_rate": round(len(latencies) / duration, 1),
        "listings": args.listings,
        "workers": args.workers,
        "threads": args.threads,
        "miss_ratio": args.miss_ratio,
        "requests": len(latencies),
        "statuses": dict(statuses),
        "failed": len(latencies) - statuses[200],
        "outcomes": dict(outcomes),
        "latency_ms": {
            "p50": round(percentile(latencies, 50), 1),
            "p90": round(percentile(latencies, 90), 1),
            "p99": round(percentile(latencies, 99), 1),
            "max": round(latencies[-1], 1) if latencies else None,
        },
        "rss_mib": {
            str(pid): {
                # None: the worker had not forked yet when the server first answered.
                "boot": round(rss_series[0][1][pid] / 2**20, 1) if pid in rss_series[0][1] else None,
                "after_warmup": round(warm[pid] / 2**20, 1),
                "end": round(rss_end[pid] / 2**20, 1),
                "growth_pct": round(growth[pid], 2),
            }
            for pid in growth
        },
        "failures": failures,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, default=200, help="requests per second")
    parser.add_argument("--miss-ratio", type=float, default=0.05, help="share of requests for random windows")
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/kpi_soak")
    parser.add_argument("--listings", type=int, default=100_000)
    parser.add_argument("--reseed", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=64, help="client threads")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    summary = run(args)
    out = args.out or ROOT / "bench" / "results" / f"soak-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"written to {out}")
    grew = any(v["growth_pct"] >= 5 for v in summary["rss_mib"].values())
    return 1 if summary["failed"] or grew else 0


if __name__ == "__main__":
    sys.exit(main())
