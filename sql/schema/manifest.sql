-- Everything kpi-service installs in the application's database, and who may run each function.
-- Applied by `kpi-service init-db` last, in the transaction of schema.sql and summary.sql. Safe
-- to run again. `SELECT * FROM kpi_manifest` shows the owner the list and what of it is there.
--
-- The rule, stated here once for every function in the list:
-- - nobody runs it but its owner (PUBLIC's default EXECUTE is revoked), except the functions
--   marked 'reader', which sql/ops/roles.sql grants to kpi_reader, the service's role;
-- - a SECURITY DEFINER function runs with its search path pinned to the tables' schema, then
--   pg_temp, so that neither the caller's search path nor a temporary table can stand in for
--   what it names.
-- The trigger functions are 'trigger': a trigger runs its function without checking EXECUTE, so
-- the application's writes log their changes while nobody can attach them to a table of their own.
CREATE OR REPLACE VIEW kpi_manifest AS
SELECT m.kind, m.name, m.callers,
       CASE m.kind
           -- (Its argument types are looked up only where its name is there: on PostgreSQL 15
           -- to_regprocedure fails on a type that is not, kpi_sums under --without-summaries.)
           WHEN 'function' THEN EXISTS (SELECT FROM pg_proc p WHERE p.proname = split_part(m.name, '(', 1)
                                                                AND p.pronamespace = current_schema()::regnamespace)
                                AND to_regprocedure(m.name) IS NOT NULL
           WHEN 'trigger' THEN EXISTS (SELECT FROM pg_trigger t
                                       WHERE t.tgname = m.name AND t.tgrelid = to_regclass(m.on_table))
           -- An index a CONCURRENTLY build left invalid is maintained by every write but read by
           -- no query: not installed (init-db drops it and builds it again).
           WHEN 'index' THEN EXISTS (SELECT FROM pg_index i WHERE i.indexrelid = to_regclass(m.name) AND i.indisvalid)
           ELSE to_regclass(m.name) IS NOT NULL
       END AS installed,
       m.on_table
FROM (VALUES
    -- sql/schema/schema.sql: the raw mode, always installed
    ('function', 'kpi_raw(timestamptz, timestamptz)', 'reader', NULL),
    ('function', 'kpi_raw_stock(timestamptz, timestamptz, timestamptz)', 'reader', NULL),
    ('function', 'kpi_metrics(bigint, numeric, bigint, numeric, bigint, bigint, bigint, numeric, bigint, numeric, bigint, bigint)', 'reader', NULL),
    ('function', 'kpi_source()', 'reader', NULL),
    ('function', 'kpi_capturing()', 'reader', NULL),
    ('function', 'kpi_trigger_state()', 'reader', NULL),
    ('function', 'kpi_read_columns(text)', 'reader', NULL),
    ('function', 'kpi_missing_columns()', 'reader', NULL),
    ('view', 'kpi_manifest', 'owner', NULL),
    ('table', 'kpi_schema', 'reader', NULL),
    -- sql/schema/indexes.sql: on the application's tables
    ('index', 'kpi_listings_listed_at_idx', NULL, 'listings'),
    ('index', 'kpi_leads_created_at_idx', NULL, 'leads'),
    ('index', 'kpi_purchases_purchased_at_idx', NULL, 'purchases'),
    -- sql/schema/summary.sql: the summaries
    ('table', 'kpi_sums', 'reader', NULL),
    ('table', 'kpi_buyer_buckets', 'reader', NULL),
    ('table', 'kpi_buyer_days', 'reader', NULL),
    ('table', 'kpi_sales', 'reader', NULL),
    ('table', 'kpi_summary_state', 'reader', NULL),
    ('table', 'kpi_purchase_facts', 'owner', NULL),
    ('table', 'kpi_conversions', 'owner', NULL),
    ('table', 'kpi_changes', 'owner', NULL),
    ('table', 'kpi_applier_rest', 'owner', NULL),
    ('table', 'kpi_audit_state', 'reader', NULL),
    ('index', 'kpi_purchase_facts_bucket_idx', NULL, 'kpi_purchase_facts'),
    ('index', 'kpi_conversions_bucket_idx', NULL, 'kpi_conversions'),
    ('index', 'kpi_buyer_buckets_bucket_idx', NULL, 'kpi_buyer_buckets'),
    ('index', 'kpi_buyer_buckets_prev_idx', NULL, 'kpi_buyer_buckets'),
    ('index', 'kpi_buyer_buckets_near_idx', NULL, 'kpi_buyer_buckets'),
    ('index', 'kpi_sales_sold_at_idx', NULL, 'kpi_sales'),
    ('index', 'kpi_sales_listed_at_idx', NULL, 'kpi_sales'),
    ('function', 'kpi_listings_inserted()', 'trigger', NULL),
    ('function', 'kpi_listings_updated()', 'trigger', NULL),
    ('function', 'kpi_listings_deleted()', 'trigger', NULL),
    ('function', 'kpi_leads_inserted()', 'trigger', NULL),
    ('function', 'kpi_leads_updated()', 'trigger', NULL),
    ('function', 'kpi_leads_deleted()', 'trigger', NULL),
    ('function', 'kpi_purchases_inserted()', 'trigger', NULL),
    ('function', 'kpi_purchases_updated()', 'trigger', NULL),
    ('function', 'kpi_purchases_deleted()', 'trigger', NULL),
    ('function', 'kpi_truncated()', 'trigger', NULL),
    ('trigger', 'kpi_listings_insert', NULL, 'listings'),
    ('trigger', 'kpi_listings_update', NULL, 'listings'),
    ('trigger', 'kpi_listings_delete', NULL, 'listings'),
    ('trigger', 'kpi_listings_truncate', NULL, 'listings'),
    ('trigger', 'kpi_leads_insert', NULL, 'leads'),
    ('trigger', 'kpi_leads_update', NULL, 'leads'),
    ('trigger', 'kpi_leads_delete', NULL, 'leads'),
    ('trigger', 'kpi_leads_truncate', NULL, 'leads'),
    ('trigger', 'kpi_purchases_insert', NULL, 'purchases'),
    ('trigger', 'kpi_purchases_update', NULL, 'purchases'),
    ('trigger', 'kpi_purchases_delete', NULL, 'purchases'),
    ('trigger', 'kpi_purchases_truncate', NULL, 'purchases'),
    ('function', 'kpi_change_of(kpi_changes)', 'owner', NULL),
    ('function', 'kpi_add(kpi_sums[])', 'owner', NULL),
    ('function', 'kpi_slice_sums(timestamptz, timestamptz, integer)', 'owner', NULL),
    ('function', 'kpi_audit_next(timestamptz)', 'owner', NULL),
    ('function', 'kpi_audit_slice(timestamptz, timestamptz, integer)', 'owner', NULL),
    ('function', 'kpi_audit(interval)', 'owner', NULL),
    ('function', 'kpi_audit_is_due()', 'owner', NULL),
    ('function', 'kpi_audit_due()', 'owner', NULL),
    ('function', 'kpi_current_facts(bigint[])', 'owner', NULL),
    ('function', 'kpi_current_conversions(bigint[])', 'owner', NULL),
    ('function', 'kpi_sync_facts(bigint[], bigint[])', 'owner', NULL),
    ('function', 'kpi_sync_buyers(kpi_buyer_buckets[], kpi_buyer_buckets[])', 'owner', NULL),
    ('function', 'kpi_applier_lock()', 'owner', NULL),
    ('function', 'kpi_require_one_snapshot()', 'owner', NULL),
    ('function', 'kpi_long_sale(timestamptz, timestamptz, integer, bigint)', 'owner', NULL),
    ('function', 'kpi_long_sales(integer)', 'owner', NULL),
    ('function', 'kpi_count_long(integer)', 'owner', NULL),
    ('function', 'kpi_rebuild()', 'owner', NULL),
    ('function', 'kpi_rebuild(integer)', 'owner', NULL),
    ('function', 'kpi_application_at_work()', 'owner', NULL),
    ('function', 'kpi_applier_rests(timestamptz, double precision)', 'owner', NULL),
    ('function', 'kpi_apply_changes(integer, double precision)', 'reader', NULL),
    ('function', 'kpi_range(timestamptz, timestamptz)', 'reader', NULL),
    ('function', 'kpi_pending_changes()', 'reader', NULL),
    ('function', 'kpi_buyer_link(timestamptz, timestamptz, bigint)', 'owner', NULL),
    ('function', 'kpi_add_links(kpi_buyer_days[])', 'owner', NULL),
    ('function', 'kpi_count_links()', 'owner', NULL),
    ('function', 'kpi_summary_version()', 'reader', NULL),
    ('function', 'kpi_build(integer)', 'owner', NULL),
    ('function', 'kpi_rebuild_if_needed(integer)', 'reader', NULL),
    ('function', 'kpi_truncated_nothing(text, kpi_changes[])', 'owner', NULL)
) AS m (kind, name, callers, on_table);

REVOKE ALL ON kpi_manifest FROM PUBLIC;

DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT to_regprocedure(name) FROM kpi_manifest WHERE kind = 'function' AND installed LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
        IF (SELECT prosecdef FROM pg_proc WHERE oid = f) THEN
            EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', f, current_schema());
        END IF;
    END LOOP;
END
$$;
