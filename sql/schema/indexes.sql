-- The service's indexes on the application's tables, built CONCURRENTLY by `kpi-service
-- init-db` so that the application keeps writing meanwhile. One statement per line ending in
-- ";" (they run one at a time, outside a transaction). Safe to run again.
--
-- Each index is paid on every INSERT the application makes, and an index on a column the
-- application UPDATEs turns those updates from HOT (heap only) into ones that write every
-- index of the table. So: one plain index per table, on the instant that places a row in a
-- bucket, and none on a column the application updates (price, score, status, sold_at,
-- acquisition_cost). The summaries' applier (sql/schema/summary.sql) reads a changed 15-minute bucket
-- through these; so do windows off the 15-minute grid and the raw mode. (purchases.lead_id and
-- purchases.listing_id are indexed by their UNIQUE keys.)
CREATE INDEX CONCURRENTLY IF NOT EXISTS kpi_listings_listed_at_idx ON @sales@.listings (listed_at);
CREATE INDEX CONCURRENTLY IF NOT EXISTS kpi_leads_created_at_idx ON @sales@.leads (created_at) INCLUDE (buyer_id);
CREATE INDEX CONCURRENTLY IF NOT EXISTS kpi_purchases_purchased_at_idx ON @sales@.purchases (purchased_at);

-- Nothing here drops an index: the service may drop only what it can prove it created, and
-- an index named like one of an earlier version's may be the application's own (PostgreSQL
-- names an unnamed index on listings (listed_at) listings_listed_at_idx). The names earlier
-- versions used are listed in docs/design.md, for the owner to drop by hand.
