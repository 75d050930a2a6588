-- The capture mode asked for (`kpi-service init-db --capture`), applied after summary.sql in
-- init-db's transaction; kpi.capture, a setting of that transaction, names it. Safe to run again.
SELECT set_config('search_path', 'kpi, pg_catalog, pg_temp', true);

-- The mode asked for. Decoding: no trigger on the application's tables; the publication of the
-- three tables (no column list, no row filter: the slot gives whole rows); the state row, made
-- with slot_ok false until init-db has made the slot. Triggers: summary.sql made them; no
-- publication, no state row (init-db drops the slot first).
DO $$
DECLARE
    t text;
BEGIN
    IF current_setting('kpi.capture', true) = 'decoding' THEN
        FOREACH t IN ARRAY ARRAY['listings', 'leads', 'purchases'] LOOP
            EXECUTE format('DROP TRIGGER IF EXISTS %I ON %I.%I', 'kpi_' || t || '_insert', @sales_name@, t);
            EXECUTE format('DROP TRIGGER IF EXISTS %I ON %I.%I', 'kpi_' || t || '_update', @sales_name@, t);
            EXECUTE format('DROP TRIGGER IF EXISTS %I ON %I.%I', 'kpi_' || t || '_delete', @sales_name@, t);
            EXECUTE format('DROP TRIGGER IF EXISTS %I ON %I.%I', 'kpi_' || t || '_truncate', @sales_name@, t);
        END LOOP;
        IF NOT EXISTS (SELECT FROM pg_publication WHERE pubname = 'kpi') THEN
            EXECUTE format('CREATE PUBLICATION kpi FOR TABLE %1$I.listings, %1$I.leads, %1$I.purchases', @sales_name@);
            -- The mark uninstall and the service know the service's own by (as the schema's).
            COMMENT ON PUBLICATION kpi IS 'kpi-service: made by kpi-service init-db';
        ELSIF NOT kpi.kpi_decoding_publication() THEN
            RAISE EXCEPTION 'kpi-service: a publication named kpi exists and is not the service''s'
                USING HINT = 'The decoding mode makes its own publication kpi: rename that one.';
        END IF;
        IF NOT EXISTS (SELECT FROM kpi.kpi_decoding) THEN
            INSERT INTO kpi.kpi_decoding (slot, slot_ok) VALUES (current_setting('kpi.slot'), false);
            DELETE FROM kpi.kpi_summary_state;  -- built anew once the slot is made
        END IF;
        UPDATE kpi.kpi_summary_state SET triggers = kpi.kpi_trigger_state();
    ELSE
        IF kpi.kpi_decoding_publication() THEN
            DROP PUBLICATION kpi;
        END IF;
        IF EXISTS (SELECT FROM kpi.kpi_decoding) THEN
            DELETE FROM kpi.kpi_decoding;
            TRUNCATE kpi.kpi_row_copy;
            DELETE FROM kpi.kpi_summary_state;  -- the log missed what the slot gave meanwhile
        END IF;
    END IF;
END
$$;
