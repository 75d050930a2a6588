-- The read-only group role of the KPI service. Safe to run again (also concurrently) in the
-- database that holds the four tables, as their owner or a superuser:
--   psql -v ON_ERROR_STOP=1 -d sales -f sql/ops/roles.sql
-- The service logs in as a member of it (see the README, "Read-only database role"), so a bug
-- or a stolen credential can read the sales tables but never change them.

DO $$
BEGIN
    CREATE ROLE kpi_reader NOLOGIN;
EXCEPTION
    -- Already there (roles are per cluster, so another database may have made it).
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
-- The service's summaries (sql/schema/summary.sql), where installed: it reads them, and brings them up
-- to date through kpi_apply_changes(), which runs as their owner and writes only the service's
-- own tables.
DO $$
DECLARE
    applier regprocedure;
BEGIN
    IF to_regclass('kpi_summary_state') IS NOT NULL THEN
        GRANT SELECT ON kpi_sums, kpi_buyer_buckets, kpi_sales, kpi_summary_state TO kpi_reader;
        GRANT EXECUTE ON FUNCTION kpi_pending_changes(), kpi_applier_session_lock(boolean) TO kpi_reader;
        -- Whichever form the installed version has (before and after init-db's upgrade).
        FOR applier IN SELECT oid::regprocedure FROM pg_proc WHERE proname = 'kpi_apply_changes'
                       AND pronamespace = 'public'::regnamespace
        LOOP
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO kpi_reader', applier);
        END LOOP;
    END IF;
END
$$;
