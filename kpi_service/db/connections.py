"""The one connection pool of the service, and the statements it runs on it (their text: sql.py).

Over 250 lines because Database is one object: every statement goes through its `connection()`,
which maps psycopg's failures to db/errors.py and counts them, and through its replica routing."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from kpi_service.config import Settings
from kpi_service.db.errors import (
    INIT_HINT,
    DatabaseBusy,
    DatabaseUnavailable,
    SalesTablesChanged,
    SchemaMismatch,
    SchemaMissing,
    StatementTimeout,
)
from kpi_service.db.identity import scope_of
from kpi_service.db.schema import compatibility
from kpi_service.db.sql import (
    APPLY,
    APPLY_BATCH,
    AUDIT_STATE,
    CHANGED,
    IDENTITY,
    LEGACY_SOURCE,
    MODE,
    OLD_LAYOUT_MODE,
    OLD_LAYOUT_SCHEMA,
    PENDING,
    REBUILD,
    SALES_TABLES,
    WAL_POSITION,
    in_applier_turn,
    kpi_statement_parts,
    metrics_of,
    queries,
    waiting_for_the_applier,
)
from kpi_service.db.targets import Target, read_targets
from kpi_service.ops import metrics

log = logging.getLogger(__name__)
T = TypeVar("T")


class ReadRouter(Protocol):
    """Where KPI reads go while it keeps up: a streaming replica (replica.py)."""

    def run(self, operation: str, read: Callable[[psycopg.Connection], T]) -> tuple[T] | None: ...

    def observe(self, position: int) -> None: ...

    def close(self) -> None: ...


RECONNECT_TIMEOUT_S = 5.0
# How often the mode (summaries or raw) is looked up again.
MODE_EVERY_S = 30.0
# Read-only, and no JIT: the KPI statement's estimates include the raw-row branch it rarely
# runs, which makes PostgreSQL spend more time compiling it (~0.6 s) than running it (ms). UTC:
# the SQL is written to be the same in every session time zone (the model-based test runs it in
# several), and pinning it as well leaves a database's or role's TimeZone no way in. The search
# path: every statement names the service's objects with their schema, and its functions name the
# sales tables with theirs, so the sessions search kpi and the catalog alone: no function or
# operator that a role allowed to create in the sales tables' schema defines is ever chosen for
# the service's statements (issue 33, item 11), nor a temporary table before the catalog.
SESSION_OPTIONS = "-c default_transaction_read_only=on -c jit=off -c TimeZone=UTC -c search_path=kpi,pg_catalog,pg_temp"


# The errors of a statement naming a table, function or schema (kpi) that is not there.
_UNDEFINED = (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedFunction, psycopg.errors.InvalidSchemaName)


class Database:
    """Owns the pool. Connections are read-only, bounded in time, and checked on checkout so
    that a restarted server is noticed on the first request after it instead of failing one.

    The KPI reads (kpi_rows, next_aging, mode) go to `replica` while it keeps up, when one is
    attached (replica.py); everything else, the applier's maintenance included, stays here."""

    def __init__(
        self,
        settings: Settings,
        *,
        url: str | None = None,
        application_name: str = "kpi-service",
        pool_timeout: float | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._opened = False
        self._mode: str | None = None
        self._mode_at = 0.0
        # A trigger disabled, or the summaries installed, while the service runs: noticed within this.
        self.mode_every = MODE_EVERY_S
        self._schema_missing = False
        # Whether the database has a change log (the summaries installed), as of the last mode lookup.
        self.logged = False
        # The database's schema version, last looked up with the mode (for /readyz), and why this
        # service may not serve from it (None: it may).
        self.schema_version: int | None = None
        self._mismatch: str | None = None
        # Which database this is, for the Redis keys (serving/keys.py): read once, by the first
        # lookup of the mode that finds the KPI schema (the service may start before the database).
        self._scope: str | None = None
        self.replica: ReadRouter | None = None
        self.max_connections = settings.db_pool_size
        self.capture = settings.capture  # KPI_CAPTURE: whether this service runs the decoder
        self._in_use = 0  # connections handed out through this class, see saturated()
        self.pool = ConnectionPool(
            url or settings.database_url,
            min_size=1,
            max_size=settings.db_pool_size,
            timeout=settings.db_pool_timeout if pool_timeout is None else pool_timeout,
            open=False,
            check=ConnectionPool.check_connection,
            # psycopg_pool retries a lost connection with a doubling delay (1, 2, 4, 8 ... s) and
            # no cap until reconnect_timeout (5 min by default), so after an outage of a minute
            # the next attempt could be a minute after the server is back. Giving up after a few
            # seconds ends that series; the next request then starts a new one at once.
            reconnect_timeout=RECONNECT_TIMEOUT_S,
            name="kpi",
            kwargs={
                "row_factory": dict_row,
                "connect_timeout": settings.db_connect_timeout,
                # statement_timeout is the server's: a server that hangs or a network that drops
                # packets is noticed by TCP keepalives and the user timeout instead.
                "keepalives": 1,
                "keepalives_idle": 5,
                "keepalives_interval": 2,
                "keepalives_count": 2,
                "tcp_user_timeout": 10_000,
                "application_name": application_name,
                # kpi.audit_seconds: the applier's calls audit a day of the summaries that often
                # (sql/schema/summary.sql, kpi_audit_due); unset, they audit nothing.
                "options": f"{SESSION_OPTIONS} -c statement_timeout={settings.statement_timeout_ms}"
                + (f" -c kpi.audit_seconds={settings.audit_interval}" if settings.audit_interval else ""),
            },
        )

    def _ensure_open(self) -> None:
        # Opened on first use, not in create_app: the pool's worker threads must start in the
        # process that serves (after gunicorn forks), and a database that is down at start must
        # not stop the service from starting.
        if not self._opened:
            with self._lock:
                if not self._opened:
                    self.pool.open(wait=False)
                    self._opened = True

    def mode(self, *, refresh: bool = False, quiet: bool = False, primary: bool = False) -> str:
        """Where the KPIs come from, "summaries" or "raw" (see MODE): looked up again every
        mode_every seconds, or when asked to refresh; on the replica like the KPI reads, unless
        asked for the primary's (the applier: whether there is a change log to apply there)."""
        if not refresh and not self._mode_due():
            return self._mode  # type: ignore[return-value]
        if primary:
            with self.connection("mode", quiet=quiet) as conn:
                return self._look_up_mode(conn)
        return self._read("mode", self._look_up_mode, quiet=quiet)[0]

    def _look_up_mode(self, conn: psycopg.Connection) -> str:
        """The mode, once the database's schema version is one this service reads right: else
        SchemaMismatch, for every read and the applier alike, until a lookup finds it right."""
        try:
            row = conn.execute(MODE).fetchone()
        except (psycopg.errors.InvalidSchemaName, psycopg.errors.UndefinedTable) as missing:
            conn.rollback()
            # No schema kpi: installed by a version before 7, in the sales tables' schema, whose
            # version is all that is read there (older than this service reads); before version 2
            # without a recorded version; or not at all (SchemaMissing).
            row = self._old_layout(conn, missing)
        if row is None:
            self.schema_version = None
            problem: str | None = f"the database's KPI schema has no version recorded: {INIT_HINT}"
        else:
            self.schema_version = row["version"]
            problem = compatibility(row["version"], row["oldest_service"])
        changed = False
        if problem is None:
            tables = conn.execute(SALES_TABLES).fetchone()
            self.logged = tables["logged"]
            if tables["decoding"] and self.capture != "decoding":
                # Nothing else would feed the summaries: the triggers are gone.
                problem = (
                    "the database takes its changes from a replication slot (kpi-service init-db --capture decoding)"
                    " and this service does not decode: set KPI_CAPTURE=decoding (and KPI_DECODING_URL)"
                )
            elif tables["missing"]:
                changed = True
                problem = (
                    f"the sales tables lack columns the KPIs read ({', '.join(tables['missing'])}): renamed or"
                    " dropped; once they are back, run kpi-service init-db"
                )
        if problem != self._mismatch:
            if problem:
                log.error("not serving: %s", problem)
            else:
                log.info("the database's KPI schema (version %s) is one this service reads", self.schema_version)
            self._mismatch = problem
        if problem:
            self._mode = None  # looked up again on every read until it is right
            raise (SalesTablesChanged if changed else SchemaMismatch)(problem)
        if self._scope is None:
            self._scope = self._identify(conn)
        found = row["mode"]
        if found != self._mode:
            log.info(
                "KPI statement reads %s",
                "the summaries (sql/schema/summary.sql)"
                if found == "summaries"
                else "the raw rows: summaries not installed or not built (kpi-service init-db), or a trigger disabled",
            )
        self._mode = found
        self._mode_at = time.monotonic()
        return found

    def _old_layout(self, conn: psycopg.Connection, missing: psycopg.Error) -> dict[str, Any] | None:
        """The version of a schema before 7, in the sales tables' schema (not on this session's
        search path: found by its kpi_schema table, or kpi_source() before version 2); `missing`
        again (SchemaMissing) where there is none."""
        found = conn.execute(OLD_LAYOUT_SCHEMA).fetchone()
        if found is not None:
            table = sql.Identifier(found["schema"], "kpi_schema")
            return conn.execute(sql.SQL(OLD_LAYOUT_MODE).format(table)).fetchone()
        if conn.execute(LEGACY_SOURCE).fetchone() is None:
            raise missing
        return {"mode": None, "version": 1, "oldest_service": 1}

    def _identify(self, conn: psycopg.Connection) -> str:
        """The database's scope: a standby of it has the same system identifier and name."""
        try:
            row = conn.execute(IDENTITY).fetchone()
        except psycopg.errors.InsufficientPrivilege:
            conn.rollback()
            log.error(
                "no shared cache: the service's role may not run pg_control_system() (PUBLIC may by default),"
                " so it cannot tell this database's values in Redis from another's"
            )
            return ""  # not None: not looked up again, and no scope ever
        return scope_of(row["system_identifier"], row["name"])

    def scope(self) -> str | None:
        """The scope of this database's values in Redis (serving/keys.py), once the service has
        found the KPI schema there, in a version it reads; None before, and while the schema is
        missing or of another version: nothing cached is served then."""
        if not self._scope or self._mode is None or self._schema_missing:
            return None
        return self._scope

    def _mode_due(self) -> bool:
        return self._mode is None or time.monotonic() - self._mode_at >= self.mode_every

    def kpi_rows(
        self,
        windows: Sequence[tuple[datetime | None, datetime | None, datetime]],
        aged_days: int,
    ) -> tuple[list[dict[str, Any]], float, str | None, int, list[dict[str, Any]]]:
        """One execution of sql/runtime/kpi.sql: a row per (start, end, as_of) window, its duration in ms,
        which database answered ("replica" or "primary"; None when no replica is attached),
        the change-log rows the summaries did not include yet (0 in raw mode, which reads the
        tables themselves), and the rows as the statement gave them (with the summaries: each
        window's sums and the summaries' batch, serving/advance.py).

        The log is counted first, on the same connection: the KPIs' snapshot is then as late
        or later, so 0 means that every write committed before the computation began is in
        the numbers (a batch applied in between only makes the count too high)."""

        def run(conn: psycopg.Connection) -> tuple[list[dict[str, Any]], float, int]:
            mode = self._look_up_mode(conn) if self._mode_due() else self._mode
            pending = conn.execute(PENDING).fetchone()["pending"] if mode == "summaries" else 0
            started = time.perf_counter()
            rows = kpi_statement_parts(conn, mode, windows, aged_days)
            return rows, (time.perf_counter() - started) * 1000, pending

        (parts, duration_ms, pending), answered_by = self._read("query", run)
        return [metrics_of(row) for row in parts], duration_ms, answered_by, pending, parts

    def targets(self) -> tuple[Target, ...]:
        """The owner's targets (db/targets.py), from the primary: where they are written, and a
        replica's lag would hold a change back."""
        with self.connection("targets", quiet=True) as conn:
            return read_targets(conn)

    def metrics_of_sums(self, arguments: dict[str, list[Any]]) -> list[dict[str, Any]]:
        """The ten KPIs of sums the service holds (sql/runtime/kpi.sql, kpi_metrics_of): the
        divisions and roundings of every statement, with no table read."""
        return self._read("query", lambda conn: [dict(row) for row in queries.kpi_metrics_of(conn, **arguments)])[0]

    def _read(
        self, operation: str, run: Callable[[psycopg.Connection], T], *, quiet: bool = False
    ) -> tuple[T, str | None]:
        """`run` on the replica while it keeps up, else here: its result and where it ran."""
        if self.replica is not None:
            answered = self.replica.run(operation, run)
            if answered is not None:
                return answered[0], "replica"
        with self.connection(operation, quiet=quiet) as conn:
            return run(conn), None if self.replica is None else "primary"

    def observe_position(self, position: int) -> None:
        """A WAL position of the primary that KPI reads must include (the latest applied batch's,
        from Redis): a replica read waits until it has replayed it (replica.py)."""
        if self.replica is not None and position:
            self.replica.observe(position)

    def wal_position(self) -> int:
        """Where the primary has written its WAL to (quiet: the replica's monitor asks every
        250 ms, and the applier logs an outage of the primary)."""
        with self.connection("position", quiet=True) as conn:
            return conn.execute(WAL_POSITION).fetchone()["position"]

    def apply_changes(
        self,
        max_rows: int = APPLY_BATCH,
        *,
        busy_share: float = 1.0,
        wait: bool = False,
        on_changed: Callable[[dict[str, Any]], None] | None = None,
        on_audited: Callable[[dict[str, Any]], None] | None = None,
    ) -> int | None:
        """Bring the summaries up to date with the change log (sql/schema/summary.sql): the number of log
        rows applied, None when another session is applying (unless told to wait for it) or
        the applier rests (`busy_share` below 1: sql/schema/summary.sql, "Pacing").
        kpi_apply_changes runs as its owner and writes only the service's tables, so the
        read-only role needs nothing more than the right to call it. `on_changed` gets what a
        batch changed, once it is committed (so that whoever it tells reads the change);
        `on_audited`, what the audit found, when it ran in the call (kpi_audit_due)."""
        changed = audited = position = None
        began = 0.0
        # Quiet: the applier runs every half second, and logs an outage once itself.
        with self.connection("apply", quiet=True) as conn:
            if self._scope is None:
                # The batches' announcements go to the database's channels (serving/keys.py),
                # whoever applies first: a request, the applier's loop, `kpi-service apply --once`.
                # (With a column the KPIs read gone, the batch still runs: it stops the summaries
                # and empties the log.)
                try:
                    self._look_up_mode(conn)
                except SalesTablesChanged:
                    self._scope = self._identify(conn)
                conn.commit()

            def attempt() -> int | None:
                nonlocal changed, audited, began
                began = time.time()  # before the batch's snapshot
                with conn.transaction():
                    for statement in APPLY[:2]:
                        conn.execute(statement)
                    taken = conn.execute(APPLY[2], [max_rows, busy_share]).fetchone()["taken"]
                    if taken is not None:
                        changed, audited = conn.execute(CHANGED).fetchone().values()
                return taken

            taken = waiting_for_the_applier(attempt) if wait else attempt()
            if changed and self.replica is not None:
                # After the commit: a replica that has replayed this far has the batch.
                position = conn.execute(WAL_POSITION).fetchone()["position"]
        if audited and on_audited is not None:
            on_audited(json.loads(audited))
        if changed and on_changed is not None:
            batch = json.loads(changed)
            # Every write committed before it is in the summaries when the batch found the log
            # empty (kpi_apply_changes' caught_up).
            batch["began"] = began
            if position is not None:
                batch["position"] = position
            on_changed(batch)
        return taken

    def next_aging(self, as_of: datetime, aged_days: int) -> datetime | None:
        """When aged_inventory at "now" next grows without a write (sql/runtime/kpi.sql, next_aging)."""
        return self._read("aging", lambda conn: queries.next_aging(conn, as_of=as_of, aged_days=aged_days))[0]

    def audit_state(self) -> dict[str, Any]:
        """The summaries' audit: when its last whole pass ended, what that pass repaired, and what it
        has repaired since the summaries were installed (sql/schema/summary.sql, kpi_audit_state)."""
        with self.connection("audit") as conn:
            row = conn.execute(AUDIT_STATE).fetchone()
        at = row["last_pass_at"]
        return {**row, "last_pass_at": at.isoformat() if at else None}

    def rebuild_if_needed(self, aged_days: int) -> bool:
        """Build the summaries anew where they stopped and only a build brings them back, with
        aged_days' fast path (kpi_rebuild_if_needed): whether it built them."""
        with self.connection("rebuild") as conn:
            statement, *setup = REBUILD
            return in_applier_turn(conn, statement, [aged_days], *setup)

    def pending_changes(self) -> int:
        """Rows in the change log that the applier has not taken yet."""
        with self.connection("pending") as conn:
            return conn.execute(PENDING).fetchone()["pending"]

    @contextlib.contextmanager
    def connection(self, operation: str, *, quiet: bool = False) -> Iterator[psycopg.Connection]:
        """A pooled connection; any database error becomes DatabaseUnavailable, counted and
        (unless quiet) logged; DatabaseBusy and SchemaMissing say what else it may be."""
        self._ensure_open()
        try:
            with self.pool.connection() as conn, self._held():
                yield conn
        except _UNDEFINED as error:
            self._schema_is_missing(error)
            raise SchemaMissing(f"the database has no KPI schema: {INIT_HINT}") from error
        except psycopg.errors.UndefinedColumn as error:
            # A column of the sales tables renamed or dropped since the mode was looked up: the
            # next lookup names them all (and the applier stops the summaries).
            self._mode_at = 0.0
            raise SalesTablesChanged(
                f"the sales tables lack columns the KPIs read ({error.diag.message_primary}): renamed or dropped;"
                " once they are back, run kpi-service init-db"
            ) from error
        except PoolTimeout as error:
            if self.saturated():
                metrics.POOL_BUSY.labels(operation=operation).inc()
                raise DatabaseBusy(f"all {self.max_connections} connections of the pool are in use") from error
            self._failed(operation, error, quiet)
        except psycopg.Error as error:
            self._failed(operation, error, quiet)
        if self._schema_missing:
            self._schema_missing = False
            log.info("the KPI schema is there now")

    def _failed(self, operation: str, error: psycopg.Error, quiet: bool) -> None:
        metrics.DATABASE_ERRORS.labels(operation=operation).inc()
        if not quiet:
            log.warning("database unavailable: %s", error.__class__.__name__)
        timed_out = isinstance(error, psycopg.errors.QueryCanceled)
        raise (StatementTimeout if timed_out else DatabaseUnavailable)(str(error)) from error

    def _schema_is_missing(self, error: psycopg.Error) -> None:
        # Once per detection, whatever the caller: the applier's first tick finds it at startup,
        # then a request, after a schema that was there has gone.
        if not self._schema_missing:
            self._schema_missing = True
            log.error("the database has no KPI schema (%s): %s", error.__class__.__name__, INIT_HINT)

    @contextlib.contextmanager
    def _held(self) -> Iterator[None]:
        with self._lock:
            self._in_use += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_use -= 1

    def saturated(self) -> bool:
        """Every connection the pool may open is handed out: a wait for one was a wait for
        running statements, not for a server that does not answer (then the pool's own
        connection attempts fail, and no connection is handed out)."""
        return self._in_use >= self.max_connections

    def ping(self, timeout: float) -> str:
        """`SELECT 1` through the pool, waiting at most `timeout` seconds for a connection: "ok",
        "busy" (every connection in use all that time) or "down"."""
        self._ensure_open()
        try:
            with self.pool.connection(timeout=timeout) as conn, self._held():
                conn.execute("SELECT 1")
            return "ok"
        except PoolTimeout:
            if self.saturated():
                return "busy"
            metrics.DATABASE_ERRORS.labels(operation="ping").inc()
            log.warning("database ping failed: PoolTimeout")
            return "down"
        except psycopg.Error as error:
            metrics.DATABASE_ERRORS.labels(operation="ping").inc()
            log.warning("database ping failed: %s", error.__class__.__name__)
            return "down"

    def close(self) -> None:
        if self.replica is not None:
            self.replica.close()
        self.pool.close()
