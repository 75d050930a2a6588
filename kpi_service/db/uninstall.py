"""`kpi-service uninstall`: every object the service installed (sql/schema/manifest.sql) dropped
from the application's database, and the service's roles where it can prove it made them.

Safe on a live database. Each step that needs a lock the application's writes also take gives
way to them (db/giving_way.py):
- the triggers first (the application's writes stop logging), a table's four in one short
  transaction (DROP TRIGGER locks the table ACCESS EXCLUSIVE);
- then the service's own view, functions and tables, and their schema kpi, in one transaction
  (nothing of the application's takes their locks once the triggers are gone);
- the indexes on the application's tables DROP INDEX CONCURRENTLY (a lock writes do not wait for);
- the roles last.
Each step is idempotent, so a removal stopped half-way is finished by running it again."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from kpi_service.db.decoding import STATEMENTS
from kpi_service.db.giving_way import giving_way, lock_timeout_ms
from kpi_service.db.schema import SERVICE_SCHEMA, sales_schema, schema_text

# (role, the mark sql/ops/ put on it when it made it): dropped only with that mark. A member first.
ROLES = (
    ("kpi", "kpi-service: made by sql/ops/service_login.sql"),
    ("kpi_reader", "kpi-service: made by sql/ops/roles.sql"),
)
APPLICATION_TABLES = ("buyers", "listings", "leads", "purchases")
# The mark sql/schema/schema.sql puts on the schema kpi it makes: one without it is not the service's.
SCHEMA_MARK = "kpi-service: made by kpi-service init-db"


@dataclass
class Plan:
    """What is there to drop, in the order it goes."""

    # Every name as the manifest gives it, with its schema (quoted where it must be): from the
    # package's own text and the sales tables' schema, never from anyone's input.
    triggers: list[tuple[str, str]] = field(default_factory=list)  # (trigger, table)
    functions: list[str] = field(default_factory=list)  # signatures
    tables: list[str] = field(default_factory=list)
    views: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    publications: list[str] = field(default_factory=list)  # the decoding mode's
    slot: tuple[str, str] | None = None  # the decoding mode's (slot, the URL of its server)
    indexes: list[tuple[str, str]] = field(default_factory=list)  # (index, table) on the application's tables
    schema: str | None = None  # kpi, dropped last of the service's own objects, once empty
    roles: list[str] = field(default_factory=list)  # made by the service: dropped
    kept_roles: list[str] = field(default_factory=list)  # found there before it: their grants here revoked
    # Made by the service, but another database of the server still uses them (role -> those
    # databases): their grants here revoked, the roles left to the last database to remove the service.
    shared_roles: dict[str, list[str]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (
            self.triggers
            or self.functions
            or self.tables
            or self.views
            or self.types
            or self.publications
            or self.slot
            or self.indexes
            or self.schema
            or self.roles
        )

    def lines(self) -> list[str]:
        return [
            *(f"trigger  {name} on {table}" for name, table in self.triggers),
            *(f"function {name}" for name in self.functions),
            *(f"table    {name}" for name in self.tables),
            *(f"view     {name}" for name in self.views),
            *(f"type     {name}" for name in self.types),
            *(f"publication {name}" for name in self.publications),
            *([f"replication slot {self.slot[0]}"] if self.slot else []),
            *([f"schema   {self.schema}"] if self.schema else []),
            *(f"index    {name} on {table}" for name, table in self.indexes),
            *(f"role     {name}" for name in self.roles),
            *(f"(role {name} stays: not made by kpi-service; its grants here are revoked)" for name in self.kept_roles),
            *(
                f"(role {name} stays: {_elsewhere(databases)}; its grants here are revoked)"
                for name, databases in self.shared_roles.items()
            ),
        ]


def manifest_query(conn: psycopg.Connection) -> str:
    """The query of the kpi_manifest view, read from the package rather than the database: a
    removal stopped after the view went still knows what remains."""
    text = schema_text(conn, "schema/manifest.sql", sales_schema(conn))
    start = text.index("SELECT", text.index("CREATE OR REPLACE VIEW kpi.kpi_manifest AS"))
    end = text.index(";", text.index(") AS m (kind, name, callers, on_table)"))
    return text[start:end]


def plan(conn: psycopg.Connection, decoding_url: str | None = None) -> Plan:
    """What is installed; the decoding mode's slot on `decoding_url` (the primary's own server by
    default), if it is there."""
    found = Plan()
    if conn.execute("SELECT to_regclass('kpi.kpi_decoding') IS NOT NULL").fetchone()[0]:
        row = conn.execute("SELECT slot FROM kpi.kpi_decoding").fetchone()
        url = decoding_url or conn.info.dsn
        if row is not None:
            with psycopg.connect(url, autocommit=True) as server:
                if server.execute("SELECT true FROM pg_replication_slots WHERE slot_name = %s", [row[0]]).fetchone():
                    found.slot = (row[0], url)
    rows = conn.execute(
        # (An index a build left invalid is not installed, but is there to drop.)
        f"SELECT kind, name, on_table FROM ({manifest_query(conn)}) AS m"  # noqa: S608 - the package's own text
        " WHERE installed OR (kind = 'index' AND to_regclass(name) IS NOT NULL)"
    ).fetchall()
    for kind, name, on_table in rows:
        if kind == "trigger":
            found.triggers.append((name, on_table))
        elif kind == "function":
            found.functions.append(name)
        elif kind == "table":
            found.tables.append(name)
        elif kind == "view":
            found.views.append(name)
        elif kind == "type":
            found.types.append(name)
        elif kind == "publication":
            found.publications.append(name)
        elif kind == "index" and not on_table.startswith(f"{SERVICE_SCHEMA}."):
            found.indexes.append((name, on_table))
        # (the service's indexes on its own tables go with them)
    if conn.execute(
        "SELECT obj_description(to_regnamespace(%s), 'pg_namespace') = %s", [SERVICE_SCHEMA, SCHEMA_MARK]
    ).fetchone()[0]:
        found.schema = SERVICE_SCHEMA
    for role, mark in ROLES:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s", [role]
        ).fetchone()
        if row is None:
            continue
        if row[0] == mark:
            if databases := _used_elsewhere(conn, role):
                found.shared_roles[role] = databases
            else:
                found.roles.append(role)
        elif role == "kpi_reader" and _has_grants_here(conn, role):
            found.kept_roles.append(role)
    return found


def _used_elsewhere(conn: psycopg.Connection, role: str) -> list[str]:
    """The other databases of the server that grant the role, or a role it is a member of (the
    login's kpi_reader), something or hold objects of it: pg_shdepend, the server's own record of
    every database's dependencies on roles, read from any one database."""
    rows = conn.execute(
        """
        SELECT DISTINCT d.datname
        FROM pg_shdepend s
        JOIN pg_database d
          ON d.oid = CASE WHEN s.dbid = 0 AND s.classid = 'pg_database'::regclass THEN s.objid ELSE s.dbid END
        WHERE s.refclassid = 'pg_authid'::regclass
          AND s.refobjid IN (SELECT r.oid FROM pg_roles r WHERE r.rolname = %(role)s
                             UNION
                             SELECT m.roleid FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member
                             WHERE r.rolname = %(role)s)
          AND d.datname <> current_database()
        ORDER BY 1
        """,
        {"role": role},
    ).fetchall()
    return [name for (name,) in rows]


def _elsewhere(databases: list[str]) -> str:
    return f"still used in database {', '.join(databases)} (roles belong to the whole server)"


def _has_grants_here(conn: psycopg.Connection, role: str) -> bool:
    """Whether the role holds a grant of its own on the application's tables, their schema or the database."""
    return conn.execute(
        """
        SELECT EXISTS (SELECT FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
                       WHERE c.relname = ANY (%s) AND c.relnamespace = current_schema()::regnamespace
                         AND a.grantee = r.oid)
            OR EXISTS (SELECT FROM pg_namespace n CROSS JOIN LATERAL aclexplode(n.nspacl) a
                       WHERE n.nspname = current_schema() AND a.grantee = r.oid)
            OR EXISTS (SELECT FROM pg_database d CROSS JOIN LATERAL aclexplode(d.datacl) a
                       WHERE d.datname = current_database() AND a.grantee = r.oid)
        FROM pg_roles r WHERE r.rolname = %s
        """,
        [list(APPLICATION_TABLES), role],
    ).fetchone()[0]


def remove(conn: psycopg.Connection, found: Plan, say: Callable[[str], None]) -> None:
    """Drop what `found` lists, on an autocommit connection (DROP INDEX CONCURRENTLY needs one)."""
    conn.execute("SELECT set_config('lock_timeout', %s, false)", [f"{lock_timeout_ms(conn)}ms"])
    if found.slot is not None:
        # First: a slot nobody reads holds the WAL of its server.
        slot, url = found.slot
        with psycopg.connect(url, autocommit=True) as server:
            server.execute(STATEMENTS["drop_slot"], {"slot": slot})
        say(f"dropped the replication slot {slot}")
    by_table: dict[str, list[str]] = {}
    for name, table in found.triggers:
        by_table.setdefault(table, []).append(name)
    for table, names in by_table.items():
        _retried(conn, [_drop_trigger(name, table) for name in names], f"the triggers on {table}")
        say(f"dropped the triggers on {table}")
    own = [
        *(sql.SQL("DROP VIEW IF EXISTS {}").format(sql.SQL(name)) for name in found.views),
        *(sql.SQL("DROP FUNCTION IF EXISTS {}").format(sql.SQL(name)) for name in found.functions),
        *(sql.SQL("DROP TYPE IF EXISTS {}").format(sql.SQL(name)) for name in found.types),
        *(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name)) for name in found.publications),
        *(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.SQL(name)) for name in found.tables),
        # Not CASCADE: whatever else is in it (nobody but the owner may create there) stays, and
        # says so, as does anything of the application's that depends on the service's objects.
        *([sql.SQL("DROP SCHEMA IF EXISTS {}").format(sql.Identifier(found.schema))] if found.schema else []),
    ]
    if own:
        _retried(conn, own, "the service's own tables, functions and view")
        say("dropped the service's own tables, functions and view")
    for name, _table in found.indexes:
        _retried(
            conn,
            [sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.SQL(name))],
            f"index {name}",
            transaction=False,
        )
        say(f"dropped index {name}")
    for role in (*found.roles, *found.kept_roles, *found.shared_roles):
        _revoke_here(conn, role)
    for role, databases in found.shared_roles.items():
        say(f"kept role {role}: {_elsewhere(databases)}; its grants here are revoked")
    for role in found.roles:
        try:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
            say(f"dropped role {role}")
        except psycopg.errors.DependentObjectsStillExist as error:
            # Roles belong to the whole server: another database still grants it something.
            say(f"kept role {role}: {error.diag.message_primary} ({error.diag.message_detail or ''})".strip())


def _drop_trigger(name: str, table: str) -> sql.Composable:
    return sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(name), sql.SQL(table))


def _revoke_here(conn: psycopg.Connection, role: str) -> None:
    """What sql/ops/ granted the role in this database (the service's own objects are gone)."""
    who = sql.Identifier(role)
    conn.execute(
        sql.SQL("REVOKE ALL ON {} FROM {}").format(sql.SQL(", ").join(map(sql.Identifier, APPLICATION_TABLES)), who)
    )
    conn.execute(sql.SQL("REVOKE ALL ON SCHEMA {} FROM {}").format(sql.Identifier(_schema(conn)), who))
    conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(sql.Identifier(_database(conn)), who))


def _schema(conn: psycopg.Connection) -> str:
    return conn.execute("SELECT current_schema()").fetchone()[0]


def _database(conn: psycopg.Connection) -> str:
    return conn.execute("SELECT current_database()").fetchone()[0]


def _retried(
    conn: psycopg.Connection, statements: Iterable[sql.Composable], what: str, *, transaction: bool = True
) -> None:
    statements = list(statements)

    def attempt() -> None:
        for statement in statements:
            conn.execute(statement)

    giving_way(conn, attempt, what, command="kpi-service uninstall", transaction=transaction)
