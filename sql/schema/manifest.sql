-- Everything kpi-service installs in the application's database, and who may run each function.
-- Applied by `kpi-service init-db` last, in the transaction of schema.sql and summary.sql. Safe
-- to run again. `SELECT * FROM kpi_manifest` shows the owner the list and what of it is there.
--
-- The rule, stated here once for every function in the list:
-- - nobody runs it but its owner (PUBLIC's default EXECUTE is revoked), except the functions
--   marked 'reader', which sql/ops/roles.sql grants to kpi_reader, the service's role;
-- - a SECURITY DEFINER function runs with its search path pinned to kpi, then pg_catalog, then
--   pg_temp: no schema where another role may create (kpi is the owner's alone: schema.sql), so
--   that neither the caller's search path, nor a function or operator someone defined in the
--   sales tables' schema, nor a temporary table can stand in for what it names or calls. (What it
--   names of the sales tables it names with their schema.)
-- Every name is with its schema: kpi's objects as kpi.name, the sales tables' as that schema's.
-- The trigger functions are 'trigger': a trigger runs its function without checking EXECUTE, so
-- the application's writes log their changes while nobody can attach them to a table of their own.
CREATE OR REPLACE VIEW kpi.kpi_manifest AS
SELECT m.kind, m.name, m.callers,
       CASE m.kind
           -- (Its argument types are looked up only where its name is there: on PostgreSQL 15
           -- to_regprocedure fails on a type that is not, kpi_sums under --without-summaries.)
           WHEN 'function' THEN EXISTS (SELECT FROM pg_proc p
                                        WHERE p.proname = split_part(split_part(m.name, '(', 1), '.', 2)
                                          AND p.pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = 'kpi'))
                                AND to_regprocedure(m.name) IS NOT NULL
           WHEN 'trigger' THEN EXISTS (SELECT FROM pg_trigger t
                                       WHERE t.tgname = m.name AND t.tgrelid = to_regclass(m.on_table))
           -- An index a CONCURRENTLY build left invalid is maintained by every write but read by
           -- no query: not installed (init-db drops it and builds it again).
           WHEN 'index' THEN EXISTS (SELECT FROM pg_index i WHERE i.indexrelid = to_regclass(m.name) AND i.indisvalid)
           WHEN 'type' THEN to_regtype(m.name) IS NOT NULL
           WHEN 'publication' THEN EXISTS (SELECT FROM pg_publication p WHERE p.pubname = m.name
                                           AND obj_description(p.oid, 'pg_publication') = 'kpi-service: made by kpi-service init-db')
           ELSE to_regclass(m.name) IS NOT NULL
       END AS installed,
       m.on_table
FROM (SELECT quote_ident(@sales_name@)) AS s (sales)
CROSS JOIN LATERAL (VALUES
    -- sql/schema/schema.sql: the raw mode, always installed
    ('function', 'kpi.kpi_raw(timestamptz, timestamptz)', 'reader', NULL),
    ('function', 'kpi.kpi_raw_stock(timestamptz, timestamptz, timestamptz)', 'reader', NULL),
    ('function', 'kpi.kpi_metrics(bigint, numeric, bigint, numeric, bigint, bigint, bigint, numeric, bigint, numeric, bigint, bigint)', 'reader', NULL),
    ('function', 'kpi.kpi_source()', 'reader', NULL),
    ('function', 'kpi.kpi_capturing()', 'reader', NULL),
    ('function', 'kpi.kpi_trigger_state()', 'reader', NULL),
    ('function', 'kpi.kpi_read_columns(text)', 'reader', NULL),
    ('function', 'kpi.kpi_missing_columns()', 'reader', NULL),
    ('function', 'kpi.kpi_next_aging(timestamptz, integer)', 'reader', NULL),
    ('view', 'kpi.kpi_manifest', 'owner', NULL),
    ('table', 'kpi.kpi_schema', 'reader', NULL),
    ('table', 'kpi.kpi_targets', 'reader', NULL),
    -- sql/schema/indexes.sql: on the application's tables
    ('index', s.sales || '.kpi_listings_listed_at_idx', NULL, s.sales || '.listings'),
    ('index', s.sales || '.kpi_leads_created_at_idx', NULL, s.sales || '.leads'),
    ('index', s.sales || '.kpi_purchases_purchased_at_idx', NULL, s.sales || '.purchases'),
    -- sql/schema/summary.sql: the summaries
    ('table', 'kpi.kpi_sums', 'reader', NULL),
    ('table', 'kpi.kpi_buyer_buckets', 'reader', NULL),
    ('table', 'kpi.kpi_buyer_days', 'reader', NULL),
    ('table', 'kpi.kpi_sales', 'reader', NULL),
    ('table', 'kpi.kpi_summary_state', 'reader', NULL),
    ('table', 'kpi.kpi_purchase_facts', 'owner', NULL),
    ('table', 'kpi.kpi_conversions', 'owner', NULL),
    ('table', 'kpi.kpi_changes', 'owner', NULL),
    -- (Read by the KPI statement for the summaries' batch number; only its owner may lock it.)
    ('table', 'kpi.kpi_applier_rest', 'reader', NULL),
    ('table', 'kpi.kpi_audit_state', 'reader', NULL),
    ('index', 'kpi.kpi_purchase_facts_bucket_idx', NULL, 'kpi.kpi_purchase_facts'),
    ('index', 'kpi.kpi_conversions_bucket_idx', NULL, 'kpi.kpi_conversions'),
    ('index', 'kpi.kpi_buyer_buckets_bucket_idx', NULL, 'kpi.kpi_buyer_buckets'),
    ('index', 'kpi.kpi_buyer_buckets_prev_idx', NULL, 'kpi.kpi_buyer_buckets'),
    ('index', 'kpi.kpi_buyer_buckets_near_idx', NULL, 'kpi.kpi_buyer_buckets'),
    ('index', 'kpi.kpi_sales_sold_at_idx', NULL, 'kpi.kpi_sales'),
    ('index', 'kpi.kpi_sales_listed_at_idx', NULL, 'kpi.kpi_sales'),
    ('function', 'kpi.kpi_listings_inserted()', 'trigger', NULL),
    ('function', 'kpi.kpi_listings_updated()', 'trigger', NULL),
    ('function', 'kpi.kpi_listings_deleted()', 'trigger', NULL),
    ('function', 'kpi.kpi_leads_inserted()', 'trigger', NULL),
    ('function', 'kpi.kpi_leads_updated()', 'trigger', NULL),
    ('function', 'kpi.kpi_leads_deleted()', 'trigger', NULL),
    ('function', 'kpi.kpi_purchases_inserted()', 'trigger', NULL),
    ('function', 'kpi.kpi_purchases_updated()', 'trigger', NULL),
    ('function', 'kpi.kpi_purchases_deleted()', 'trigger', NULL),
    ('function', 'kpi.kpi_truncated()', 'trigger', NULL),
    ('trigger', 'kpi_listings_insert', NULL, s.sales || '.listings'),
    ('trigger', 'kpi_listings_update', NULL, s.sales || '.listings'),
    ('trigger', 'kpi_listings_delete', NULL, s.sales || '.listings'),
    ('trigger', 'kpi_listings_truncate', NULL, s.sales || '.listings'),
    ('trigger', 'kpi_leads_insert', NULL, s.sales || '.leads'),
    ('trigger', 'kpi_leads_update', NULL, s.sales || '.leads'),
    ('trigger', 'kpi_leads_delete', NULL, s.sales || '.leads'),
    ('trigger', 'kpi_leads_truncate', NULL, s.sales || '.leads'),
    ('trigger', 'kpi_purchases_insert', NULL, s.sales || '.purchases'),
    ('trigger', 'kpi_purchases_update', NULL, s.sales || '.purchases'),
    ('trigger', 'kpi_purchases_delete', NULL, s.sales || '.purchases'),
    ('trigger', 'kpi_purchases_truncate', NULL, s.sales || '.purchases'),
    ('function', 'kpi.kpi_change_of(kpi.kpi_changes)', 'owner', NULL),
    ('function', 'kpi.kpi_add(kpi.kpi_sums[])', 'owner', NULL),
    ('function', 'kpi.kpi_slice_sums(timestamptz, timestamptz, integer)', 'owner', NULL),
    ('function', 'kpi.kpi_audit_last(timestamptz)', 'owner', NULL),
    ('function', 'kpi.kpi_audit_next(timestamptz)', 'owner', NULL),
    ('function', 'kpi.kpi_audit_slice(timestamptz, timestamptz, integer)', 'owner', NULL),
    ('function', 'kpi.kpi_audit(interval)', 'owner', NULL),
    ('function', 'kpi.kpi_audit_is_due()', 'owner', NULL),
    ('function', 'kpi.kpi_audit_due()', 'owner', NULL),
    ('function', 'kpi.kpi_current_facts(bigint[])', 'owner', NULL),
    ('function', 'kpi.kpi_current_conversions(bigint[])', 'owner', NULL),
    ('function', 'kpi.kpi_sync_facts(bigint[], bigint[])', 'owner', NULL),
    ('function', 'kpi.kpi_sync_buyers(kpi.kpi_buyer_buckets[], kpi.kpi_buyer_buckets[])', 'owner', NULL),
    ('function', 'kpi.kpi_applier_lock()', 'owner', NULL),
    ('function', 'kpi.kpi_require_one_snapshot()', 'owner', NULL),
    ('function', 'kpi.kpi_long_sale(timestamptz, timestamptz, integer, bigint)', 'owner', NULL),
    ('function', 'kpi.kpi_long_sales(integer)', 'owner', NULL),
    ('function', 'kpi.kpi_count_long(integer)', 'owner', NULL),
    ('function', 'kpi.kpi_rebuild()', 'owner', NULL),
    ('function', 'kpi.kpi_rebuild(integer)', 'owner', NULL),
    ('function', 'kpi.kpi_application_at_work()', 'owner', NULL),
    ('function', 'kpi.kpi_applier_rests(timestamptz, double precision)', 'owner', NULL),
    ('function', 'kpi.kpi_apply_changes(integer, double precision)', 'reader', NULL),
    ('function', 'kpi.kpi_range(timestamptz, timestamptz)', 'reader', NULL),
    ('function', 'kpi.kpi_pending_changes()', 'reader', NULL),
    ('function', 'kpi.kpi_buyer_link(timestamptz, timestamptz, bigint)', 'owner', NULL),
    ('function', 'kpi.kpi_instant_us(timestamptz)', 'owner', NULL),
    ('function', 'kpi.kpi_announce(jsonb)', 'owner', NULL),
    ('function', 'kpi.kpi_add_links(kpi.kpi_buyer_days[])', 'owner', NULL),
    ('function', 'kpi.kpi_count_links()', 'owner', NULL),
    ('function', 'kpi.kpi_summary_version()', 'reader', NULL),
    ('function', 'kpi.kpi_build(integer)', 'owner', NULL),
    ('function', 'kpi.kpi_rebuild_if_needed(integer)', 'reader', NULL),
    ('function', 'kpi.kpi_truncated_nothing(text, kpi.kpi_changes[])', 'owner', NULL),
    -- sql/schema/decoding.sql and capture.sql: the decoding mode (its tables empty in the trigger mode)
    ('table', 'kpi.kpi_decoding', 'reader', NULL),
    ('table', 'kpi.kpi_row_copy', 'owner', NULL),
    ('function', 'kpi.kpi_decoding_mode()', 'reader', NULL),
    ('function', 'kpi.kpi_decoding_publication()', 'owner', NULL),
    ('function', 'kpi.kpi_read_image("char", jsonb)', 'owner', NULL),
    ('function', 'kpi.kpi_decoded(jsonb, pg_lsn)', 'reader', NULL),
    ('function', 'kpi.kpi_copy_rebuild()', 'owner', NULL),
    ('function', 'kpi.kpi_decoding_lost(text)', 'reader', NULL),
    ('function', 'kpi.kpi_decoding_slot_made(text, pg_lsn, boolean)', 'reader', NULL),
    ('function', 'kpi.kpi_decoding_state()', 'reader', NULL),
    ('type', 'kpi.kpi_decoded_change', 'owner', NULL),
    -- (the decoding mode's slot is on the server that holds it: uninstall drops it there)
    ('publication', 'kpi', NULL, NULL)
) AS m (kind, name, callers, on_table);

REVOKE ALL ON kpi.kpi_manifest FROM PUBLIC;

-- The functions of schema versions before 7, in the sales tables' schema (schema.sql moved their
-- tables), now that the triggers call kpi's (summary.sql): each role granted one of them (the
-- service's role, and any other the owner allowed) may run kpi's of the same name where that
-- one is the service's role's to run; then they go. Only functions of the names the service
-- used, whoever owns them: one left behind would still search that schema, where others may
-- create, as its owner (an installer who may not drop it stops here, and says so). No CASCADE,
-- so nothing of anyone else's goes with them.
DO $$
DECLARE
    f record;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure AS old, p.proname, p.proacl FROM pg_proc p
        WHERE p.pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = @sales_name@)
          AND p.proname IN (SELECT split_part(split_part(name, '(', 1), '.', 2) FROM kpi.kpi_manifest
                            WHERE kind = 'function'
                            UNION ALL
                            VALUES ('kpi_applier_session_lock'), ('kpi_changed'), ('kpi_compact'),
                                   ('kpi_buyers_refresh'), ('kpi_purchases_refresh'), ('kpi_difference'),
                                   ('kpi_listings_apply'), ('kpi_leads_apply'), ('kpi_listings_changed'),
                                   ('kpi_leads_changed'), ('kpi_purchases_changed'))
    LOOP
        EXECUTE coalesce((
            SELECT string_agg(format('GRANT EXECUTE ON FUNCTION %s TO %I', to_regprocedure(m.name), r.rolname), '; ')
            FROM aclexplode(f.proacl) a
            JOIN pg_roles r ON r.oid = a.grantee
            JOIN kpi.kpi_manifest m ON m.kind = 'function' AND m.callers = 'reader' AND m.installed
                                   AND split_part(split_part(m.name, '(', 1), '.', 2) = f.proname
            WHERE a.privilege_type = 'EXECUTE' AND a.grantee <> a.grantor
        ), 'SELECT');
        EXECUTE format('DROP FUNCTION %s', f.old);
    END LOOP;
END
$$;

DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT to_regprocedure(name) FROM kpi.kpi_manifest WHERE kind = 'function' AND installed LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
        IF (SELECT prosecdef FROM pg_proc WHERE oid = f) THEN
            EXECUTE format('ALTER FUNCTION %s SET search_path = kpi, pg_catalog, pg_temp', f);
        END IF;
    END LOOP;
END
$$;

-- Whoever was granted something of the service's (its tables' grants moved with them from an
-- earlier version's schema, or a function's above) may reach it: USAGE, never CREATE.
DO $$
DECLARE
    grantee name;
BEGIN
    FOR grantee IN
        SELECT DISTINCT r.rolname
        FROM (SELECT c.relacl AS acl, c.relowner AS owner FROM pg_class c WHERE c.relnamespace = 'kpi'::regnamespace
              UNION ALL
              SELECT p.proacl, p.proowner FROM pg_proc p WHERE p.pronamespace = 'kpi'::regnamespace) o
        CROSS JOIN LATERAL aclexplode(o.acl) a
        JOIN pg_roles r ON r.oid = a.grantee
        WHERE a.grantee <> o.owner
    LOOP
        EXECUTE format('GRANT USAGE ON SCHEMA kpi TO %I', grantee);
    END LOOP;
END
$$;
