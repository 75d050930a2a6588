"""The decoding capture mode's decoder (docs/design.md, "Change capture from a replication slot").

In this mode (`kpi-service init-db --capture decoding`) the application's tables carry nothing of
the service. Their changes come from a logical replication slot, on a physical standby (PostgreSQL
16+) or on the primary, KPI_DECODING_URL. The applier's loop calls Decoder.step() before each
batch: it peeks the slot's changes over plain SQL (pg_logical_slot_peek_binary_changes with the
pgoutput plugin: psycopg 3 has no replication protocol, and these functions run on a standby
too), parses pgoutput's messages here, and hands them to kpi_decoded (sql/schema/decoding.sql)
on the primary, which writes the log rows the triggers would have written. Once that commit is
made, the slot is advanced: a crash in between gives the same transactions again, and
kpi_decoded skips those at or below the position it recorded with them (each is logged once).

A slot that is lost (invalidated past max_slot_wal_keep_size, by a conflict on the standby,
dropped, or its server promoted) stops the summaries (kpi_decoding_lost: the KPIs come from the
rows) and is made anew here; the applier then rebuilds the summaries from a snapshot taken after
the new slot's consistent point, with no operator."""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiosql
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from kpi_service.db.errors import DatabaseUnavailable
from kpi_service.db.sql import sql_text

log = logging.getLogger(__name__)

# The publication sql/schema/capture.sql makes, and the plugin's options for it. Protocol 1: no
# streaming of transactions in progress (each comes whole, at its commit, in commit order).
PUBLICATION = "kpi"
PLUGIN_OPTIONS = ["proto_version", "1", "publication_names", PUBLICATION]
TABLE_CODES = {"listings": "l", "leads": "d", "purchases": "p"}
DECODE_BATCH = 20_000
# How long making a slot on a standby waits for it to replay the publication.
REPLAY_WAIT_S = 60.0
_QUERIES = aiosql.from_str(sql_text("runtime/decoding.sql"), "psycopg")
# Each statement's text with psycopg's placeholders, run on whichever server it belongs to.
STATEMENTS = {name: getattr(_QUERIES, name).sql for name in _QUERIES.available_queries if not name.endswith("_cursor")}


APPLICATION_NAME = "kpi-service"  # the pool's (db/connections.py, Database)


class DecodingError(RuntimeError):
    """A message of the slot this decoder cannot read; the message says which."""


@dataclass
class Relation:
    schema: str
    name: str
    columns: list[str]
    wanted: frozenset[str]  # the columns the KPIs read


NULL, TEXT, UNCHANGED, BEGIN, COMMIT = b"n"[0], b"t"[0], b"u"[0], b"B"[0], b"C"[0]


@dataclass
class Transaction:
    end: str  # the end of its commit record, as pg_lsn text
    changes: list[dict[str, Any]] = field(default_factory=list)


def lsn_text(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def lsn_value(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


class _Reader:
    """pgoutput's message fields (PostgreSQL's "Logical Replication Message Formats")."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return value

    def byte(self) -> int:
        self.at += 1
        return self.data[self.at - 1]

    def int(self, size: int) -> int:
        self.at += size
        return int.from_bytes(self.data[self.at - size : self.at], "big", signed=True)

    def string(self) -> str:
        end = self.data.index(b"\0", self.at)
        value = self.data[self.at : end].decode()
        self.at = end + 1
        return value

    def tuple(self, columns: list[str], wanted: frozenset[str]) -> dict[str, str | None]:
        """A row's values as text, by column, only the `wanted` ones (the columns the KPIs read:
        a renamed one is then missing, and kpi_change_of stops the summaries); an unchanged
        TOASTed value is left out (kpi_decoded takes it from the old image)."""
        row: dict[str, str | None] = {}
        data = self.data
        for i in range(self.int(2)):
            kind = self.byte()
            if kind == NULL:
                if columns[i] in wanted:
                    row[columns[i]] = None
            elif kind == TEXT:
                size = self.int(4)
                if columns[i] in wanted:
                    row[columns[i]] = data[self.at : self.at + size].decode()
                self.at += size
            elif kind != UNCHANGED:
                raise DecodingError(f"a column value of kind {chr(kind)!r}")
        return row


def parse(messages: list[bytes], relations: dict[int, Relation], read: dict[str, frozenset[str]]) -> list[Transaction]:
    """The transactions of a run of pgoutput messages, each with its changes of the three tables
    as kpi_decoded takes them: {op, tbl, id, img}, img with the columns of `read` (by table)
    alone. An UPDATE that changes a row's key is its old key's DELETE and its new key's INSERT."""
    done: list[Transaction] = []
    current: list[dict[str, Any]] = []
    for data in messages:
        # (Begin and Commit first, read in place: two of a small transaction's three messages.)
        if data[0] == BEGIN:
            current = []
            continue
        if data[0] == COMMIT:
            # Commit: kind, flags, the commit's LSN, the end of its record (8 bytes at 10), time.
            done.append(Transaction(lsn_text(int.from_bytes(data[10:18], "big")), current))
            continue
        reader = _Reader(data)
        kind = reader.take("!c")
        if kind == b"R":
            relid = reader.take("!I")
            schema, name = reader.string(), reader.string()
            reader.take("!b")
            columns = []
            for _ in range(reader.take("!h")):
                reader.take("!b")
                columns.append(reader.string())
                reader.take("!I")
                reader.take("!i")
            if name not in TABLE_CODES:
                raise DecodingError(f"a change of {schema}.{name}, which the publication {PUBLICATION} should not hold")
            relations[relid] = Relation(schema, name, columns, read[name] | {"id"})
        elif kind in (b"I", b"U", b"D"):
            relation = relations[reader.take("!I")]
            code = TABLE_CODES[relation.name]
            old = None
            marker = reader.take("!c")
            if marker in (b"K", b"O"):
                old = reader.tuple(relation.columns, relation.wanted)
                marker = reader.take("!c") if kind == b"U" else None
            new = reader.tuple(relation.columns, relation.wanted) if marker == b"N" else None
            if new is not None and old is not None and old.get("id") != new.get("id"):
                current.append({"op": "D", "tbl": code, "id": old.get("id"), "img": None})
                current.append({"op": "I", "tbl": code, "id": new.get("id"), "img": new})
            elif new is not None:
                current.append({"op": kind.decode(), "tbl": code, "id": new.get("id"), "img": new})
            else:
                current.append({"op": "D", "tbl": code, "id": (old or {}).get("id"), "img": None})
        elif kind == b"T":
            count = reader.take("!i")
            reader.take("!b")
            for _ in range(count):
                current.append({"op": "T", "tbl": TABLE_CODES[relations[reader.take("!I")].name]})
        elif kind in (b"Y", b"O", b"M"):
            continue  # types, origins, messages: nothing the KPIs read
        else:
            raise DecodingError(f"a pgoutput message of kind {kind!r}")
    return done


# A statement run on the primary in a read-write transaction of its own: its row, or None.
Primary = Callable[..., dict[str, Any] | None]


def direct(conn: psycopg.Connection) -> Primary:
    """init-db's connection (autocommit) to the primary."""

    def run(statement: str, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(statement, params).fetchone()

    return run


class Decoder:
    """Moves the slot's changes into the change log, a batch per step (see the module's text)."""

    def __init__(self, primary: Primary, slot_url: str, *, batch: int = DECODE_BATCH) -> None:
        self.primary = primary
        self.slot_url = slot_url
        self.batch = batch
        self._conn: psycopg.Connection | None = None
        self._failing = False
        # Whether the slot's server was a standby when last seen: one that is not now was promoted.
        self._in_recovery: bool | None = None
        self.state: dict[str, Any] | None = None  # kpi_decoding_state(), as of the last step
        self.full = False  # the last step took a whole batch: more is waiting
        # How far the slot's server's WAL was ahead of the slot when last peeked (None: not yet).
        self.behind_bytes: int | None = None
        self._read: dict[str, frozenset[str]] | None = None  # kpi_read_columns() of each table

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _slot_server(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            # ISO instants in UTC: pgoutput writes each value with its type's output function,
            # in this session's settings, and kpi_decoded casts them back.
            self._conn = psycopg.connect(
                self.slot_url,
                autocommit=True,
                row_factory=dict_row,
                # The service's own name: on the primary, the applier's pacing counts every other
                # name's active session as the application at work, and would rest for the decoder.
                application_name=APPLICATION_NAME,
                options="-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=postgres",
            )
        return self._conn

    def step(self) -> int | None:
        """One batch: the changes the slot gave (None: the database does not decode, the slot
        was being made, or another instance held the lock). Errors of either server are logged
        once per outage; the next step tries again."""
        try:
            taken = self._step()
        except psycopg.errors.ObjectInUse:
            return None  # another instance's decoder is reading the slot now: its turn
        except (psycopg.Error, DatabaseUnavailable, DecodingError) as error:
            # (DecodingError too: the applier's thread goes on, and says it once.)
            if not self._failing:
                log.warning("changes not decoded: %s", error)
            self._failing = True
            self.close()
            return None
        if self._failing:
            log.info("changes decoded again")
        self._failing = False
        return taken

    def _step(self) -> int | None:
        self.full = False
        self.state = self.primary(STATEMENTS["decoding_state"])
        if self.state is None:
            return None
        slot = self.state["slot"]
        server = self._slot_server()
        status = server.execute(STATEMENTS["slot_status"], {"slot": slot}).fetchone()
        # A standby's slot on a server out of recovery: promoted (seen here, or recorded with the slot).
        promoted = not status["in_recovery"] and (self._in_recovery is True or self.state["on_standby"] is True)
        self._in_recovery = status["in_recovery"]
        if not self.state["slot_ok"]:
            self.make_slot(slot)
            return None
        problem = self.problem(slot, status, promoted=promoted)
        if problem is not None:
            log.error("the summaries stopped: %s; a new slot is made and the summaries built anew", problem)
            self.primary(STATEMENTS["lost"], {"reason": problem})
            self.make_slot(slot)
            return None
        end = status["end"]
        rows = server.execute(
            STATEMENTS["peek"], {"slot": slot, "upto": end, "changes": self.batch, "options": PLUGIN_OPTIONS}
        ).fetchall()
        self.full = len(rows) >= self.batch
        self.behind_bytes = lsn_value(end) - lsn_value(status["confirmed"])
        if self._read is None:
            found = self.primary(STATEMENTS["read_columns"])
            self._read = {name: frozenset(columns) for name, columns in found["tables"].items()}
        transactions = parse([bytes(row["data"]) for row in rows], {}, self._read)
        upto = end if len(rows) < self.batch else (transactions[-1].end if transactions else None)
        changes = [dict(change, lsn=t.end) for t in transactions for change in t.changes]
        if transactions:
            done = self.primary(STATEMENTS["decoded"], {"changes": Jsonb(changes), "upto": transactions[-1].end})
            if done is None or done["logged"] is None:
                return None  # another instance's decoder, or a rebuild, holds the lock
        if upto is not None and lsn_value(upto) > lsn_value(status["confirmed"]):
            self.advance(server, slot, upto)
        return len(changes)

    def advance(self, server: psycopg.Connection, slot: str, upto: str) -> None:
        """The slot moved past what is logged (after the primary's commit: see the module's text)."""
        server.execute(STATEMENTS["advance"], {"slot": slot, "upto": upto})

    @staticmethod
    def problem(slot: str, status: dict[str, Any], *, promoted: bool) -> str | None:
        """Why the slot can no longer give every change, or None."""
        if status["found"] is None:
            return f"the replication slot {slot} is not on the server the service decodes from"
        found = status["found"]
        reason = found.get("invalidation_reason") or ("conflicting" if found.get("conflicting") else None)
        if found.get("wal_status") == "lost" or reason:
            return f"the replication slot {slot} was invalidated ({reason or 'wal_status lost'})"
        if promoted:
            return f"the standby holding the replication slot {slot} was promoted"
        return None

    def make_slot(self, slot: str) -> None:
        """The slot made anew on the slot's server (dropped first if there), and recorded on the
        primary with its consistent point: the summaries are then built anew by the applier,
        from a snapshot taken after this (sql/schema/decoding.sql, kpi_decoding_slot_made)."""
        server = self._slot_server()
        server.execute(STATEMENTS["drop_slot"], {"slot": slot})
        standby = server.execute("SELECT pg_is_in_recovery() AS standby").fetchone()["standby"]
        if standby:
            consistent = self._make_on_standby(slot)
        else:
            consistent = server.execute(STATEMENTS["create_slot"], {"slot": slot}).fetchone()["lsn"]
        self.primary(STATEMENTS["slot_made"], {"slot": slot, "lsn": consistent, "on_standby": standby})
        self._in_recovery = standby
        log.info("made the replication slot %s, consistent from %s", slot, consistent)

    def _make_on_standby(self, slot: str) -> str:
        """A slot on a standby is consistent once the primary has logged its running
        transactions after the slot's start: asked of the primary until the slot is made (else
        the primary's background writer logs them every 15 s)."""
        made: dict[str, Any] = {}
        # The publication and the tables as the primary has them now: replayed first, so that
        # the slot's first change is decoded with them.
        target = self.primary("SELECT pg_current_wal_lsn()::text AS lsn")["lsn"]
        server = self._slot_server()
        deadline = time.monotonic() + REPLAY_WAIT_S
        while not server.execute(STATEMENTS["replayed"], {"target": target}).fetchone()["replayed"]:
            if time.monotonic() > deadline:
                raise DecodingError(f"the standby has not replayed the primary's {target} in {REPLAY_WAIT_S:.0f} s")
            time.sleep(0.01)

        def create() -> None:
            with psycopg.connect(self.slot_url, autocommit=True, row_factory=dict_row) as conn:
                try:
                    made["lsn"] = conn.execute(STATEMENTS["create_slot"], {"slot": slot}).fetchone()["lsn"]
                except psycopg.Error as error:
                    made["error"] = error

        creating = threading.Thread(target=create, name="kpi-slot", daemon=True)
        creating.start()
        snapshots = True
        while creating.is_alive():
            if snapshots:
                try:
                    self.primary("SELECT pg_log_standby_snapshot() AS lsn")
                except (psycopg.Error, DatabaseUnavailable) as error:
                    log.info("the primary does not log a snapshot for the standby's slot (%s): waiting for it", error)
                    snapshots = False
            creating.join(0.1)
        if "error" in made:
            raise made["error"]
        return made["lsn"]


def slot_name(database: str) -> str:
    """The default slot of a database: slots are the server's, so named after the database
    (letters, digits and underscores only, at most 63 bytes)."""
    return ("kpi_" + "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in database.lower()))[:63]


def refusal(primary: psycopg.Connection, server: psycopg.Connection) -> str | None:
    """Why the decoding mode cannot run on this primary with the slot on this server (the same
    one, or a physical standby of it), or None: what the owner must set."""
    facts = primary.cursor(row_factory=dict_row).execute(STATEMENTS["primary_facts"]).fetchone()
    there = server.cursor(row_factory=dict_row).execute(STATEMENTS["slot_server_facts"]).fetchone()
    if facts["wal_level"] != "logical":
        return f"the primary's wal_level is {facts['wal_level']}: set wal_level = logical (a restart)"
    if there["system"] != facts["system"]:
        return "KPI_DECODING_URL is neither the primary nor a physical standby of it (another system identifier)"
    if there["database"] != facts["database"]:
        return f"KPI_DECODING_URL is connected to database {there['database']}, the primary's is {facts['database']}"
    if there["wal_level"] != "logical":
        return f"the slot's server has wal_level {there['wal_level']}: set wal_level = logical there too"
    if not there["replication"]:
        return (
            "the role of KPI_DECODING_URL may not use replication slots: ALTER ROLE ... REPLICATION"
            " (the service's login needs it on that server too)"
        )
    if there["standby"] and there["feedback"] != "on":
        return (
            "the standby's hot_standby_feedback is off: set it on (with primary_slot_name), or the primary's"
            " vacuum invalidates the standby's logical slot"
        )
    return None
