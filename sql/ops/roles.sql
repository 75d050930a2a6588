-- The read-only group role of the KPI service. Safe to run again (also concurrently) in the
-- database that holds the four tables, as their owner or a superuser, after `kpi-service init-db`:
--   psql -v ON_ERROR_STOP=1 -d sales -f sql/ops/roles.sql
-- The service logs in as a member of it (see docs/operations.md, "Read-only database role"), so a bug
-- or a stolen credential can read the sales tables but never change them. init-db runs the file
-- again whenever the role exists, so that an upgrade keeps the role's grants.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'kpi_reader') THEN
        CREATE ROLE kpi_reader NOLOGIN;
        -- The mark `kpi-service uninstall` drops a role by: made here, not found already there.
        COMMENT ON ROLE kpi_reader IS 'kpi-service: made by sql/ops/roles.sql';
    END IF;
EXCEPTION
    -- Made meanwhile (roles are per cluster, so another database may have made it).
    WHEN duplicate_object THEN NULL;
END
$$;

DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO kpi_reader', current_database());
END
$$;

GRANT USAGE ON SCHEMA public TO kpi_reader;
GRANT SELECT ON buyers, listings, leads, purchases TO kpi_reader;
-- What of the service's own objects it reads and runs (sql/schema/manifest.sql, callers 'reader'):
-- the summaries, the KPI statement's functions, and the applier, which runs as the summaries'
-- owner and writes only the service's own tables. All of them in the schema kpi, which it may
-- use but not create in.
GRANT USAGE ON SCHEMA kpi TO kpi_reader;
DO $$
DECLARE
    object record;
BEGIN
    FOR object IN SELECT kind, name FROM kpi.kpi_manifest WHERE callers = 'reader' AND installed LOOP
        IF object.kind = 'function' THEN
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO kpi_reader', to_regprocedure(object.name));
        ELSE
            EXECUTE format('GRANT SELECT ON %s TO kpi_reader', to_regclass(object.name));
        END IF;
    END LOOP;
END
$$;
