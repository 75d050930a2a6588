"""The small commands: seed, token, init-db, uninstall, apply and target (demo has its own module)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TextIO

import psycopg
from flask import Flask
from psycopg.conninfo import conninfo_to_dict

from kpi_service.cli.seed import default_until, seed
from kpi_service.cli.target import target_database
from kpi_service.config import CAPTURES, ConfigError, Settings, aged_days_setting
from kpi_service.db.applier import Applier, pooled
from kpi_service.db.connections import Database
from kpi_service.db.decoding import Decoder
from kpi_service.db.schema import apply_schema
from kpi_service.db.targets import INSTALLED, read_targets, set_target, unset_target
from kpi_service.db.uninstall import plan, remove
from kpi_service.serving.cache import Cache
from kpi_service.serving.connection import connect
from kpi_service.web import auth


def seed_command(
    environ: Mapping[str, str],
    *,
    listings: int,
    seed_value: int,
    until: datetime | None,
    truncate: bool,
    data_dir: Path,
    out: TextIO | None = None,
) -> None:
    out = out or sys.stdout
    until = until or default_until()
    with target_database(environ, data_dir) as (url, embedded):
        where = f"the embedded database in {data_dir}" if embedded else _describe(url)
        print(f"seeding {listings:,} listings (seed {seed_value}, until {until.isoformat()}) into {where}", file=out)
        # The demo database may be new; another database gets its tables from init-db.
        if embedded:
            apply_schema(url)

        def progress(step: str, rows: int, seconds: float) -> None:
            count = f"{rows:>11,} rows" if rows else " " * 16
            print(f"  {step:<10}{count}  {seconds:6.2f} s", file=out, flush=True)

        done = seed(url, listings, seed=seed_value, until=until, truncate=truncate, progress=progress)
        print(f"done in {done.seconds:.1f} s", file=out)


def token_command(environ: Mapping[str, str], *, subject: str, ttl: int, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    secret = environ.get("JWT_SECRET_KEY")
    if not secret:
        raise ConfigError("JWT_SECRET_KEY is not set")
    app = Flask("kpi_service.token")
    auth.init_app(app, secret)
    print(auth.mint_token(app, subject, ttl), file=out)


def init_db_command(
    environ: Mapping[str, str], *, summaries: bool = True, capture: str | None = None, out: TextIO | None = None
) -> None:
    out = out or sys.stdout
    url = environ.get("DATABASE_URL")
    if not url:
        raise ConfigError("DATABASE_URL is not set")
    print(f"init-db on {_describe(url)}", file=out, flush=True)
    capture = capture or (environ.get("KPI_CAPTURE") or "triggers").strip().lower()
    if capture not in CAPTURES:
        raise ConfigError(f"KPI_CAPTURE must be one of {', '.join(CAPTURES)}, not {capture!r}")
    apply_schema(
        url,
        summaries=summaries,
        aged_days=aged_days_setting(environ),
        progress=lambda line: print(line, file=out, flush=True),
        capture=capture,
        decoding_url=environ.get("KPI_DECODING_URL") or None,
    )
    what = "schema and summaries" if summaries else "schema (no summaries: the service reads the raw rows)"
    print(f"{what} applied to {_describe(url)}", file=out)


def uninstall_command(
    environ: Mapping[str, str], *, yes: bool, out: TextIO | None = None, ask: Callable[[str], str] = input
) -> bool:
    """Everything kpi-service installed in DATABASE_URL dropped (kpi_service/db/uninstall.py), once
    confirmed: True when nothing of it is left to drop."""
    out = out or sys.stdout
    url = environ.get("DATABASE_URL")
    if not url:
        raise ConfigError("DATABASE_URL is not set")
    where = _describe(url)
    with psycopg.connect(url, autocommit=True) as conn:
        found = plan(conn, environ.get("KPI_DECODING_URL") or url)
        if found.empty:
            print(f"nothing of kpi-service is installed in {where}: nothing to do", file=out)
            return True
        print(f"kpi-service uninstall drops from {where}:", file=out)
        for line in found.lines():
            print(f"  {line}", file=out)
        print(
            "The application's tables, rows, indexes and triggers stay as they are. The service's instances"
            " answer 503 from then on: stop them first.",
            file=out,
            flush=True,
        )
        if not yes:
            try:
                answer = ask("Drop these? [y/N] ")
            except EOFError:
                answer = ""
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing dropped", file=out)
                return False
        remove(conn, found, lambda line: print(line, file=out, flush=True))
    print(f"kpi-service removed from {where}", file=out)
    return True


def apply_command(environ: Mapping[str, str], *, once: bool, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    # The applier serves nothing: it needs the database settings, not the token secret.
    settings = Settings.from_env(environ, jwt_secret_key="unused by the applier", env="development")
    db = Database(settings)
    # With Redis, the instances' live updates hear of each batch (live/hub.py), as from their own applier.
    cache = (
        Cache(connect(settings), settings.cache_ttl, settings.stale_ttl, 1, scope=db.scope)
        if settings.uses_redis
        else None
    )
    on_changed = cache.announce_change if cache is not None else None
    try:
        if once:
            total = 0
            while taken := db.apply_changes(wait=True, on_changed=on_changed):
                total += taken
            print(f"{total} change rows applied to {_describe(settings.database_url or '')}", file=out)
            return
        interval = settings.apply_interval or Settings.apply_interval
        where = _describe(settings.database_url or "")
        print(f"applying changes to {where} every {interval:g} s", file=out, flush=True)
        decoder = (
            Decoder(pooled(db), settings.decoding_url or settings.database_url or "")
            if settings.capture == "decoding"
            else None
        )
        Applier(
            db,
            interval,
            settings.apply_busy_share,
            on_changed=on_changed,
            on_caught_up=cache.caught_up if cache is not None else None,
            caught_up_at=cache.caught_up_at if cache is not None else None,
            turn=cache.applier_turn if cache is not None else None,
            aged_days=settings.aged_days,
            decoder=decoder,
        ).run_forever()
    finally:
        db.close()


def target_command(
    environ: Mapping[str, str],
    action: str,
    *,
    kpi: str | None = None,
    value: Decimal | None = None,
    window: str = "any",
    out: TextIO | None = None,
) -> None:
    """`kpi-service target set|unset|list` on DATABASE_URL, as the owner (the service's role only
    reads the table). A change reaches every instance's pollers and streams within a second
    (kpi_service/serving/targets.py)."""
    out = out or sys.stdout
    url = environ.get("DATABASE_URL")
    if not url:
        raise ConfigError("DATABASE_URL is not set")
    with psycopg.connect(url, autocommit=True) as conn:
        if not conn.execute(INSTALLED).fetchone()[0]:
            raise ConfigError(f"{_describe(url)} has no kpi.kpi_targets: run kpi-service init-db first")
        if action == "set":
            assert kpi is not None and value is not None
            set_target(conn, kpi, value, window)
            print(f"target of {kpi} ({_windows(window)}) set to {value}", file=out)
        elif action == "unset":
            assert kpi is not None
            done = unset_target(conn, kpi, window)
            print(f"target of {kpi} ({_windows(window)}) {'removed' if done else 'was not set'}", file=out)
        else:
            targets = read_targets(conn)
            if not targets:
                print("no targets set", file=out)
            for target in targets:
                print(f"{target.kpi:<24} {_windows(target.window_length):<16} {target.value}", file=out)


def _windows(length: str) -> str:
    return "every window" if length == "any" else f"{length} windows"


def _describe(url: str) -> str:
    # Never the password.
    parts = conninfo_to_dict(url)
    host = parts.get("host") or "the local socket"
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"database {parts.get('dbname') or '(default)'} on {host}{port}"
