-- Indexes of the summaries' own tables that `kpi-service init-db` builds CONCURRENTLY, after the
-- transaction of summary.sql, which holds locks on the sales tables while it lasts: an index
-- built inside it at ten million listings would keep the application's writes waiting for as
-- long. One statement per line ending in ";". Safe to run again.
--
-- The links inside a window of a day or less (a history's day, 25 hours on a DST day) are this
-- short: a few per day, where the links leaving the day are about every buyer active in it.
-- (The CASE: an infinite bucket, a lead at -infinity, cannot be subtracted, and with
-- kpi_buyer_buckets_short_idx, which had the subtraction alone, every insert of one failed.)
CREATE INDEX CONCURRENTLY IF NOT EXISTS kpi_buyer_buckets_near_idx ON kpi.kpi_buyer_buckets (bucket) INCLUDE (prev_bucket) WHERE CASE WHEN isfinite(bucket) AND isfinite(prev_bucket) THEN bucket - prev_bucket < interval '26 hours' END;
DROP INDEX CONCURRENTLY IF EXISTS kpi.kpi_buyer_buckets_short_idx;

-- The audit reads a day's stored facts and conversions (summary.sql, kpi_audit_slice).
CREATE INDEX CONCURRENTLY IF NOT EXISTS kpi_purchase_facts_bucket_idx ON kpi.kpi_purchase_facts (bucket);
CREATE INDEX CONCURRENTLY IF NOT EXISTS kpi_conversions_bucket_idx ON kpi.kpi_conversions (bucket);
