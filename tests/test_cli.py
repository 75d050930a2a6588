"""The kpi-service command: token, init-db, seed, and the demo end to end."""

from __future__ import annotations

import io
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import jwt
import psutil
import psycopg
import pytest

from kpi_service import cli
from tests.helpers import SECRET

TABLES = ("buyers", "listings", "leads", "purchases")


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("DATABASE_URL", "REDIS_URL", "JWT_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    # In-process runs must leave pytest's own signal handling alone.
    monkeypatch.setattr(cli, "stop_on_signals", lambda: None)
    return monkeypatch


def test_token_verifies_with_the_secret(environ: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    environ.setenv("JWT_SECRET_KEY", SECRET)
    before = int(time.time())
    assert cli.main(["token", "--sub", "reporting", "--ttl", "120"]) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "reporting"
    assert before + 120 <= claims["exp"] <= int(time.time()) + 120


def test_token_without_a_secret_is_a_one_line_error(
    environ: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["token", "--sub", "reporting"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "kpi-service: JWT_SECRET_KEY is not set\n"


def test_init_db_is_idempotent(
    environ: pytest.MonkeyPatch, empty_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    environ.setenv("DATABASE_URL", empty_database)
    assert cli.main(["init-db"]) == 0
    # Each step as it begins, with the seconds since the start: the build's own steps too.
    first = [line.split(" s  ", 1)[-1] for line in capsys.readouterr().out.splitlines()]
    assert first[1:4] == [
        "tables, functions and triggers",
        "indexes (built concurrently)",
        "waiting for a running applier",
    ]
    assert (
        "building the summaries: the sold listings" in first and "building the summaries: the sums by bucket" in first
    )
    assert first[-2:] == ["done", first[-1]] and first[-1].startswith("schema and summaries applied")
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute("INSERT INTO buyers (name) VALUES ('kept')")
    assert cli.main(["init-db"]) == 0
    with psycopg.connect(empty_database) as conn:
        tables = {row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        own = {row[0] for row in conn.execute("SELECT 'kpi.' || tablename FROM pg_tables WHERE schemaname = 'kpi'")}
        # The sales tables, and the service's summaries in its own schema (sql/schema/manifest.sql lists them).
        listed = conn.execute("SELECT name FROM kpi.kpi_manifest WHERE kind = 'table' AND installed").fetchall()
        assert len(listed) == 14 and tables == set(TABLES) and own == {name for (name,) in listed}
        assert conn.execute("SELECT name FROM buyers").fetchall() == [("kept",)]
    assert "schema and summaries applied" in capsys.readouterr().out


def test_init_db_records_kpi_aged_days(environ: pytest.MonkeyPatch, empty_database: str) -> None:
    """The summaries count long sales for KPI_AGED_DAYS; init-db with another one counts them anew."""
    environ.setenv("DATABASE_URL", empty_database)
    environ.delenv("KPI_AGED_DAYS", raising=False)
    assert cli.main(["init-db"]) == 0
    environ.setenv("KPI_AGED_DAYS", "30")
    assert cli.main(["init-db"]) == 0
    with psycopg.connect(empty_database) as conn:
        assert conn.execute(
            "SELECT version = kpi.kpi_summary_version(), aged_days FROM kpi.kpi_summary_state"
        ).fetchall() == [(True, 30)]


def test_apply_once_takes_in_the_change_log(
    environ: pytest.MonkeyPatch, empty_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    environ.setenv("DATABASE_URL", empty_database)
    assert cli.main(["init-db"]) == 0
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute("INSERT INTO listings (price, status, listed_at) VALUES (100, 'active', '2026-03-01T12:00Z')")
        conn.execute("UPDATE listings SET price = 120")
        assert cli.main(["apply", "--once"]) == 0
        assert conn.execute("SELECT count(*) FROM kpi.kpi_changes").fetchone() == (0,)
        assert conn.execute("SELECT listings, price_sum FROM kpi.kpi_sums WHERE grain = 900").fetchone() == (1, 120)
    assert "3 change rows applied" in capsys.readouterr().out


def test_init_db_without_summaries_installs_no_triggers(
    environ: pytest.MonkeyPatch, empty_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    environ.setenv("DATABASE_URL", empty_database)
    assert cli.main(["init-db", "--without-summaries"]) == 0
    with psycopg.connect(empty_database) as conn:
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'kpi%'").fetchone() == (0,)
        assert conn.execute("SELECT kpi.kpi_source()").fetchone() == ("raw",)
    assert "no summaries" in capsys.readouterr().out


def test_init_db_without_database_url(environ: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["init-db"]) == 2
    assert capsys.readouterr().err == "kpi-service: DATABASE_URL is not set\n"


def test_seed_command_reports_progress_then_refuses_to_seed_twice(
    environ: pytest.MonkeyPatch, database_url: str, conn: psycopg.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    environ.setenv("DATABASE_URL", database_url)
    args = ["seed", "--listings", "300", "--seed", "5", "--until", "2026-06-01T00:00:00+00:00"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "seeding 300 listings (seed 5, until 2026-06-01T00:00:00+00:00)" in out
    assert all(f"  {table}" in out for table in TABLES)
    assert cli.main(args) == 1
    assert "--truncate" in capsys.readouterr().err
    assert cli.main([*args, "--truncate"]) == 0
    assert conn.execute("SELECT count(*) FROM listings").fetchone()[0] == 300


# --- the demo, as a user runs it --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kpi_service_command() -> list[str]:
    script = Path(sys.executable).with_name("kpi-service")
    return [str(script)] if script.exists() else [sys.executable, "-m", "kpi_service.cli"]


class Demo:
    """`kpi-service demo` in a subprocess, its output read line by line as it comes."""

    def __init__(self, cwd: Path, env: dict[str, str], port: int) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        self.process = subprocess.Popen(
            [*kpi_service_command(), "demo", "--port", str(port), "--listings", "3000"],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, prefix: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {prefix!r} line within {timeout} s; output so far: {self.output}")
            if line is None:
                pytest.fail(f"demo exited ({self.process.wait()}) before {prefix!r}: {self.output}")
            self.output.append(line)
            if line.startswith(prefix):
                return line

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


def demo_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "JWT_SECRET_KEY")}
    env.update(extra)
    return env


def get_kpis(port: int, token: str) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/kpi", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:  # its envelope says why, in the failure
        return error.code, json.loads(error.read())


def postgres_processes(mentioning: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if process.info["name"] == "postgres" and any(str(mentioning) in part for part in cmdline):
            found.append(process)
    return found


@pytest.mark.slow
def test_demo_on_the_embedded_database(tmp_path: Path) -> None:
    port = free_port()
    demo = Demo(tmp_path, demo_env(), port)
    try:
        assert "generated one for this run" in demo.wait_for("secret")
        token = demo.wait_for("token").split()[1]
        assert postgres_processes(tmp_path), "the embedded server should be running"
        status, body = get_kpis(port, token)
        assert status == 200 and body["success"] is True, body
        assert body["metrics"]["total_listings"] == 3000
    finally:
        code = demo.stop()
    assert code == 0, demo.output
    assert postgres_processes(tmp_path) == []
    assert (tmp_path / ".kpi-demo" / "pgdata" / "PG_VERSION").exists(), "the data directory is kept"


@pytest.mark.slow
def test_demo_on_database_url(tmp_path: Path, empty_database: str) -> None:
    port = free_port()
    demo = Demo(tmp_path, demo_env(DATABASE_URL=empty_database, JWT_SECRET_KEY=SECRET), port)
    try:
        assert demo.wait_for("database") == "database  DATABASE_URL"
        token = demo.wait_for("token").split()[1]
        jwt.decode(token, SECRET, algorithms=["HS256"])
        status, body = get_kpis(port, token)
        assert status == 200 and body["metrics"]["total_listings"] == 3000, body
    finally:
        assert demo.stop() == 0, demo.output
    assert not (tmp_path / ".kpi-demo").exists()


def test_uninstall_asks_and_drops_nothing_unconfirmed(
    environ: pytest.MonkeyPatch, empty_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """(Confirmed removal: tests/test_uninstall.py, on a server of its own.)"""
    environ.setenv("DATABASE_URL", empty_database)
    assert cli.main(["init-db"]) == 0
    environ.setattr("sys.stdin", io.StringIO(""))  # no terminal: no answer
    assert cli.main(["uninstall"]) == 1
    out = capsys.readouterr().out
    assert "trigger  kpi_listings_insert on public.listings" in out and out.endswith("nothing dropped\n")
    with psycopg.connect(empty_database) as conn:
        # (The decoding mode's publication is made by init-db --capture decoding alone.)
        assert conn.execute("SELECT name FROM kpi.kpi_manifest WHERE NOT installed").fetchall() == [("kpi",)]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert re.fullmatch(r"kpi-service \S+ \(schema version \d+\)\n", capsys.readouterr().out)
