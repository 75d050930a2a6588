"""The `kpi-service` command: arguments in, the right module called, a one-line error out."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import psycopg

from kpi_service.cli.embedded import DEFAULT_DIR, EmbeddedError
from kpi_service.cli.seed import NotEmpty
from kpi_service.config import ConfigError
from kpi_service.db.errors import LockNotGranted, SchemaMismatch
from kpi_service.db.sql import KPI_NAMES
from kpi_service.ops.lifecycle import Stopped, stop_on_signals

DEMO_LISTINGS = 20_000


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {value}")
    return value


def _instant(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError("give a time zone offset, e.g. 2026-11-25T00:00:00+00:00")
    return value


def _number(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except ArithmeticError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value.is_finite() or abs(value) > Decimal("1e15"):
        raise argparse.ArgumentTypeError(f"not a finite number of at most 1e15 in size: {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="kpi-service", description="Dashboard KPIs of the dealership application.")
    top.add_argument("--version", action="version", version=_version())
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data_dir = {
        "type": Path,
        "default": DEFAULT_DIR,
        "help": "embedded PostgreSQL data directory, used when DATABASE_URL is not set (default: .kpi-demo)",
    }

    demo = commands.add_parser("demo", help="serve with demo data (embedded PostgreSQL unless DATABASE_URL is set)")
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    demo.add_argument("--port", type=_port, default=8000, help="port to listen on (default: 8000)")
    demo.add_argument("--reset", action="store_true", help="delete the embedded database and start afresh")
    demo.add_argument("--listings", type=_positive, default=DEMO_LISTINGS, help="listings to seed into empty tables")
    demo.add_argument("--data-dir", **data_dir)

    seed = commands.add_parser("seed", help="fill the sales tables with deterministic demo data")
    seed.add_argument("--listings", type=_positive, required=True, help="number of listings (the rest scales)")
    seed.add_argument("--seed", type=int, default=1, help="random seed: same seed and listings, same rows")
    seed.add_argument("--until", type=_instant, help="end of the two-year history (default: the current hour)")
    seed.add_argument("--truncate", action="store_true", help="replace the rows of non-empty tables")
    seed.add_argument("--data-dir", **data_dir)

    token = commands.add_parser("token", help="print an access token signed with JWT_SECRET_KEY")
    token.add_argument("--sub", required=True, help="the token's subject")
    token.add_argument("--ttl", type=_positive, default=3600, help="seconds until it expires (default: 3600)")

    init_db = commands.add_parser(
        "init-db", help="apply sql/schema/schema.sql, indexes.sql and summary.sql to DATABASE_URL (safe to run again)"
    )
    init_db.add_argument(
        "--without-summaries",
        action="store_true",
        help="tables and indexes only, no triggers: the service then computes from the raw rows (slower)",
    )
    init_db.add_argument(
        "--capture",
        choices=("triggers", "decoding"),
        help="where the summaries' changes come from: triggers on the sales tables, or a logical replication slot"
        " on KPI_DECODING_URL (default: KPI_CAPTURE, else triggers)",
    )
    uninstall = commands.add_parser(
        "uninstall",
        help="drop everything kpi-service installed in DATABASE_URL (asks first; safe to run again)",
    )
    uninstall.add_argument("--yes", action="store_true", help="drop without asking")
    apply = commands.add_parser(
        "apply", help="keep the summaries of DATABASE_URL current (what every instance does in the background)"
    )
    apply.add_argument("--once", action="store_true", help="apply what the change log holds now, then exit")
    target = commands.add_parser("target", help="set, unset or list the owner's KPI targets in DATABASE_URL")
    actions = target.add_subparsers(dest="action", required=True, metavar="ACTION")
    window = {
        "choices": ("daily", "monthly"),
        "help": "only for windows of one day, or of a month (or a month so far); default: every window",
    }
    target_set = actions.add_parser("set", help="set KPI's target to VALUE")
    target_set.add_argument("kpi", choices=KPI_NAMES, metavar="KPI")
    target_set.add_argument("value", type=_number, metavar="VALUE")
    target_set.add_argument("--window", **window)
    target_unset = actions.add_parser("unset", help="remove KPI's target")
    target_unset.add_argument("kpi", choices=KPI_NAMES, metavar="KPI")
    target_unset.add_argument("--window", **window)
    actions.add_parser("list", help="print every target")
    return top


def _version() -> str:
    from kpi_service.db.schema import SCHEMA_VERSION, service_version

    return f"kpi-service {service_version()} (schema version {SCHEMA_VERSION})"


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # Imported here: `kpi-service token` should not pay for the web app and the pool.
    from kpi_service.cli import commands, demo

    if args.command in ("demo", "seed", "apply"):
        stop_on_signals()  # they may own the embedded server, which must not outlive them
    try:
        if args.command == "demo":
            demo.run(host=args.host, port=args.port, data_dir=args.data_dir, reset=args.reset, listings=args.listings)
        elif args.command == "seed":
            commands.seed_command(
                os.environ,
                listings=args.listings,
                seed_value=args.seed,
                until=args.until,
                truncate=args.truncate,
                data_dir=args.data_dir,
            )
        elif args.command == "token":
            commands.token_command(os.environ, subject=args.sub, ttl=args.ttl)
        elif args.command == "init-db":
            commands.init_db_command(os.environ, summaries=not args.without_summaries, capture=args.capture)
        elif args.command == "uninstall":
            if not commands.uninstall_command(os.environ, yes=args.yes):
                return 1
        elif args.command == "apply":
            commands.apply_command(os.environ, once=args.once)
        elif args.command == "target":
            commands.target_command(
                os.environ,
                args.action,
                kpi=getattr(args, "kpi", None),
                value=getattr(args, "value", None),
                window=getattr(args, "window", None) or "any",
            )
    except Stopped as stop:
        print(f"kpi-service: stopped ({stop})", file=sys.stderr)
        return 0
    except ConfigError as error:
        print(f"kpi-service: {error}", file=sys.stderr)
        return 2
    except (EmbeddedError, NotEmpty, OSError, psycopg.Error, SchemaMismatch, LockNotGranted) as error:
        print(f"kpi-service: {_first_line(error)}", file=sys.stderr)
        return 1
    return 0


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else error.__class__.__name__
