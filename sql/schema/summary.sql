-- Pre-aggregated sums of the KPI service (docs/design.md), applied after schema.sql by
-- `kpi-service init-db`, as the tables' owner. Safe to run again.
--
-- The application's transactions pay for almost nothing here: a statement on listings, leads
-- or purchases appends its rows' old and new images to kpi_changes, one INSERT from its
-- transition table, with no read of another table and no lock but its new rows. The service's
-- applier (kpi_apply_changes, one session at a time across all instances) later turns them
-- into differences of the sums, in work proportional to the rows changed.
--
-- kpi_sums       per bucket at two UTC grains, 15 minutes (every UTC offset in use is a
--                multiple of it, so every window edge is a bucket edge) and the day (so a long
--                window reads a few hundred rows); the day row is the sum of its 15-minute rows.
-- kpi_buyer_buckets  per buyer, each 15-minute bucket with a lead or purchase of that buyer and
--                the buyer's previous such bucket: active_buyers is not additive, and these rows
--                make it a sum plus a short correction (sql/runtime/kpi.sql).
-- kpi_buyer_days the kpi_buyer_buckets rows that have a previous bucket, counted by their UTC
--                day and the whole days back to their previous bucket's day: the links inside
--                a window of whole days, read gap by gap, cost what its days cost (at most
--                n(n+1)/2 rows for n days) rather than what its buyers do.
-- kpi_sales      the listings sold and not withdrawn, with both instants: aged_inventory's
--                sold part, on the service's own table and indexes; kept from the log's images
--                as the sums are, each image counted (n), so a listing's old image and its
--                new one may be applied in either order, in any batches.

-- Everything here is the service's schema kpi's (made by schema.sql), and names the sales tables
-- with their schema (@sales@, which kpi-service init-db fills in). The functions below run as the
-- owner with this search path (SET search_path FROM CURRENT, and manifest.sql): kpi, where
-- nobody else may create, then pg_catalog, so that no function or operator of a schema others
-- can write to is ever chosen, and pg_temp last, so that a session's temporary tables can never
-- stand in for what they name.
SELECT set_config('search_path', 'kpi, pg_catalog, pg_temp', true);

-- Earlier versions (the sums kept inside the application's transactions, then a first log of
-- keys) had other tables and functions: drop them, the build below makes everything anew.
DO $$
BEGIN
    IF to_regclass('kpi.kpi_sums') IS NOT NULL
       AND NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass('kpi.kpi_changes') AND attname = 'withdrawn')
    THEN
        DROP FUNCTION IF EXISTS @sales@.kpi_changed(), @sales@.kpi_truncated() CASCADE;  -- and their triggers
        DROP TABLE IF EXISTS kpi.kpi_sums, kpi.kpi_buyer_buckets, kpi.kpi_purchase_facts, kpi.kpi_summary_state, kpi.kpi_sales,
            kpi.kpi_changes, kpi.kpi_conversions CASCADE;
        DROP FUNCTION IF EXISTS @sales@.kpi_rebuild(), @sales@.kpi_compact(), @sales@.kpi_buyers_refresh(bigint[]),
            @sales@.kpi_purchases_refresh(bigint[]), @sales@.kpi_difference(text, text, text),
            @sales@.kpi_listings_apply(@sales@.listings[], @sales@.listings[]),
            @sales@.kpi_leads_apply(@sales@.leads[], @sales@.leads[]);
        DROP TYPE IF EXISTS @sales@.kpi_delta CASCADE;
    END IF;
END
$$;

-- Tables the applier rewrites all the time: vacuumed (and their visibility maps kept, for
-- index-only scans) after a fixed number of changed rows, not a fraction of the table, and
-- with room on each page for HOT updates of kpi_sums.
CREATE TABLE IF NOT EXISTS kpi.kpi_sums (
    grain         integer NOT NULL CHECK (grain IN (900, 86400)),  -- seconds
    bucket        timestamptz NOT NULL,  -- start: a multiple of grain since the Unix epoch
    listings      bigint NOT NULL,       -- listings by listed_at
    price_sum     numeric NOT NULL,
    scored        bigint NOT NULL,
    score_sum     numeric NOT NULL,
    unsold        bigint NOT NULL,       -- ... not withdrawn and never sold (aged_inventory)
    leads         bigint NOT NULL,       -- leads by created_at
    converted     bigint NOT NULL,       -- ... referenced by a purchase
    costed        bigint NOT NULL,       -- purchases by purchased_at whose listing has a cost
    profit_sum    numeric NOT NULL,
    led           bigint NOT NULL,       -- purchases by purchased_at that have a lead
    lead_seconds  numeric NOT NULL,
    buyer_buckets bigint NOT NULL,       -- kpi_buyer_buckets rows by bucket
    buyer_links   bigint NOT NULL,       -- kpi_buyer_buckets rows by prev_bucket
    -- aged_inventory's sold listings with the recorded aged_days D (kpi_summary_state): the
    -- kpi_sales rows sold more than D after listing, by listed_at, and by sold_at less 1
    -- microsecond (so that a bucket range [.., T) holds those sold at or before T).
    long_listed   bigint NOT NULL DEFAULT 0,
    long_sold     bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (grain, bucket)
) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
        autovacuum_analyze_scale_factor = 0.05);
-- (Version 5 had no long_listed, long_sold: kpi_build() counts them.)
ALTER TABLE kpi.kpi_sums ADD COLUMN IF NOT EXISTS long_listed bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS long_sold bigint NOT NULL DEFAULT 0;

CREATE TABLE IF NOT EXISTS kpi.kpi_buyer_buckets (
    buyer_id    bigint NOT NULL,
    bucket      timestamptz NOT NULL,
    prev_bucket timestamptz,  -- NULL for the buyer's first bucket
    PRIMARY KEY (buyer_id, bucket)
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
        autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 20000,
        autovacuum_analyze_scale_factor = 0.05);
CREATE INDEX IF NOT EXISTS kpi_buyer_buckets_bucket_idx ON kpi.kpi_buyer_buckets (bucket) INCLUDE (prev_bucket);
CREATE INDEX IF NOT EXISTS kpi_buyer_buckets_prev_idx ON kpi.kpi_buyer_buckets (prev_bucket) INCLUDE (bucket);
-- (kpi_buyer_buckets_near_idx, for the links inside a window of a day or less, is built
-- concurrently by summary_indexes.sql.)

CREATE TABLE IF NOT EXISTS kpi.kpi_buyer_days (
    day timestamptz NOT NULL,  -- of the bucket, UTC
    gap integer NOT NULL,      -- whole UTC days from the previous bucket's day to it
    n   bigint NOT NULL,
    PRIMARY KEY (day, gap)
) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
        autovacuum_analyze_scale_factor = 0.05);

-- The kpi_buyer_days row of a link from prev to bucket, counted n times. A link from or to an
-- infinite instant (a lead at -infinity) has the largest gap: no window of whole days holds it.
CREATE OR REPLACE FUNCTION kpi.kpi_buyer_link(bucket timestamptz, prev timestamptz, n bigint) RETURNS kpi.kpi_buyer_days
LANGUAGE sql IMMUTABLE AS $fn$
    SELECT ROW(date_bin('1 day', bucket, timestamptz 'epoch'),
               CASE WHEN isfinite(bucket) AND isfinite(prev)
                    THEN extract(epoch FROM date_bin('1 day', bucket, timestamptz 'epoch')
                                            - date_bin('1 day', prev, timestamptz 'epoch'))::integer / 86400
                    ELSE 2147483647 END,
               n)::kpi.kpi_buyer_days
$fn$;

-- An instant as the service's deltas carry it (kpi_announce): whole microseconds since the Unix
-- epoch, exact in JSON and in Python, or "infinity" / "-infinity"; NULL stays NULL.
CREATE OR REPLACE FUNCTION kpi.kpi_instant_us(at timestamptz) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $fn$
    SELECT CASE WHEN isfinite(at) THEN to_jsonb((extract(epoch FROM at) * 1000000)::bigint) ELSE to_jsonb(at::text) END
$fn$;

-- Adds links to kpi_buyer_days; a row that comes to 0 goes.
CREATE OR REPLACE FUNCTION kpi.kpi_add_links(links kpi.kpi_buyer_days[]) RETURNS void
LANGUAGE sql AS $fn$
    INSERT INTO kpi.kpi_buyer_days
    SELECT l.day, l.gap, sum(l.n) FROM unnest(links) l GROUP BY 1, 2 HAVING sum(l.n) <> 0
    ON CONFLICT (day, gap) DO UPDATE SET n = kpi_buyer_days.n + excluded.n;
    DELETE FROM kpi.kpi_buyer_days d USING (SELECT DISTINCT l.day, l.gap FROM unnest(links) l) k
    WHERE d.day = k.day AND d.gap = k.gap AND d.n = 0;
$fn$;

-- A row per image of a sold listing the applied log rows leave: n is 1 once its log is applied
-- (a row whose n comes to 0 goes); until then an image may count -1 or 2 (reads sum n).
CREATE TABLE IF NOT EXISTS kpi.kpi_sales (
    listing_id bigint NOT NULL,
    listed_at  timestamptz NOT NULL,
    sold_at    timestamptz NOT NULL,
    n          integer NOT NULL,
    PRIMARY KEY (listing_id, listed_at, sold_at)
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
        autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 20000,
        autovacuum_analyze_scale_factor = 0.05);
-- (Schema versions before 5 kept one row per listing, looked up in listings by the applier: the
-- same rows, each counted once.)
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass('kpi.kpi_sales') AND attname = 'n') THEN
        ALTER TABLE kpi.kpi_sales ADD COLUMN n integer NOT NULL DEFAULT 1;
        ALTER TABLE kpi.kpi_sales ALTER COLUMN n DROP DEFAULT;
        ALTER TABLE kpi.kpi_sales DROP CONSTRAINT kpi_sales_pkey, ADD PRIMARY KEY (listing_id, listed_at, sold_at);
        DROP INDEX IF EXISTS kpi_sales_sold_at_idx, kpi_sales_listed_at_idx;  -- made again below, with n
        -- Those versions' applier looked each listing up, ahead of its log: their rows are the
        -- listings as they are, and the images still in the log would count again. So, in one
        -- snapshot: the sold listings now, less what the log will add (the log's rows are still
        -- those versions' typed images here).
        DELETE FROM kpi.kpi_sales;
        INSERT INTO kpi.kpi_sales
        SELECT e.id, e.at, e.sold_at, sum(e.n)
        FROM (
            SELECT id, listed_at, sold_at, 1 FROM @sales@.listings WHERE status <> 'withdrawn' AND sold_at IS NOT NULL
            UNION ALL
            SELECT id, at, sold_at, -sign FROM kpi.kpi_changes WHERE tbl = 'l' AND sold_at IS NOT NULL AND NOT withdrawn
        ) AS e (id, at, sold_at, n)
        GROUP BY 1, 2, 3
        HAVING sum(e.n) <> 0;
    END IF;
END
$$;
CREATE INDEX IF NOT EXISTS kpi_sales_sold_at_idx ON kpi.kpi_sales (sold_at) INCLUDE (listed_at, n);
CREATE INDEX IF NOT EXISTS kpi_sales_listed_at_idx ON kpi.kpi_sales (listed_at) INCLUDE (sold_at, n);

-- What each purchase adds to kpi_sums, with the values it took from its listing and lead, and
-- each converted lead's bucket: the applier compares them with what the sales tables say now
-- and adds the difference, so a change anywhere (a listing's cost, a lead's instant, a purchase
-- relinked) is applied exactly, whatever else changed in the same batch.
CREATE TABLE IF NOT EXISTS kpi.kpi_purchase_facts (
    purchase_id  bigint PRIMARY KEY,
    bucket       timestamptz NOT NULL,  -- of purchased_at
    costed       integer NOT NULL,      -- 1: the listing's cost is known
    profit       numeric NOT NULL,      -- sale_price - cost, or 0
    led          integer NOT NULL,      -- 1: it has a lead
    lead_seconds numeric NOT NULL       -- purchased_at - the lead's created_at, or 0
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
        autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 20000);

CREATE TABLE IF NOT EXISTS kpi.kpi_conversions (
    lead_id bigint PRIMARY KEY,
    bucket  timestamptz NOT NULL  -- of the lead's created_at
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
        autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 20000);

-- The change log. No index, no key, no default: an insert into it is a heap append, and the
-- applier takes it in batches, oldest pages first. A row per changed row, its old image (sign -1)
-- and its new one (+1): its table ('l' listings, 'd' leads, 'p' purchases) and the whole row as
-- jsonb (img); 't' alone: a TRUNCATE. The triggers name no column of the sales tables: a column
-- renamed, dropped or retyped by the application can make no write of it fail (PostgreSQL
-- records no dependency of a function's body on a column). The applier reads the columns the
-- KPIs need from the images (kpi_change_of), and one it cannot read stops the summaries, never
-- the application.
CREATE TABLE IF NOT EXISTS kpi.kpi_changes (
    tbl       "char",
    sign      smallint,
    -- The typed image of releases before schema version 6, which the applier reads once more
    -- (writers still running the previous trigger bodies at the upgrade log these), and that
    -- the applier's rows carry once read (kpi_change_of). Dropped in a later release.
    at        timestamptz,
    id        bigint,
    buyer_id  bigint,       -- leads, purchases
    lead_id   bigint,       -- purchases
    cost      numeric,      -- listings: acquisition_cost
    price     numeric,      -- listings
    score     numeric,      -- listings
    sold_at   timestamptz,  -- listings
    withdrawn boolean,      -- listings
    img       jsonb
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
        autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 1000,
        vacuum_truncate = false);
-- (vacuum_truncate: the applier empties this table all the time, and vacuum would cut its empty
-- tail pages under an ACCESS EXCLUSIVE lock the application's inserts wait for.)
DO $$
BEGIN
    IF NOT 'vacuum_truncate=false' = ANY (coalesce((SELECT reloptions FROM pg_class WHERE oid = to_regclass('kpi.kpi_changes')), '{}')) THEN
        ALTER TABLE kpi.kpi_changes SET (vacuum_truncate = false);
    END IF;
END
$$;
-- (Looked up first: ALTER TABLE takes its lock even when the column is there, and the
-- application's writes append to this table.)
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass('kpi.kpi_changes') AND attname = 'img') THEN
        ALTER TABLE kpi.kpi_changes ADD COLUMN img jsonb;
    END IF;
END
$$;

-- A log row with the columns the applier reads, from its image. An image without a column the
-- KPIs read (renamed or dropped since it was logged) is NULL; one whose value does not cast (a
-- retype) raises a data_exception: the applier stops the summaries on either.
CREATE OR REPLACE FUNCTION kpi.kpi_change_of(c kpi.kpi_changes) RETURNS kpi.kpi_changes
LANGUAGE sql IMMUTABLE AS $fn$
    SELECT CASE
        WHEN c.img IS NULL OR c.tbl = 't' THEN c
        WHEN NOT c.img ?& kpi.kpi_read_columns(CASE c.tbl WHEN 'l' THEN 'listings' WHEN 'd' THEN 'leads' ELSE 'purchases' END)
        THEN NULL
        WHEN c.tbl = 'l' THEN ROW(c.tbl, c.sign, (c.img->>'listed_at')::timestamptz, (c.img->>'id')::bigint, NULL, NULL,
                                  (c.img->>'acquisition_cost')::numeric, (c.img->>'price')::numeric,
                                  (c.img->>'score')::numeric, (c.img->>'sold_at')::timestamptz,
                                  c.img->>'status' = 'withdrawn', NULL)::kpi.kpi_changes
        WHEN c.tbl = 'd' THEN ROW(c.tbl, c.sign, (c.img->>'created_at')::timestamptz, (c.img->>'id')::bigint,
                                  (c.img->>'buyer_id')::bigint, NULL, NULL, NULL, NULL, NULL, NULL, NULL)::kpi.kpi_changes
        ELSE ROW(c.tbl, c.sign, (c.img->>'purchased_at')::timestamptz, (c.img->>'id')::bigint,
                 (c.img->>'buyer_id')::bigint, (c.img->>'lead_id')::bigint, NULL, NULL, NULL, NULL, NULL, NULL)::kpi.kpi_changes
    END
$fn$;

-- Which version of the functions below built the rows; another version rebuilds them. And the
-- aged_days whose sold listings kpi_sums.long_listed and long_sold count (init-db's KPI_AGED_DAYS).
CREATE TABLE IF NOT EXISTS kpi.kpi_summary_state (version integer NOT NULL);
ALTER TABLE kpi.kpi_summary_state ADD COLUMN IF NOT EXISTS aged_days integer;
-- The triggers' state when the summaries were built (kpi_trigger_state(), schema.sql): a trigger
-- disabled since, even for one transaction, let writes past the log.
ALTER TABLE kpi.kpi_summary_state ADD COLUMN IF NOT EXISTS triggers text;
-- This file's version. 5 added kpi_buyer_days to 4: kpi_build() counts it from
-- kpi_buyer_buckets, with no rebuild; 6 added kpi_sums.long_listed and long_sold, which it counts
-- from kpi_sales, with no rebuild either. Until then kpi_source() says 'raw'.
CREATE OR REPLACE FUNCTION kpi.kpi_summary_version() RETURNS integer
LANGUAGE sql IMMUTABLE AS 'SELECT 6';

-- What a kpi_sales row adds to kpi_sums.long_listed and long_sold (n times) for aged_days: two
-- rows when it was sold more than aged_days 24-hour days after listing, none otherwise. With T a
-- 15-minute edge and B = T - aged_days, aged_inventory at T is the listings not withdrawn and
-- listed before B less those of them sold at or before T, and a sale at or before T listed before
-- B is either sold more than aged_days after listing (then listed before B whenever sold at or
-- before T: long_sold below T) or within them (then sold before T whenever listed before B: not
-- long, listed before B). So aged_inventory at T = unsold + long_listed below B - long_sold below
-- T: sums of buckets. (Seconds, not days, as kpi.sql takes aged_days: a DST day changes nothing.)
CREATE OR REPLACE FUNCTION kpi.kpi_long_sale(listed_at timestamptz, sold_at timestamptz, aged_days integer, n bigint)
RETURNS SETOF kpi.kpi_sums
LANGUAGE sql IMMUTABLE AS $fn$
    -- (Columns, not ROW(...)::kpi_sums: so the planner inlines it, where a call per row cost more
    -- than the rest of the applier's work on sales.)
    SELECT 0, e.at, 0::bigint, 0::numeric, 0::bigint, 0::numeric, 0::bigint, 0::bigint, 0::bigint, 0::bigint,
           0::numeric, 0::bigint, 0::numeric, 0::bigint, 0::bigint, e.listed, e.sold
    FROM (VALUES (listed_at, n, 0::bigint), (sold_at - interval '1 microsecond', 0, n)) AS e (at, listed, sold)
    WHERE sold_at > listed_at + make_interval(secs => aged_days * 86400)
$fn$;

-- The trigger functions: one INSERT per statement, nothing else (an UPDATE's old and new rows
-- in the same one), each row whole as jsonb: they name no column of the table (kpi_changes).
-- One function per table and event. They run as their owner (who applied this file), so the
-- application's roles need no rights on kpi_changes. They run at every write of the
-- application, as its owner and in its sessions: what they name is named with its schema, and
-- manifest.sql pins their search path as every SECURITY DEFINER function's, so that neither a
-- temporary table nor a function (to_jsonb) of a schema others can write to stands in.
DROP FUNCTION IF EXISTS @sales@.kpi_listings_changed(), @sales@.kpi_leads_changed(), @sales@.kpi_purchases_changed()
    CASCADE;
DO $do$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT * FROM (VALUES ('listings', 'l'), ('leads', 'd'), ('purchases', 'p')) AS v (name, code) LOOP
        EXECUTE format($f$
            CREATE OR REPLACE FUNCTION kpi.%1$I() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $fn$
            BEGIN
                INSERT INTO kpi.kpi_changes (tbl, sign, img) SELECT %4$L, 1, to_jsonb(n) FROM new_rows n;
                RETURN NULL;
            END
            $fn$;

            CREATE OR REPLACE FUNCTION kpi.%2$I() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $fn$
            BEGIN
                INSERT INTO kpi.kpi_changes (tbl, sign, img)
                SELECT %4$L, -1, to_jsonb(o) FROM old_rows o UNION ALL SELECT %4$L, 1, to_jsonb(n) FROM new_rows n;
                RETURN NULL;
            END
            $fn$;

            CREATE OR REPLACE FUNCTION kpi.%3$I() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $fn$
            BEGIN
                INSERT INTO kpi.kpi_changes (tbl, sign, img) SELECT %4$L, -1, to_jsonb(o) FROM old_rows o;
                RETURN NULL;
            END
            $fn$;
        $f$, 'kpi_' || t.name || '_inserted', 'kpi_' || t.name || '_updated', 'kpi_' || t.name || '_deleted',
             t.code);
    END LOOP;
END
$do$;

CREATE OR REPLACE FUNCTION kpi.kpi_truncated() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
BEGIN
    INSERT INTO kpi.kpi_changes (tbl, img) VALUES ('t', jsonb_build_object('table', TG_TABLE_NAME));
    RETURN NULL;
END
$fn$;

-- Whether a TRUNCATE of this table changed nothing the summaries hold, in a batch that takes the
-- whole log (`changes`): the table is empty, the log names none of its rows (none was written
-- since the last batch, before the TRUNCATE or after it), and the summaries count none of them.
-- A TRUNCATE of an empty table, as loads and tests make, then costs no rebuild.
CREATE OR REPLACE FUNCTION kpi.kpi_truncated_nothing(tbl text, changes kpi.kpi_changes[]) RETURNS boolean
LANGUAGE sql STABLE AS $fn$
    SELECT NOT EXISTS (SELECT FROM unnest(changes) c
                       WHERE c.tbl = CASE tbl WHEN 'listings' THEN 'l' WHEN 'leads' THEN 'd' ELSE 'p' END)
       AND CASE tbl
               WHEN 'listings' THEN NOT EXISTS (SELECT FROM @sales@.listings)
                                    AND NOT EXISTS (SELECT FROM kpi.kpi_sums WHERE grain = 86400 AND listings <> 0)
               WHEN 'leads' THEN NOT EXISTS (SELECT FROM @sales@.leads)
                                 AND NOT EXISTS (SELECT FROM kpi.kpi_sums WHERE grain = 86400 AND leads <> 0)
               ELSE NOT EXISTS (SELECT FROM @sales@.purchases) AND NOT EXISTS (SELECT FROM kpi.kpi_purchase_facts)
                    AND NOT EXISTS (SELECT FROM kpi.kpi_conversions)
           END
$fn$;

-- Adds differences to kpi_sums, each at its instant (the delta rows' bucket), at both grains;
-- a row that comes to 0 in every column goes. (Every column: between two batches a bucket may
-- hold a lead's conversion before the lead's own count, both right once all is applied.)
CREATE OR REPLACE FUNCTION kpi.kpi_add(deltas kpi.kpi_sums[]) RETURNS void
LANGUAGE sql AS $fn$
    -- Both grains in one pass over the deltas (a batch holds thousands of rows for a few hundred
    -- buckets; summing the 15-minute sums again for the days summed numerics twice).
    INSERT INTO kpi.kpi_sums
    SELECT CASE WHEN GROUPING(d.q) = 0 THEN 900 ELSE 86400 END, coalesce(d.q, d.day),
           sum(d.listings), sum(d.price_sum), sum(d.scored), sum(d.score_sum), sum(d.unsold), sum(d.leads),
           sum(d.converted), sum(d.costed), sum(d.profit_sum), sum(d.led), sum(d.lead_seconds),
           sum(d.buyer_buckets), sum(d.buyer_links), sum(d.long_listed), sum(d.long_sold)
    FROM (
        SELECT date_bin('15 minutes', d.bucket, timestamptz 'epoch') AS q,
               date_bin('1 day', d.bucket, timestamptz 'epoch') AS day, d.*
        FROM unnest(deltas) AS d
    ) AS d
    GROUP BY GROUPING SETS ((d.q), (d.day))
    HAVING (sum(d.listings), sum(d.price_sum), sum(d.scored), sum(d.score_sum), sum(d.unsold), sum(d.leads),
            sum(d.converted), sum(d.costed), sum(d.profit_sum), sum(d.led), sum(d.lead_seconds),
            sum(d.buyer_buckets), sum(d.buyer_links), sum(d.long_listed), sum(d.long_sold))
           <> (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    ON CONFLICT (grain, bucket) DO UPDATE SET
        listings = kpi_sums.listings + excluded.listings, price_sum = kpi_sums.price_sum + excluded.price_sum,
        scored = kpi_sums.scored + excluded.scored, score_sum = kpi_sums.score_sum + excluded.score_sum,
        unsold = kpi_sums.unsold + excluded.unsold, leads = kpi_sums.leads + excluded.leads,
        converted = kpi_sums.converted + excluded.converted, costed = kpi_sums.costed + excluded.costed,
        profit_sum = kpi_sums.profit_sum + excluded.profit_sum, led = kpi_sums.led + excluded.led,
        lead_seconds = kpi_sums.lead_seconds + excluded.lead_seconds,
        buyer_buckets = kpi_sums.buyer_buckets + excluded.buyer_buckets,
        buyer_links = kpi_sums.buyer_links + excluded.buyer_links,
        long_listed = kpi_sums.long_listed + excluded.long_listed, long_sold = kpi_sums.long_sold + excluded.long_sold;
    DELETE FROM kpi.kpi_sums s
    USING (SELECT DISTINCT date_bin('15 minutes', d.bucket, timestamptz 'epoch') AS q,
                           date_bin('1 day', d.bucket, timestamptz 'epoch') AS day
           FROM unnest(deltas) AS d) AS t
    WHERE s.bucket IN (t.q, t.day)
      AND (s.listings, s.price_sum, s.scored, s.score_sum, s.unsold, s.leads, s.converted, s.costed, s.profit_sum,
           s.led, s.lead_seconds, s.buyer_buckets, s.buyer_links, s.long_listed, s.long_sold)
          = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
$fn$;

-- The facts of these purchases as the sales tables say now (a purchase that is gone has none).
-- Lookups by key, not joins: a hash join on lead_id (NULL for a fifth of the purchases) cannot
-- split that one value across batches, and in a rebuild kept doubling its batches for minutes.
CREATE OR REPLACE FUNCTION kpi.kpi_current_facts(ids bigint[]) RETURNS SETOF kpi.kpi_purchase_facts
LANGUAGE sql STABLE AS $fn$
    SELECT f.id, date_bin('15 minutes', f.purchased_at, timestamptz 'epoch'),
           (f.cost IS NOT NULL)::integer, coalesce(f.sale_price - f.cost, 0),
           -- A lead time from or to an infinite instant is no number of days: not averaged.
           (f.lead_at IS NOT NULL AND isfinite(f.lead_at) AND isfinite(f.purchased_at))::integer,
           CASE WHEN isfinite(f.lead_at) AND isfinite(f.purchased_at)
                THEN extract(epoch FROM f.purchased_at) - extract(epoch FROM f.lead_at) ELSE 0 END
    FROM (
        SELECT p.id, p.purchased_at, p.sale_price,
               (SELECT li.acquisition_cost FROM @sales@.listings li WHERE li.id = p.listing_id) AS cost,
               (SELECT ld.created_at FROM @sales@.leads ld WHERE ld.id = p.lead_id) AS lead_at
        FROM (SELECT DISTINCT u.id FROM unnest(ids) AS u (id)) AS k
        JOIN @sales@.purchases p ON p.id = k.id
    ) AS f
$fn$;

-- The leads among these that a purchase references now, with their bucket.
CREATE OR REPLACE FUNCTION kpi.kpi_current_conversions(ids bigint[]) RETURNS SETOF kpi.kpi_conversions
LANGUAGE sql STABLE AS $fn$
    SELECT ld.id, date_bin('15 minutes', ld.created_at, timestamptz 'epoch')
    FROM (SELECT DISTINCT u.id FROM unnest(ids) AS u (id)) AS k
    JOIN @sales@.leads ld ON ld.id = k.id
    WHERE EXISTS (SELECT FROM @sales@.purchases p WHERE p.lead_id = ld.id)
$fn$;

-- Brings the facts and conversions of these purchases and leads in line with the sales tables,
-- returning what that adds to kpi_sums: the stored rows that differ from now are taken back,
-- the rows of now that differ are added.
CREATE OR REPLACE FUNCTION kpi.kpi_sync_facts(purchase_ids bigint[], lead_ids bigint[]) RETURNS kpi.kpi_sums[]
LANGUAGE plpgsql AS $fn$
DECLARE
    now_facts kpi.kpi_purchase_facts[] := ARRAY(SELECT f FROM kpi.kpi_current_facts(purchase_ids) f);
    had_facts kpi.kpi_purchase_facts[] := ARRAY(
        SELECT f FROM (SELECT DISTINCT u.id FROM unnest(purchase_ids) AS u (id)) k
        JOIN kpi.kpi_purchase_facts f ON f.purchase_id = k.id
    );
    now_conv kpi.kpi_conversions[] := ARRAY(SELECT c FROM kpi.kpi_current_conversions(lead_ids) c);
    had_conv kpi.kpi_conversions[] := ARRAY(
        SELECT c FROM (SELECT DISTINCT u.id FROM unnest(lead_ids) AS u (id)) k
        JOIN kpi.kpi_conversions c ON c.lead_id = k.id
    );
    old_facts kpi.kpi_purchase_facts[] := ARRAY(SELECT x::kpi.kpi_purchase_facts FROM (SELECT * FROM unnest(had_facts) EXCEPT SELECT * FROM unnest(now_facts)) x);
    new_facts kpi.kpi_purchase_facts[] := ARRAY(SELECT x::kpi.kpi_purchase_facts FROM (SELECT * FROM unnest(now_facts) EXCEPT SELECT * FROM unnest(had_facts)) x);
    old_conv kpi.kpi_conversions[] := ARRAY(SELECT x::kpi.kpi_conversions FROM (SELECT * FROM unnest(had_conv) EXCEPT SELECT * FROM unnest(now_conv)) x);
    new_conv kpi.kpi_conversions[] := ARRAY(SELECT x::kpi.kpi_conversions FROM (SELECT * FROM unnest(now_conv) EXCEPT SELECT * FROM unnest(had_conv)) x);
BEGIN
    DELETE FROM kpi.kpi_purchase_facts f USING unnest(old_facts) AS o WHERE f.purchase_id = o.purchase_id;
    INSERT INTO kpi.kpi_purchase_facts SELECT * FROM unnest(new_facts);
    DELETE FROM kpi.kpi_conversions c USING unnest(old_conv) AS o WHERE c.lead_id = o.lead_id;
    INSERT INTO kpi.kpi_conversions SELECT * FROM unnest(new_conv);
    RETURN ARRAY(
        SELECT ROW(0, e.bucket, 0, 0, 0, 0, 0, 0, sum(e.converted), sum(e.costed), sum(e.profit), sum(e.led),
                   sum(e.seconds), 0, 0, 0, 0)::kpi.kpi_sums
        FROM (
            SELECT bucket, 0 AS converted, -costed AS costed, -profit AS profit, -led AS led,
                   -lead_seconds AS seconds
            FROM unnest(old_facts)
            UNION ALL
            SELECT bucket, 0, costed, profit, led, lead_seconds FROM unnest(new_facts)
            UNION ALL
            SELECT bucket, -1, 0, 0, 0, 0 FROM unnest(old_conv)
            UNION ALL
            SELECT bucket, 1, 0, 0, 0, 0 FROM unnest(new_conv)
        ) AS e
        GROUP BY e.bucket
    );
END
$fn$;

-- Brings the buyers' buckets of these (buyer, bucket) pairs in line with the sales tables, with
-- their links, returning what that adds to kpi_sums and kpi_buyer_days. A pair holds if that
-- buyer has a lead or purchase in that bucket in this snapshot: `proven` are pairs the caller
-- found a row of in this snapshot, the others are looked up over their bucket (never presumed
-- from a batch's images, since once VACUUM has freed log pages a delete's row can be taken
-- before its insert's). The applier passes the pairs its batch names, with those that a row it
-- names still proves (looked up by its key: a new lead costs no read of its bucket, whose
-- leads are many when the application is busy); the audit those whose stored rows differ.
DROP FUNCTION IF EXISTS kpi.kpi_sync_buyers(kpi.kpi_buyer_buckets[]);
-- (Schema version 7's had no `changed`: a result type is changed by dropping the function.)
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_proc WHERE oid = to_regprocedure('kpi.kpi_sync_buyers(kpi.kpi_buyer_buckets[], kpi.kpi_buyer_buckets[])')
                                          AND 'changed' = ANY (proargnames)) THEN
        DROP FUNCTION IF EXISTS kpi.kpi_sync_buyers(kpi.kpi_buyer_buckets[], kpi.kpi_buyer_buckets[]);
    END IF;
END
$$;
-- `changed`: the kpi_buyer_buckets rows it removed, added and relinked, as [bucket, previous
-- bucket, +1 or -1] (kpi_instant_us), for the service's deltas (kpi_announce).
CREATE OR REPLACE FUNCTION kpi.kpi_sync_buyers(pairs kpi.kpi_buyer_buckets[], proven kpi.kpi_buyer_buckets[],
                                               OUT sums kpi.kpi_sums[], OUT links kpi.kpi_buyer_days[],
                                               OUT changed jsonb)
LANGUAGE plpgsql AS $fn$
DECLARE
    buyer_ids bigint[];
    holding kpi.kpi_buyer_buckets[];  -- the pairs that hold
    gone kpi.kpi_buyer_buckets[];  -- and those removed
    relinks kpi.kpi_buyer_buckets[];  -- with their new previous bucket
    gone_rows kpi.kpi_buyer_buckets[];  -- the removed ones as they were
BEGIN
    -- The ones that no longer hold go; those that hold and are not there yet are inserted by the
    -- next statement, with their previous bucket (inserting them without and linking them after
    -- wrote each twice).
    WITH named AS (
        -- (last: the bucket's last instant; an infinite bucket holds that instant alone.)
        SELECT b.buyer_id, b.bucket, bool_or(b.proven) AS proven,
               CASE WHEN isfinite(b.bucket) THEN b.bucket + interval '14 minutes 59.999999 seconds'
                    ELSE b.bucket END AS last
        FROM (
            SELECT p.buyer_id, p.bucket, false AS proven FROM unnest(pairs) p
            UNION ALL
            SELECT p.buyer_id, p.bucket, true FROM unnest(proven) p
        ) b
        GROUP BY b.buyer_id, b.bucket
    ),
    truth AS (
        SELECT p.buyer_id, p.bucket,
               CASE WHEN p.proven THEN true
                    ELSE EXISTS (SELECT FROM @sales@.leads x WHERE x.created_at BETWEEN p.bucket AND p.last
                                                               AND x.buyer_id = p.buyer_id)
                         OR EXISTS (SELECT FROM @sales@.purchases x WHERE x.purchased_at BETWEEN p.bucket AND p.last
                                                                      AND x.buyer_id = p.buyer_id) END AS holds
        FROM named p
    ),
    removed AS (
        DELETE FROM kpi.kpi_buyer_buckets b USING truth t
        WHERE NOT t.holds AND b.buyer_id = t.buyer_id AND b.bucket = t.bucket
        RETURNING b.buyer_id, b.bucket, b.prev_bucket
    ),
    held AS (
        SELECT t.buyer_id, t.bucket FROM truth t WHERE t.holds
    )
    SELECT ARRAY(SELECT buyer_id FROM removed UNION SELECT buyer_id FROM held),
           ARRAY(SELECT ROW(h.buyer_id, h.bucket, NULL)::kpi.kpi_buyer_buckets FROM held h),
           ARRAY(SELECT ROW(r.buyer_id, r.bucket, NULL)::kpi.kpi_buyer_buckets FROM removed r),
           ARRAY(
               SELECT ROW(0, e.at, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, e.buckets, e.links, 0, 0)::kpi.kpi_sums
               FROM (
                   SELECT bucket AS at, -1 AS buckets, 0 AS links FROM removed
                   UNION ALL
                   SELECT prev_bucket, 0, -1 FROM removed WHERE prev_bucket IS NOT NULL
               ) AS e
           ),
           ARRAY(SELECT kpi.kpi_buyer_link(bucket, prev_bucket, -1::bigint) FROM removed WHERE prev_bucket IS NOT NULL),
           ARRAY(SELECT ROW(r.buyer_id, r.bucket, r.prev_bucket)::kpi.kpi_buyer_buckets FROM removed r)
    INTO buyer_ids, holding, gone, sums, links, gone_rows;

    -- These buyers' buckets in order, with the new ones and markers where removed ones were:
    -- each new one is inserted with its previous bucket; a stored one right after a new or a
    -- removed one has a new previous bucket, relinked by the next statement, by key (joined
    -- here, the few relinked rows were matched by reading every bucket for a hash join). The
    -- stored ones are read from the key's index alone: a buyer's buckets lie on as many pages.
    WITH buckets AS (
        -- A pair that holds and is stored already is its stored row (one sort for this and the window).
        SELECT DISTINCT ON (b.buyer_id, b.bucket) b.*
        FROM (
            SELECT b.buyer_id, b.bucket, 0 AS kind  -- stored
            FROM unnest(buyer_ids) AS k (id)
            JOIN kpi.kpi_buyer_buckets b ON b.buyer_id = k.id
            UNION ALL
            SELECT h.buyer_id, h.bucket, 1 FROM unnest(holding) h  -- new, unless stored
            UNION ALL
            SELECT g.buyer_id, g.bucket, 2 FROM unnest(gone) g  -- removed
        ) AS b
        ORDER BY b.buyer_id, b.bucket, b.kind
    ),
    linked AS (
        SELECT b.buyer_id, b.bucket, b.kind,
               max(b.bucket) FILTER (WHERE b.kind < 2) OVER before AS new_prev,
               lag(b.kind) OVER (PARTITION BY b.buyer_id ORDER BY b.bucket) AS kind_before
        FROM buckets b
        WINDOW before AS (PARTITION BY b.buyer_id ORDER BY b.bucket ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
    ),
    added AS (
        INSERT INTO kpi.kpi_buyer_buckets (buyer_id, bucket, prev_bucket)
        SELECT l.buyer_id, l.bucket, l.new_prev FROM linked l WHERE l.kind = 1
        RETURNING bucket, prev_bucket
    ),
    relinked AS (
        SELECT l.buyer_id, l.bucket, b.old_prev, l.new_prev
        FROM linked l
        -- (OFFSET 0: a lookup by key per row, never a join that reads the table.)
        CROSS JOIN LATERAL (
            SELECT x.prev_bucket AS old_prev FROM kpi.kpi_buyer_buckets x
            WHERE x.buyer_id = l.buyer_id AND x.bucket = l.bucket OFFSET 0
        ) b
        WHERE l.kind = 0 AND l.kind_before > 0
    )
    SELECT ARRAY(SELECT ROW(buyer_id, bucket, new_prev)::kpi.kpi_buyer_buckets FROM relinked),
    (
        SELECT coalesce(jsonb_agg(jsonb_build_array(kpi.kpi_instant_us(e.bucket), kpi.kpi_instant_us(e.prev), e.n)), '[]')
        FROM (
            SELECT bucket, prev_bucket AS prev, -1 AS n FROM unnest(gone_rows)
            UNION ALL
            SELECT bucket, prev_bucket, 1 FROM added
            UNION ALL
            SELECT bucket, old_prev, -1 FROM relinked
            UNION ALL
            SELECT bucket, new_prev, 1 FROM relinked
        ) e
    ),
    sums || ARRAY(
        SELECT ROW(0, e.at, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, sum(e.buckets), sum(e.links), 0, 0)::kpi.kpi_sums
        FROM (
            SELECT bucket AS at, 1 AS buckets, 0 AS links FROM added
            UNION ALL
            SELECT prev_bucket, 0, 1 FROM added WHERE prev_bucket IS NOT NULL
            UNION ALL
            SELECT old_prev, 0, -1 FROM relinked WHERE old_prev IS NOT NULL
            UNION ALL
            SELECT new_prev, 0, 1 FROM relinked WHERE new_prev IS NOT NULL
        ) AS e
        GROUP BY e.at
    ),
    links || ARRAY(
        SELECT kpi.kpi_buyer_link(bucket, prev_bucket, 1::bigint) FROM added WHERE prev_bucket IS NOT NULL
        UNION ALL
        SELECT kpi.kpi_buyer_link(bucket, old_prev, -1::bigint) FROM relinked WHERE old_prev IS NOT NULL
        UNION ALL
        SELECT kpi.kpi_buyer_link(bucket, new_prev, 1::bigint) FROM relinked WHERE new_prev IS NOT NULL
    )
    INTO relinks, changed, sums, links;
    UPDATE kpi.kpi_buyer_buckets b SET prev_bucket = r.prev_bucket
    FROM unnest(relinks) r
    WHERE b.buyer_id = r.buyer_id AND b.bucket = r.bucket;

END
$fn$;

-- The audit (docs/design.md, "The audit"): the summaries compared with the sales tables a day
-- at a time, in the applier's transaction once it has taken in the whole log (its snapshot's
-- summaries are then what the rows make), and every difference repaired in place and counted.
-- Whatever drifts by a defect of the applier, or by hand, lives at most one pass.
CREATE TABLE IF NOT EXISTS kpi.kpi_audit_state (
    slice          timestamptz,           -- the day last audited in this pass; NULL: a pass begins
    next_at        timestamptz NOT NULL,  -- no slice before this
    pass_started   timestamptz,
    pass_repairs   bigint NOT NULL,       -- in this pass, so far
    last_pass_at   timestamptz,           -- when the last whole pass ended
    last_repairs   bigint,                -- and what it repaired
    repairs        bigint NOT NULL        -- since the summaries were installed
);
INSERT INTO kpi.kpi_audit_state (next_at, pass_repairs, repairs)
SELECT '-infinity', 0, 0 WHERE NOT EXISTS (SELECT FROM kpi.kpi_audit_state);
-- (Its indexes by bucket of kpi_purchase_facts and kpi_conversions: summary_indexes.sql.)

-- The last instant of the audit's slice from lo: its UTC day's (in parentheses: the last day of
-- the timestamptz range would overflow), or lo itself when infinite.
CREATE OR REPLACE FUNCTION kpi.kpi_audit_last(lo timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $fn$
    SELECT CASE WHEN isfinite(lo) THEN lo + (interval '24 hours' - interval '1 microsecond') ELSE lo END
$fn$;

-- The first day (UTC; an infinite instant is a slice of its own) after the slice that ends at
-- `after` (NULL: from the start) that holds a row of a sales table or of a summary.
CREATE OR REPLACE FUNCTION kpi.kpi_audit_next(after timestamptz) RETURNS timestamptz
LANGUAGE sql STABLE AS $fn$
    SELECT CASE WHEN isfinite(x.at) THEN date_bin('1 day', x.at, timestamptz 'epoch') ELSE x.at END
    FROM (
        SELECT least(
            (SELECT min(listed_at) FROM @sales@.listings WHERE listed_at >= e.at AND (e.first OR listed_at > e.at)),
            (SELECT min(created_at) FROM @sales@.leads WHERE created_at >= e.at AND (e.first OR created_at > e.at)),
            (SELECT min(purchased_at) FROM @sales@.purchases WHERE purchased_at >= e.at AND (e.first OR purchased_at > e.at)),
            (SELECT min(bucket) FROM kpi.kpi_sums WHERE grain = 900 AND bucket >= e.at AND (e.first OR bucket > e.at)),
            (SELECT min(bucket) FROM kpi.kpi_buyer_buckets WHERE bucket >= e.at AND (e.first OR bucket > e.at)),
            (SELECT min(listed_at) FROM kpi.kpi_sales WHERE listed_at >= e.at AND (e.first OR listed_at > e.at))
        ) AS at
        FROM (SELECT coalesce(after, '-infinity') AS at, after IS NULL AS first) e
    ) x
$fn$;

-- One slice, the instants from lo to last: each part of the summaries compared with what the
-- rows make and repaired as the applier would (its differences added to kpi_sums), the sums
-- last. Returns how many rows of each part differed.
CREATE OR REPLACE FUNCTION kpi.kpi_audit_slice(lo timestamptz, last timestamptz, aged_days integer) RETURNS jsonb
LANGUAGE plpgsql AS $fn$
DECLARE
    parts jsonb := '{}';
    diffs bigint;
    deltas kpi.kpi_sums[];
    more_deltas kpi.kpi_sums[];
    links kpi.kpi_buyer_days[];
    more_links kpi.kpi_buyer_days[];
    truth kpi.kpi_sums[];
BEGIN
    -- The sold listings listed in the slice, each image counted once.
    WITH differ AS (
        SELECT d.listing_id, d.listed_at, d.sold_at, sum(d.n)::integer AS n
        FROM (
            SELECT id AS listing_id, listed_at, sold_at, 1 AS n FROM @sales@.listings
            WHERE listed_at BETWEEN lo AND last AND status <> 'withdrawn' AND sold_at IS NOT NULL
            UNION ALL
            SELECT listing_id, listed_at, sold_at, -n FROM kpi.kpi_sales WHERE listed_at BETWEEN lo AND last
        ) d
        GROUP BY 1, 2, 3 HAVING sum(d.n) <> 0
    ),
    fixed AS (
        INSERT INTO kpi.kpi_sales AS s SELECT * FROM differ
        ON CONFLICT (listing_id, listed_at, sold_at) DO UPDATE SET n = s.n + excluded.n
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM fixed),
           ARRAY(SELECT x FROM differ i CROSS JOIN LATERAL kpi.kpi_long_sale(i.listed_at, i.sold_at, aged_days, i.n) x)
    INTO diffs, deltas;
    DELETE FROM kpi.kpi_sales WHERE listed_at BETWEEN lo AND last AND n = 0;
    parts := parts || jsonb_build_object('kpi_sales', diffs);

    -- The facts of the purchases, and the conversions of the leads, of the slice, and those stored for it.
    more_deltas := kpi.kpi_sync_facts(
        ARRAY(SELECT id FROM @sales@.purchases WHERE purchased_at BETWEEN lo AND last
              UNION SELECT purchase_id FROM kpi.kpi_purchase_facts WHERE bucket BETWEEN lo AND last),
        ARRAY(SELECT id FROM @sales@.leads WHERE created_at BETWEEN lo AND last
              UNION SELECT lead_id FROM kpi.kpi_conversions WHERE bucket BETWEEN lo AND last)
    );
    parts := parts || jsonb_build_object('kpi_purchase_facts', cardinality(more_deltas));
    deltas := deltas || more_deltas;

    -- The buyers' buckets of the slice: the pairs stored or not as the rows say otherwise (the
    -- missing ones proven by the rows just read, the others looked up).
    WITH truth AS (
        SELECT buyer_id, date_bin('15 minutes', created_at, timestamptz 'epoch') AS bucket FROM @sales@.leads
        WHERE created_at BETWEEN lo AND last
        UNION
        SELECT buyer_id, date_bin('15 minutes', purchased_at, timestamptz 'epoch') FROM @sales@.purchases
        WHERE purchased_at BETWEEN lo AND last
    ),
    stored AS (
        SELECT buyer_id, bucket FROM kpi.kpi_buyer_buckets WHERE bucket BETWEEN lo AND last
    ),
    p AS (
        SELECT ARRAY(SELECT ROW(d.buyer_id, d.bucket, NULL)::kpi.kpi_buyer_buckets
                     FROM (SELECT * FROM truth EXCEPT SELECT * FROM stored) d) AS missing,
               ARRAY(SELECT ROW(d.buyer_id, d.bucket, NULL)::kpi.kpi_buyer_buckets
                     FROM (SELECT * FROM stored EXCEPT SELECT * FROM truth) d) AS extra
    )
    SELECT b.sums, b.links, cardinality(p.missing) + cardinality(p.extra) INTO more_deltas, links, diffs
    FROM p CROSS JOIN LATERAL kpi.kpi_sync_buyers(p.missing || p.extra, p.missing) b;
    parts := parts || jsonb_build_object('kpi_buyer_buckets', diffs);
    deltas := deltas || more_deltas;

    -- Their links: each bucket's previous one is the buyer's bucket before it (by the key).
    WITH wrong AS (
        SELECT b.buyer_id, b.bucket, b.prev_bucket AS old_prev, p.prev AS new_prev
        FROM kpi.kpi_buyer_buckets b
        CROSS JOIN LATERAL (
            SELECT max(x.bucket) AS prev FROM kpi.kpi_buyer_buckets x WHERE x.buyer_id = b.buyer_id AND x.bucket < b.bucket
        ) p
        WHERE b.bucket BETWEEN lo AND last AND b.prev_bucket IS DISTINCT FROM p.prev
    ),
    fixed AS (
        UPDATE kpi.kpi_buyer_buckets b SET prev_bucket = w.new_prev FROM wrong w
        WHERE b.buyer_id = w.buyer_id AND b.bucket = w.bucket
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM fixed),
           ARRAY(SELECT ROW(0, e.at, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, e.n, 0, 0)::kpi.kpi_sums
                 FROM (SELECT old_prev AS at, -1 AS n FROM wrong WHERE old_prev IS NOT NULL
                       UNION ALL SELECT new_prev, 1 FROM wrong WHERE new_prev IS NOT NULL) e),
           ARRAY(SELECT kpi.kpi_buyer_link(bucket, old_prev, -1::bigint) FROM wrong WHERE old_prev IS NOT NULL
                 UNION ALL SELECT kpi.kpi_buyer_link(bucket, new_prev, 1::bigint) FROM wrong WHERE new_prev IS NOT NULL)
    INTO diffs, more_deltas, more_links;
    parts := parts || jsonb_build_object('buyer_links', diffs);
    PERFORM kpi.kpi_add(deltas || more_deltas);
    PERFORM kpi.kpi_add_links(links || more_links);

    -- The links counted by day and gap, of the slice's day.
    WITH differ AS (
        SELECT d.day, d.gap, sum(d.n) AS n
        FROM (
            SELECT (kpi.kpi_buyer_link(bucket, prev_bucket, 1::bigint)).* FROM kpi.kpi_buyer_buckets
            WHERE bucket BETWEEN lo AND last AND prev_bucket IS NOT NULL
            UNION ALL
            SELECT day, gap, -n FROM kpi.kpi_buyer_days WHERE day BETWEEN lo AND last
        ) d
        GROUP BY 1, 2 HAVING sum(d.n) <> 0
    )
    SELECT count(*), ARRAY(SELECT ROW(day, gap, n)::kpi.kpi_buyer_days FROM differ) INTO diffs, links FROM differ;
    PERFORM kpi.kpi_add_links(links);
    parts := parts || jsonb_build_object('kpi_buyer_days', diffs);

    -- The sums: the 15-minute buckets as a rebuild makes them, and the day's row their sum;
    -- written anew only where a row differs.
    truth := ARRAY(
        SELECT ROW(900, d.bucket, sum(d.listings), sum(d.price_sum), sum(d.scored), sum(d.score_sum), sum(d.unsold),
                   sum(d.leads), sum(d.converted), sum(d.costed), sum(d.profit_sum), sum(d.led), sum(d.lead_seconds),
                   sum(d.buyer_buckets), sum(d.buyer_links), sum(d.long_listed), sum(d.long_sold))::kpi.kpi_sums
        FROM unnest(kpi.kpi_slice_sums(lo, last, aged_days)) d
        GROUP BY d.bucket
        HAVING (sum(d.listings), sum(d.price_sum), sum(d.scored), sum(d.score_sum), sum(d.unsold), sum(d.leads),
                sum(d.converted), sum(d.costed), sum(d.profit_sum), sum(d.led), sum(d.lead_seconds),
                sum(d.buyer_buckets), sum(d.buyer_links), sum(d.long_listed), sum(d.long_sold))
               <> (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    );
    truth := truth || ARRAY(
        SELECT ROW(86400, lo, sum(t.listings), sum(t.price_sum), sum(t.scored), sum(t.score_sum), sum(t.unsold),
                   sum(t.leads), sum(t.converted), sum(t.costed), sum(t.profit_sum), sum(t.led), sum(t.lead_seconds),
                   sum(t.buyer_buckets), sum(t.buyer_links), sum(t.long_listed), sum(t.long_sold))::kpi.kpi_sums
        FROM unnest(truth) t
        HAVING count(*) > 0
    );
    diffs := (
        SELECT count(DISTINCT (x.grain, x.bucket))
        FROM (
            (SELECT * FROM unnest(truth)
             EXCEPT ALL
             SELECT * FROM kpi.kpi_sums WHERE grain IN (900, 86400) AND bucket BETWEEN lo AND last)
            UNION ALL
            (SELECT * FROM kpi.kpi_sums WHERE grain IN (900, 86400) AND bucket BETWEEN lo AND last
             EXCEPT ALL
             SELECT * FROM unnest(truth))
        ) x
    );
    IF diffs > 0 THEN
        DELETE FROM kpi.kpi_sums WHERE grain IN (900, 86400) AND bucket BETWEEN lo AND last;
        INSERT INTO kpi.kpi_sums SELECT * FROM unnest(truth);
    END IF;
    RETURN parts || jsonb_build_object('kpi_sums', diffs);
END
$fn$;

-- Whether the audit's next slice is due (kpi.audit_seconds set, its time come, the summaries built).
CREATE OR REPLACE FUNCTION kpi.kpi_audit_is_due() RETURNS boolean
LANGUAGE sql STABLE AS $fn$
    SELECT nullif(current_setting('kpi.audit_seconds', true), '') IS NOT NULL
       AND clock_timestamp() >= (SELECT next_at FROM kpi.kpi_audit_state)
       AND EXISTS (SELECT FROM kpi.kpi_summary_state)
       -- In the decoding mode an empty log does not say that the rows of this snapshot are all
       -- applied (the slot may not have given them yet): no audit (sql/schema/decoding.sql).
       AND NOT kpi.kpi_decoding_mode()
$fn$;

-- The next slice of the audit, once `every` has passed since the last and the log is empty in
-- this snapshot (all of it applied by this transaction): what it parts (jsonb), or NULL.
CREATE OR REPLACE FUNCTION kpi.kpi_audit(every interval) RETURNS jsonb
LANGUAGE plpgsql AS $fn$
DECLARE
    state kpi.kpi_audit_state := (SELECT a FROM kpi.kpi_audit_state a);
    lo timestamptz;
    parts jsonb;
    diffs bigint;
BEGIN
    IF every IS NULL OR NOT kpi.kpi_audit_is_due() OR EXISTS (SELECT FROM kpi.kpi_changes) THEN
        RETURN NULL;
    END IF;
    lo := kpi.kpi_audit_next(state.slice);
    IF lo IS NULL THEN
        UPDATE kpi.kpi_audit_state SET slice = NULL, next_at = clock_timestamp() + every, pass_started = NULL,
                                   pass_repairs = 0, last_pass_at = clock_timestamp(), last_repairs = pass_repairs;
        RETURN jsonb_build_object('pass_ended', true, 'repairs', state.pass_repairs);
    END IF;
    parts := kpi.kpi_audit_slice(lo, kpi.kpi_audit_last(lo), (SELECT s.aged_days FROM kpi.kpi_summary_state s));
    diffs := (SELECT sum(value::bigint) FROM jsonb_each_text(parts));
    UPDATE kpi.kpi_audit_state SET slice = kpi.kpi_audit_last(lo),
                               next_at = clock_timestamp() + every, pass_started = coalesce(pass_started, clock_timestamp()),
                               pass_repairs = pass_repairs + diffs, repairs = repairs + diffs;
    RETURN jsonb_build_object('slice', lo, 'found', parts, 'repairs', diffs);
END
$fn$;

-- The audit's next slice in the applier's transaction, when due: every kpi.audit_seconds (the
-- service's KPI_AUDIT_INTERVAL_S; unset, never). What it found is left in kpi.audited for the
-- service to count and log; a repair announces a change of every window. Whether it ran.
CREATE OR REPLACE FUNCTION kpi.kpi_audit_due() RETURNS boolean
LANGUAGE plpgsql AS $fn$
DECLARE
    every interval := nullif(current_setting('kpi.audit_seconds', true), '')::double precision * interval '1 second';
    parts jsonb;
    skipped timestamptz;
BEGIN
    BEGIN
        parts := kpi.kpi_audit(every);
    EXCEPTION WHEN query_canceled THEN
        -- A day that takes longer than the batch's statement timeout leaves: skipped, and said
        -- so, rather than cancel every batch that drains the log from now on (the batch's work,
        -- done before it, is kept).
        skipped := kpi.kpi_audit_next((SELECT a.slice FROM kpi.kpi_audit_state a));
        UPDATE kpi.kpi_audit_state
        SET slice = kpi.kpi_audit_last(skipped),
            next_at = clock_timestamp() + every;
        parts := jsonb_build_object('skipped', skipped);
    END;
    IF parts IS NULL THEN
        RETURN false;
    END IF;
    PERFORM set_config('kpi.audited', parts::text, true);
    IF parts ? 'slice' AND (parts->>'repairs')::bigint > 0 THEN
        PERFORM kpi.kpi_announce('{"all": true}');
    END IF;
    RETURN true;
END
$fn$;

-- The applier's lock: one applier, build or rebuild at a time across all instances, held by
-- its transaction: the row of kpi_applier_rest (below), locked and written. Not an advisory
-- lock, which any login may take and keep: nobody but the summaries' owner may lock this row.
-- It is taken without waiting (false: another transaction has it, or one that committed after
-- this transaction's snapshot took it: working from a snapshot without that one's work would
-- add it twice). Taken only where there is work (kpi_apply_changes), since the write costs WAL. Whoever must wait tries again in a new transaction (kpi_service/db/sql.py,
-- in_applier_turn); kpi_build and kpi_rebuild raise lock_not_available for it.
CREATE TABLE IF NOT EXISTS kpi.kpi_applier_rest (until timestamptz NOT NULL);
INSERT INTO kpi.kpi_applier_rest SELECT '-infinity' WHERE NOT EXISTS (SELECT FROM kpi.kpi_applier_rest);
-- The number of the last transaction that changed the summaries (kpi_announce). It starts at the
-- install's time in milliseconds, so that a reinstall never numbers a batch as one before it
-- (the service's cached values outlive the schema in Redis).
ALTER TABLE kpi.kpi_applier_rest ADD COLUMN IF NOT EXISTS batch bigint NOT NULL
    DEFAULT (extract(epoch FROM now()) * 1000)::bigint;

-- Tells the service what this transaction changed in the summaries, in a setting of the
-- transaction its caller reads before committing (kpi_service/db/sql.py, CHANGED): `changed` is
-- {"all": true} or what kpi_apply_changes says, and every transaction that changes them takes
-- the next number (`batch`), with the applier's lock row held. The KPI statement reads the
-- number in its own snapshot (sql/runtime/kpi.sql): a value knows exactly which batches it
-- holds, so the service can add a later batch's deltas to it (kpi_service/serving/advance.py).
-- A second call in the same transaction keeps the number; "all" wins over deltas.
CREATE OR REPLACE FUNCTION kpi.kpi_announce(changed jsonb) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    before jsonb := nullif(current_setting('kpi.changed', true), '')::jsonb;
    n bigint := (before->>'batch')::bigint;
BEGIN
    IF n IS NULL THEN
        UPDATE kpi.kpi_applier_rest SET batch = batch + 1 RETURNING batch INTO n;
    END IF;
    IF before ? 'all' OR changed ? 'all' THEN
        changed := '{"all": true}';
    END IF;
    PERFORM set_config('kpi.changed', (changed || jsonb_build_object('batch', n))::text, true);
END
$fn$;
CREATE OR REPLACE FUNCTION kpi.kpi_applier_lock() RETURNS boolean
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM FROM kpi.kpi_applier_rest FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE kpi.kpi_applier_rest SET until = until;
    RETURN true;
EXCEPTION WHEN serialization_failure THEN
    RETURN false;
END
$fn$;

-- The applier's differences from the log's images are right only if what it reads from the
-- sales tables is what the log rows it took describe: one snapshot for both.
CREATE OR REPLACE FUNCTION kpi.kpi_require_one_snapshot() RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    IF current_setting('transaction_isolation') = 'read committed' THEN
        RAISE EXCEPTION 'the KPI summaries are applied and rebuilt in one snapshot'
            USING HINT = 'BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT kpi.kpi_rebuild(); COMMIT;';
    END IF;
END
$fn$;

-- kpi_buyer_days anew from kpi_buyer_buckets (a rebuild, and the upgrade from version 4, which
-- had no kpi_buyer_days).
CREATE OR REPLACE FUNCTION kpi.kpi_count_links() RETURNS void
LANGUAGE sql AS $fn$
    TRUNCATE kpi.kpi_buyer_days;
    INSERT INTO kpi.kpi_buyer_days
    SELECT l.day, l.gap, sum(l.n)
    FROM kpi.kpi_buyer_buckets b CROSS JOIN LATERAL kpi.kpi_buyer_link(b.bucket, b.prev_bucket, 1::bigint) l
    WHERE b.prev_bucket IS NOT NULL
    GROUP BY 1, 2;
$fn$;

-- kpi_sums.long_listed and long_sold of kpi_sales for aged_days, as kpi_add deltas (one per
-- 15-minute bucket).
CREATE OR REPLACE FUNCTION kpi.kpi_long_sales(aged_days integer) RETURNS kpi.kpi_sums[]
LANGUAGE sql STABLE AS $fn$
    SELECT ARRAY(
        SELECT ROW(0, l.bucket, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, sum(l.long_listed), sum(l.long_sold))::kpi.kpi_sums
        FROM (
            SELECT date_bin('15 minutes', x.bucket, timestamptz 'epoch') AS bucket, x.long_listed, x.long_sold
            FROM kpi.kpi_sales s CROSS JOIN LATERAL kpi.kpi_long_sale(s.listed_at, s.sold_at, aged_days, s.n) x
        ) AS l
        GROUP BY l.bucket
    )
$fn$;

-- long_listed and long_sold counted anew for another aged_days (init-db with another
-- KPI_AGED_DAYS, and the upgrade from versions 4 and 5, which had neither).
CREATE OR REPLACE FUNCTION kpi.kpi_count_long(aged_days integer) RETURNS void
LANGUAGE sql AS $fn$
    UPDATE kpi.kpi_sums SET long_listed = 0, long_sold = 0 WHERE long_listed <> 0 OR long_sold <> 0;
    SELECT kpi.kpi_add(kpi.kpi_long_sales(aged_days));
    -- The rows that held nothing else (kpi_add drops only those of the buckets it added to).
    DELETE FROM kpi.kpi_sums s
    WHERE (s.listings, s.price_sum, s.scored, s.score_sum, s.unsold, s.leads, s.converted, s.costed, s.profit_sum,
           s.led, s.lead_seconds, s.buyer_buckets, s.buyer_links, s.long_listed, s.long_sold)
          = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    UPDATE kpi.kpi_summary_state SET aged_days = kpi_count_long.aged_days;
$fn$;

-- What kpi_sums holds for the instants from lo to last (both included) as a rebuild makes it,
-- as kpi_add deltas: from the sales tables (listings, leads) and the service's copies of what
-- depends on other rows (purchases' facts, conversions, buyers' buckets and links, sales). The
-- rebuild takes all instants, the audit a day at a time.
CREATE OR REPLACE FUNCTION kpi.kpi_slice_sums(lo timestamptz, last timestamptz, aged_days integer) RETURNS kpi.kpi_sums[]
LANGUAGE sql STABLE AS $fn$
    SELECT ARRAY(
        SELECT ROW(0, bucket, n, price, scored, score, unsold, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)::kpi.kpi_sums
        FROM (
            SELECT date_bin('15 minutes', listed_at, timestamptz 'epoch') AS bucket, count(*) AS n,
                   sum(price) AS price, count(score) AS scored, coalesce(sum(score), 0) AS score,
                   count(*) FILTER (WHERE status <> 'withdrawn' AND sold_at IS NULL) AS unsold
            FROM @sales@.listings WHERE listed_at BETWEEN lo AND last GROUP BY 1
        ) AS l
        UNION ALL
        SELECT ROW(0, bucket, 0, 0, 0, 0, 0, n, 0, 0, 0, 0, 0, 0, 0, 0, 0)::kpi.kpi_sums
        FROM (SELECT date_bin('15 minutes', created_at, timestamptz 'epoch') AS bucket, count(*) AS n
              FROM @sales@.leads WHERE created_at BETWEEN lo AND last GROUP BY 1) AS d
        UNION ALL
        SELECT ROW(0, bucket, 0, 0, 0, 0, 0, 0, n, 0, 0, 0, 0, 0, 0, 0, 0)::kpi.kpi_sums
        FROM (SELECT bucket, count(*) AS n FROM kpi.kpi_conversions WHERE bucket BETWEEN lo AND last GROUP BY 1) AS c
        UNION ALL
        SELECT ROW(0, bucket, 0, 0, 0, 0, 0, 0, 0, costed, profit, led, seconds, 0, 0, 0, 0)::kpi.kpi_sums
        FROM (SELECT bucket, sum(costed) AS costed, sum(profit) AS profit, sum(led) AS led,
                     sum(lead_seconds) AS seconds
              FROM kpi.kpi_purchase_facts WHERE bucket BETWEEN lo AND last GROUP BY 1) AS p
        UNION ALL
        SELECT ROW(0, bucket, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, n, 0, 0, 0)::kpi.kpi_sums
        FROM (SELECT bucket, count(*) AS n FROM kpi.kpi_buyer_buckets WHERE bucket BETWEEN lo AND last GROUP BY 1) AS b
        UNION ALL
        SELECT ROW(0, bucket, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, n, 0, 0)::kpi.kpi_sums
        FROM (SELECT prev_bucket AS bucket, count(*) AS n FROM kpi.kpi_buyer_buckets
              WHERE prev_bucket BETWEEN lo AND last GROUP BY 1) AS k
        UNION ALL
        -- (kpi_long_sale's rows are at the sale's own instants: put in their bucket here.)
        SELECT ROW(0, date_bin('15 minutes', x.bucket, timestamptz 'epoch'), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                   x.long_listed, x.long_sold)::kpi.kpi_sums
        FROM (
            SELECT x.* FROM kpi.kpi_sales s CROSS JOIN LATERAL kpi.kpi_long_sale(s.listed_at, s.sold_at, aged_days, s.n) x
            WHERE s.listed_at BETWEEN lo AND last AND x.long_listed <> 0
            UNION ALL
            SELECT x.* FROM kpi.kpi_sales s CROSS JOIN LATERAL kpi.kpi_long_sale(s.listed_at, s.sold_at, aged_days, s.n) x
            WHERE s.sold_at - interval '1 microsecond' BETWEEN lo AND last AND x.long_sold <> 0
        ) x
    )
$fn$;

-- Everything again from the sales tables (init-db, a TRUNCATE of a sales table, a repair), for
-- the aged_days recorded (60 if none is: init-db records KPI_AGED_DAYS).
CREATE OR REPLACE FUNCTION kpi.kpi_rebuild() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
BEGIN
    PERFORM kpi.kpi_rebuild(coalesce((SELECT aged_days FROM kpi.kpi_summary_state), 60));
END
$fn$;

CREATE OR REPLACE FUNCTION kpi.kpi_rebuild(aged_days integer) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
BEGIN
    PERFORM kpi.kpi_require_one_snapshot();
    IF NOT kpi.kpi_applier_lock() THEN
        RAISE EXCEPTION 'an applier is running' USING ERRCODE = 'lock_not_available',
            HINT = 'Try again in a new transaction.';
    END IF;
    -- What the log holds is in this snapshot's rows: taken with them.
    DELETE FROM kpi.kpi_changes;
    -- Built by this version (kpi_build): kpi_source() says 'summaries' from the commit on.
    DELETE FROM kpi.kpi_summary_state;
    INSERT INTO kpi.kpi_summary_state (version, aged_days, triggers) VALUES (kpi.kpi_summary_version(), aged_days, kpi.kpi_trigger_state());
    TRUNCATE kpi.kpi_sums, kpi.kpi_buyer_buckets, kpi.kpi_buyer_days, kpi.kpi_sales, kpi.kpi_purchase_facts, kpi.kpi_conversions;
    -- The decoding mode's copy of the rows, in this snapshot (sql/schema/decoding.sql).
    PERFORM kpi.kpi_copy_rebuild();
    -- Progress for init-db to print (kpi_service/db/schema.py): at ten million listings the
    -- build takes minutes, in one transaction that shows nothing else meanwhile.
    RAISE NOTICE 'kpi-service: building the summaries: the sold listings';
    INSERT INTO kpi.kpi_sales
    SELECT id, listed_at, sold_at, 1 FROM @sales@.listings WHERE status <> 'withdrawn' AND sold_at IS NOT NULL;
    RAISE NOTICE 'kpi-service: building the summaries: the buyers'' 15-minute buckets';
    INSERT INTO kpi.kpi_buyer_buckets (buyer_id, bucket, prev_bucket)
    SELECT e.buyer_id, e.bucket, lag(e.bucket) OVER (PARTITION BY e.buyer_id ORDER BY e.bucket)
    FROM (
        SELECT buyer_id, date_bin('15 minutes', created_at, timestamptz 'epoch') FROM @sales@.leads
        UNION
        SELECT buyer_id, date_bin('15 minutes', purchased_at, timestamptz 'epoch') FROM @sales@.purchases
    ) AS e (buyer_id, bucket);
    RAISE NOTICE 'kpi-service: building the summaries: the buyers'' links by day';
    PERFORM kpi.kpi_count_links();
    RAISE NOTICE 'kpi-service: building the summaries: the purchases and conversions';
    INSERT INTO kpi.kpi_purchase_facts SELECT * FROM kpi.kpi_current_facts(ARRAY(SELECT id FROM @sales@.purchases));
    INSERT INTO kpi.kpi_conversions
    SELECT * FROM kpi.kpi_current_conversions(ARRAY(SELECT lead_id FROM @sales@.purchases WHERE lead_id IS NOT NULL));
    RAISE NOTICE 'kpi-service: building the summaries: the sums by bucket';
    PERFORM kpi.kpi_add(kpi.kpi_slice_sums('-infinity'::timestamptz, 'infinity'::timestamptz, aged_days));
END
$fn$;

-- The applier: takes up to max_rows rows of the change log and applies them, in the caller's
-- REPEATABLE READ transaction. Returns how many rows it took; NULL when another session is
-- applying (one at a time: the differences it adds must each be added once). A crash rolls
-- back the taking of the rows with their application.
-- Its work is proportional to the rows changed, never to a bucket's size:
-- - the rows' own columns (listings' counts, prices, scores and stock; leads' count) come from
--   their old and new images in the log: the old subtracted, the new added, in any order;
-- - so do the sold listings (kpi_sales), each image counted;
-- - what depends on other rows (a purchase's profit and lead time, a lead's conversion, a
--   buyer's buckets) is looked up now for the purchases, leads and buyers named (and the
--   purchases of a listing or lead whose old image it takes), compared with the service's
--   stored copy, and the difference added; a change
--   whose log rows a batch limit leaves for later is already seen by these lookups, and when its
--   rows come the comparison finds nothing left to add.
-- Pacing, as autovacuum's cost delay paces vacuum: with busy_share below 1, a batch that found
-- the application's sessions at work (in this database) is followed by a rest of its own duration times
-- (1 / busy_share - 1), at most 5 s (after a rebuild or a batch that took a minute, a backlog
-- must not wait for many minutes), for every instance's applier alike (the rest is kept here, under the
-- applier lock). On a server whose cores the application's writes keep busy, the applier then
-- takes at most that share of a core from them, and a backlog waits for a quieter moment. A
-- rest ends early when the application is found idle: a backlog left by a burst is then
-- applied at once, batch after batch. Whose sessions are at work is read
-- from pg_stat_activity, as the summaries' owner: an owner who may not see other roles' sessions
-- (neither superuser nor pg_read_all_stats) sees none at work, and the applier never rests.

-- Whether another session of the application (not of this service) is running a statement in
-- this database now.
CREATE OR REPLACE FUNCTION kpi.kpi_application_at_work() RETURNS boolean
LANGUAGE sql AS $fn$
    -- pg_stat_activity is read once per transaction and kept: asked again at a batch's end, it
    -- would answer what it answered at its start.
    SELECT pg_stat_clear_snapshot();
    SELECT EXISTS (
        SELECT FROM pg_stat_activity
        WHERE datname = current_database() AND state = 'active' AND backend_type = 'client backend'
          AND pid <> pg_backend_pid() AND application_name IS DISTINCT FROM current_setting('application_name'))
$fn$;

CREATE OR REPLACE FUNCTION kpi.kpi_applier_rests(started timestamptz, busy_share double precision) RETURNS void
LANGUAGE sql AS $fn$
    UPDATE kpi.kpi_applier_rest SET until = CASE
        WHEN busy_share < 1 AND kpi.kpi_application_at_work()
        THEN clock_timestamp() + least((clock_timestamp() - started) * (1 / busy_share - 1), interval '5 seconds')
        ELSE '-infinity' END
$fn$;

CREATE OR REPLACE FUNCTION kpi.kpi_apply_changes(max_rows integer DEFAULT 50000, busy_share double precision DEFAULT 1)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
DECLARE
    started timestamptz := clock_timestamp();
    changes kpi.kpi_changes[];
    emptied bigint[];  -- kpi_sales rows whose count came to 0
    deltas kpi.kpi_sums[];
    buyer_deltas kpi.kpi_sums[];
    link_deltas kpi.kpi_buyer_days[];
    sale_deltas kpi.kpi_sums[];
    pair_changes jsonb;  -- kpi_buyer_buckets rows changed (kpi_sync_buyers)
    -- (NULL until the summaries are built: kpi_build counts long_listed and long_sold then.)
    aged_days integer := (SELECT s.aged_days FROM kpi.kpi_summary_state s);
    stopped text;  -- why the summaries stop
    taken bigint;
BEGIN
    PERFORM kpi.kpi_require_one_snapshot();
    -- Nothing to do: no lock, no write (locking a row writes WAL: an idle service must not, or
    -- its primary's standbys would never be idle). An empty log in this snapshot means every
    -- change committed before it is applied, by transactions committed before it.
    IF NOT EXISTS (SELECT FROM kpi.kpi_changes) AND NOT kpi.kpi_audit_is_due() THEN
        RETURN 0;
    END IF;
    IF NOT kpi.kpi_applier_lock() THEN
        RETURN NULL;
    END IF;
    -- The summaries stop, and stay unused (kpi_source() says 'raw') until init-db builds them
    -- anew, when writes went past the log: a trigger disabled (ALTER TABLE ... DISABLE TRIGGER,
    -- pg_restore --disable-triggers), even if enabled again since; or when the log can no longer
    -- be read: a column the KPIs read renamed, dropped or retyped. Never the application's
    -- writes. The log is of no use then, nor while the summaries are not built: emptied, so that
    -- it cannot grow without bound.
    IF NOT kpi.kpi_capturing() THEN
        stopped := 'a trigger of the change log was disabled';
    ELSIF cardinality(kpi.kpi_missing_columns()) > 0 THEN
        stopped := 'the sales tables lack ' || array_to_string(kpi.kpi_missing_columns(), ', ');
    ELSIF NOT EXISTS (SELECT FROM kpi.kpi_summary_state) THEN
        DELETE FROM kpi.kpi_changes;
        GET DIAGNOSTICS taken = ROW_COUNT;
        RETURN taken;
    END IF;
    IF stopped IS NULL AND busy_share < 1 AND (SELECT max(until) FROM kpi.kpi_applier_rest) > started
       AND kpi.kpi_application_at_work() THEN
        RETURN NULL;  -- resting: as if another session were applying
    END IF;
    WITH taken AS (
        DELETE FROM kpi.kpi_changes WHERE ctid = ANY (ARRAY(SELECT ctid FROM kpi.kpi_changes LIMIT max_rows))
        RETURNING *
    )
    SELECT coalesce(array_agg(t), '{}') INTO changes FROM taken t;
    taken := cardinality(changes);
    IF stopped IS NULL THEN
        BEGIN
            changes := ARRAY(SELECT kpi.kpi_change_of(c) FROM unnest(changes) c);
            IF array_position(changes, NULL) IS NOT NULL THEN
                stopped := 'a row was logged without a column the KPIs read';
            END IF;
        EXCEPTION WHEN data_exception THEN
            stopped := 'a column the KPIs read holds what they cannot read: ' || SQLERRM;
        END;
    END IF;
    IF stopped IS NOT NULL THEN
        RAISE WARNING 'kpi-service: the summaries stopped: %; kpi-service init-db builds them anew', stopped;
        DELETE FROM kpi.kpi_summary_state;
        DELETE FROM kpi.kpi_changes;
        PERFORM kpi.kpi_announce('{"all": true}');
        RETURN taken;
    END IF;
    IF cardinality(changes) = 0 THEN
        IF kpi.kpi_audit_due() THEN
            PERFORM kpi.kpi_applier_rests(started, busy_share);
        END IF;
        RETURN 0;
    END IF;
    -- A TRUNCATE: the log cannot say which of its rows came before it. Unless it changed nothing,
    -- the summaries stop (the KPIs are read from the rows) until they are built anew from the rows,
    -- which the service's applier does once every instance has noticed (kpi_rebuild_if_needed):
    -- at ten million listings that takes many minutes, more than a batch may.
    IF EXISTS (SELECT FROM unnest(changes) c WHERE c.tbl = 't') THEN
        IF taken < max_rows
           AND NOT EXISTS (SELECT FROM unnest(changes) c
                           WHERE c.tbl = 't' AND NOT coalesce(kpi.kpi_truncated_nothing(c.img->>'table', changes), false))
        THEN
            changes := ARRAY(SELECT c FROM unnest(changes) c WHERE c.tbl <> 't');
        ELSE
            DELETE FROM kpi.kpi_summary_state;
            DELETE FROM kpi.kpi_changes;
            PERFORM kpi.kpi_announce('{"all": true}');
            RETURN taken;
        END IF;
    END IF;

    -- (Summed per 15-minute bucket here, and so below: most of a batch's rows fall in a few
    -- buckets, and kpi_add sums every column of every row it is given, for both grains.)
    deltas := ARRAY(
        SELECT ROW(0, d.q, sum(d.n), sum(d.price), sum(d.scored), sum(d.score), sum(d.unsold), sum(d.leads),
                   0, 0, 0, 0, 0, 0, 0, 0, 0)::kpi.kpi_sums
        FROM (
            SELECT date_bin('15 minutes', c.at, timestamptz 'epoch') AS q, c.sign AS n, c.sign * c.price AS price,
                   c.sign * (c.score IS NOT NULL)::integer AS scored, c.sign * coalesce(c.score, 0) AS score,
                   c.sign * (NOT c.withdrawn AND c.sold_at IS NULL)::integer AS unsold, 0 AS leads
            FROM unnest(changes) c WHERE c.tbl = 'l'
            UNION ALL
            SELECT date_bin('15 minutes', c.at, timestamptz 'epoch'), 0, 0, 0, 0, 0, c.sign
            FROM unnest(changes) c WHERE c.tbl = 'd'
        ) AS d
        GROUP BY d.q
    );

    -- The sold listings of aged_inventory: each image of a listing sold and not withdrawn, its
    -- log rows' signs added to its count (an image a batch both adds and takes back, a rescore's,
    -- changes nothing), and aged_inventory's long sales with them.
    WITH images AS (
        SELECT c.id, c.at, c.sold_at, sum(c.sign)::integer AS n
        FROM unnest(changes) c
        WHERE c.tbl = 'l' AND c.sold_at IS NOT NULL AND NOT c.withdrawn
        GROUP BY 1, 2, 3
        HAVING sum(c.sign) <> 0
    ),
    counted AS (
        INSERT INTO kpi.kpi_sales AS s SELECT * FROM images
        ON CONFLICT (listing_id, listed_at, sold_at) DO UPDATE SET n = s.n + excluded.n
        RETURNING s.listing_id, s.n
    )
    SELECT ARRAY(SELECT x FROM images i CROSS JOIN LATERAL kpi.kpi_long_sale(i.at, i.sold_at, aged_days, i.n) x),
           ARRAY(SELECT listing_id FROM counted WHERE n = 0)
    INTO sale_deltas, emptied;
    DELETE FROM kpi.kpi_sales WHERE listing_id = ANY (emptied) AND n = 0;

    -- Purchases' facts and leads' conversions: the purchases logged, those of a listing whose
    -- cost may have changed and of a lead whose instant may have changed; the leads logged, and
    -- those of the purchases logged. Each is looked up in this batch's snapshot and compared with
    -- the stored copy: that is right in any order and any batching only if every change is
    -- followed by a lookup, so none is skipped on what the batch's images seem to say (images of
    -- two transactions can cancel out within a batch: a no-op update's new image beside the old
    -- image of the next update). "May have changed": the batch takes an old image of it, which
    -- every update and delete logs, in the transaction that made it, so the batch's snapshot
    -- holds that change. A listing or lead only inserted has no purchase yet (the foreign keys),
    -- and a purchase of it is logged itself.
    deltas := deltas || kpi.kpi_sync_facts(
        ARRAY(
            SELECT c.id FROM unnest(changes) c WHERE c.tbl = 'p'
            UNION
            SELECT x.id
            FROM (
                SELECT c.id FROM unnest(changes) c WHERE c.tbl = 'l'
                GROUP BY c.id
                HAVING min(c.sign) < 0
            ) k
            JOIN @sales@.purchases x ON x.listing_id = k.id
            UNION
            SELECT x.id
            FROM (
                SELECT c.id FROM unnest(changes) c WHERE c.tbl = 'd'
                GROUP BY c.id HAVING min(c.sign) < 0
            ) k
            JOIN @sales@.purchases x ON x.lead_id = k.id
        ),
        ARRAY(
            SELECT c.id FROM unnest(changes) c WHERE c.tbl = 'd'
            GROUP BY c.id HAVING min(c.sign) < 0
            UNION
            SELECT c.lead_id FROM unnest(changes) c WHERE c.tbl = 'p' AND c.lead_id IS NOT NULL
        )
    );

    -- The buyers' buckets of every (buyer, bucket) the batch names, and of where the leads and
    -- purchases it names are now (looked up by their keys: those pairs hold).
    SELECT b.sums, b.links, b.changed INTO buyer_deltas, link_deltas, pair_changes
    FROM kpi.kpi_sync_buyers(
        ARRAY(
            SELECT DISTINCT ROW(c.buyer_id, date_bin('15 minutes', c.at, timestamptz 'epoch'), NULL)::kpi.kpi_buyer_buckets
            FROM unnest(changes) c
            WHERE c.tbl IN ('d', 'p')
        ),
        ARRAY(
            SELECT DISTINCT ROW(x.buyer_id, date_bin('15 minutes', x.at, timestamptz 'epoch'), NULL)::kpi.kpi_buyer_buckets
            FROM (SELECT DISTINCT c.tbl, c.id FROM unnest(changes) c WHERE c.tbl IN ('d', 'p')) k
            CROSS JOIN LATERAL (
                SELECT ld.buyer_id, ld.created_at AS at FROM @sales@.leads ld WHERE k.tbl = 'd' AND ld.id = k.id
                UNION ALL
                SELECT p.buyer_id, p.purchased_at FROM @sales@.purchases p WHERE k.tbl = 'p' AND p.id = k.id
            ) x
        )
    ) b;

    PERFORM kpi.kpi_add(deltas || buyer_deltas || sale_deltas);
    PERFORM kpi.kpi_add_links(link_deltas);

    -- What this batch changed, for the service's live updates (kpi_service/live/hub.py), left in a
    -- setting of this transaction for the caller to read before it commits (the function's
    -- result stays a count, so that the service role's right to call it survives upgrades):
    -- the first and the last instant of the 15-minute buckets it added to (a change inside a
    -- bucket may be anywhere in it: a window from 10:05 changes with a sale at 10:07, whose
    -- purchase adds to the bucket of 10:00), and the earliest listed_at of a
    -- listing whose stock status or instants changed (aged_inventory at an instant T changes
    -- only where T is later than that plus aged_days).
    -- (Instants Python reads: an infinite or BC bucket as the first or last instant it holds;
    -- greatest and least skip a NULL, kept NULL here: nothing changed.)
    -- And the batch's deltas, which the service adds to the values of the windows it keeps
    -- fresh instead of computing them again (kpi_service/serving/advance.py, docs/design.md,
    -- "Freshness"): for every 15-minute bucket, what it added to the additive sums; the
    -- kpi_buyer_buckets rows it changed (active_buyers); and the images of listings in stock at
    -- some instant, with their count (aged_inventory at a fixed instant). Numbers as text, exact.
    -- Left out (null) for a batch of more than 5,000 of them: each window is computed again.
    -- And whether the log was empty at this batch's snapshot (`caught_up`).
    PERFORM kpi.kpi_announce(jsonb_build_object(
        'from', CASE WHEN r.first IS NOT NULL THEN greatest(r.first, '0001-01-01 00:00+00') END,
        'to', CASE WHEN r.last IS NOT NULL THEN least(r.last, '9999-12-31 23:59:59.999999+00') END,
        -- The listings whose stock at some instant changed: their images differ (an insert, a
        -- delete, a sale) and not all of them are withdrawn (never in stock).
        'stock_from', (
            SELECT CASE WHEN min(l.at) IS NOT NULL THEN greatest(min(l.at), '0001-01-01 00:00+00') END
            FROM (
                SELECT min(c.at) AS at FROM unnest(changes) c WHERE c.tbl = 'l'
                GROUP BY c.id
                HAVING (sum(c.sign) <> 0 OR count(DISTINCT (c.at, c.sold_at, c.withdrawn)) > 1) AND bool_or(NOT c.withdrawn)
            ) l
        ),
        'caught_up', taken < max_rows,
        'deltas', CASE WHEN jsonb_array_length(x.sums) + jsonb_array_length(pair_changes) + jsonb_array_length(x.stock) <= 5000
                       THEN jsonb_build_object('sums', x.sums, 'pairs', pair_changes, 'stock', x.stock) END
    ))
    FROM (
        SELECT min(date_bin('15 minutes', d.bucket, timestamptz 'epoch')) AS first,
               max(date_bin('15 minutes', d.bucket, timestamptz 'epoch')) + (interval '15 minutes' - interval '1 microsecond') AS last
        FROM unnest(deltas || buyer_deltas) d
    ) r
    -- (Not even built for a batch of more log rows than that: a backlog's batches go as fast as before.)
    CROSS JOIN LATERAL (
        SELECT CASE WHEN cardinality(changes) <= 5000 THEN (
            SELECT coalesce(jsonb_agg(jsonb_build_array(
                       kpi.kpi_instant_us(d.q), d.listings::text, d.price_sum::text, d.scored::text, d.score_sum::text,
                       d.leads::text, d.converted::text, d.costed::text, d.profit_sum::text, d.led::text,
                       d.lead_seconds::text)), '[]')
            FROM (
                SELECT date_bin('15 minutes', d.bucket, timestamptz 'epoch') AS q, sum(d.listings) AS listings,
                       sum(d.price_sum) AS price_sum, sum(d.scored) AS scored, sum(d.score_sum) AS score_sum,
                       sum(d.leads) AS leads, sum(d.converted) AS converted, sum(d.costed) AS costed,
                       sum(d.profit_sum) AS profit_sum, sum(d.led) AS led, sum(d.lead_seconds) AS lead_seconds
                FROM unnest(deltas) d
                GROUP BY 1
            ) d
            WHERE (d.listings, d.price_sum, d.scored, d.score_sum, d.leads, d.converted, d.costed, d.profit_sum, d.led,
                   d.lead_seconds) <> (0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        ) END AS sums, CASE WHEN cardinality(changes) <= 5000 THEN (
            SELECT coalesce(jsonb_agg(jsonb_build_array(kpi.kpi_instant_us(i.at), kpi.kpi_instant_us(i.sold_at), i.n)), '[]')
            FROM (
                SELECT c.at, c.sold_at, sum(c.sign) AS n FROM unnest(changes) c
                WHERE c.tbl = 'l' AND NOT c.withdrawn
                GROUP BY 1, 2 HAVING sum(c.sign) <> 0
            ) i
        ) END AS stock
    ) x;
    IF taken < max_rows THEN
        PERFORM kpi.kpi_audit_due();  -- the log was empty at this snapshot: all of it is applied now
    END IF;
    PERFORM kpi.kpi_applier_rests(started, busy_share);
    RETURN taken;
END
$fn$;

-- The sums of kpi_sums over [lo, hi), both 15-minute edges: the whole UTC days at day grain,
-- the 15-minute buckets before and after them (a window without a whole day: all at 15 minutes).
-- (Its result gained columns in version 6: a function's result type is replaced only by a new one.)
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_proc WHERE oid = to_regprocedure('kpi.kpi_range(timestamptz, timestamptz)')
                                     AND NOT 'long_sold' = ANY (proargnames)) THEN
        DROP FUNCTION kpi.kpi_range(timestamptz, timestamptz);
    END IF;
END
$$;
CREATE OR REPLACE FUNCTION kpi.kpi_range(lo timestamptz, hi timestamptz)
RETURNS TABLE (listings bigint, price_sum numeric, scored bigint, score_sum numeric, unsold bigint,
               leads bigint, converted bigint, costed bigint, profit_sum numeric, led bigint,
               lead_seconds numeric, buyer_buckets bigint, buyer_links bigint, long_listed bigint, long_sold bigint)
LANGUAGE sql STABLE AS $fn$
    SELECT coalesce(sum(r.listings), 0)::bigint, coalesce(sum(r.price_sum), 0), coalesce(sum(r.scored), 0)::bigint,
           coalesce(sum(r.score_sum), 0), coalesce(sum(r.unsold), 0)::bigint, coalesce(sum(r.leads), 0)::bigint,
           coalesce(sum(r.converted), 0)::bigint, coalesce(sum(r.costed), 0)::bigint, coalesce(sum(r.profit_sum), 0),
           coalesce(sum(r.led), 0)::bigint, coalesce(sum(r.lead_seconds), 0),
           coalesce(sum(r.buyer_buckets), 0)::bigint, coalesce(sum(r.buyer_links), 0)::bigint,
           coalesce(sum(r.long_listed), 0)::bigint, coalesce(sum(r.long_sold), 0)::bigint
    FROM (
        SELECT CASE WHEN d.first < d.last THEN d.first ELSE hi END AS day_lo,
               CASE WHEN d.first < d.last THEN d.last ELSE hi END AS day_hi
        FROM (
            SELECT CASE WHEN date_bin('1 day', lo, timestamptz 'epoch') = lo THEN lo
                        ELSE date_bin('1 day', lo, timestamptz 'epoch') + interval '24 hours' END AS first,
                   date_bin('1 day', hi, timestamptz 'epoch') AS last
        ) d
    ) s
    CROSS JOIN LATERAL (
        SELECT * FROM kpi.kpi_sums WHERE grain = 900 AND bucket >= lo AND bucket < s.day_lo
        UNION ALL
        SELECT * FROM kpi.kpi_sums WHERE grain = 86400 AND bucket >= s.day_lo AND bucket < s.day_hi
        UNION ALL
        SELECT * FROM kpi.kpi_sums WHERE grain = 900 AND bucket >= s.day_hi AND bucket < hi
    ) r
$fn$;

-- How far behind the applier is: the rows waiting (for /readyz and the service's metrics).
CREATE OR REPLACE FUNCTION kpi.kpi_pending_changes() RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
    SELECT count(*) FROM kpi.kpi_changes
$fn$;

-- A trigger found disabled let writes past the log: the summaries are built anew (kpi_build).
DELETE FROM kpi.kpi_summary_state WHERE NOT kpi.kpi_capturing();

-- Statement-level, ALWAYS: bulk loads that run with session_replication_role = replica (the
-- seeder does) must log their changes too. Only ALTER TABLE ... DISABLE TRIGGER stops them,
-- and a logical-replication subscriber fires none (its apply process runs row triggers only):
-- afterwards, `SELECT kpi.kpi_rebuild()`. (An UPDATE of a column no KPI reads, a lead's status, is
-- logged too: PostgreSQL allows no column list on a trigger with transition tables, and the
-- applier finds nothing changed in that bucket.)
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['listings', 'leads', 'purchases'] LOOP
        EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER INSERT ON %I.%I REFERENCING NEW TABLE AS new_rows'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION kpi.%I()', 'kpi_' || t || '_insert', @sales_name@, t,
                       'kpi_' || t || '_inserted');
        EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER UPDATE ON %I.%I REFERENCING OLD TABLE AS old_rows'
                       ' NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION kpi.%I()',
                       'kpi_' || t || '_update', @sales_name@, t, 'kpi_' || t || '_updated');
        EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER DELETE ON %I.%I REFERENCING OLD TABLE AS old_rows'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION kpi.%I()', 'kpi_' || t || '_delete', @sales_name@, t,
                       'kpi_' || t || '_deleted');
        EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER TRUNCATE ON %I.%I'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION kpi.kpi_truncated()', 'kpi_' || t || '_truncate',
                       @sales_name@, t);
        EXECUTE format('ALTER TABLE %1$I.%2$I ENABLE ALWAYS TRIGGER %3$I, ENABLE ALWAYS TRIGGER %4$I,'
                       ' ENABLE ALWAYS TRIGGER %5$I, ENABLE ALWAYS TRIGGER %6$I', @sales_name@, t,
                       'kpi_' || t || '_insert', 'kpi_' || t || '_update', 'kpi_' || t || '_delete',
                       'kpi_' || t || '_truncate');
    END LOOP;
END
$$;
-- Made or enabled again just now, in this transaction, which holds the tables' locks: the
-- summaries (if still built, above) have seen every write up to here.
UPDATE kpi.kpi_summary_state SET triggers = kpi.kpi_trigger_state();

-- Built once per version of the functions above, by kpi_build() (kpi-service init-db runs it in
-- a transaction of its own after this file: the triggers are then already logging, and the
-- build's snapshot is later than their creation, so nothing falls between the two). Until then
-- kpi_source() says 'raw', and the service reads the raw rows.
DELETE FROM kpi.kpi_summary_state WHERE version NOT IN (4, 5, kpi.kpi_summary_version());

-- aged_days: KPI_AGED_DAYS, whose aged_inventory the summaries then count from buckets alone
-- (kpi.sql); with another one init-db counts long_listed and long_sold anew.
DROP FUNCTION IF EXISTS kpi.kpi_build();
CREATE OR REPLACE FUNCTION kpi.kpi_build(aged_days integer) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
DECLARE
    built kpi.kpi_summary_state := (SELECT s FROM kpi.kpi_summary_state s);
BEGIN
    PERFORM kpi.kpi_require_one_snapshot();
    IF NOT kpi.kpi_applier_lock() THEN
        RAISE EXCEPTION 'an applier is running' USING ERRCODE = 'lock_not_available',
            HINT = 'Try again in a new transaction.';
    END IF;
    IF built IS NULL THEN
        PERFORM kpi.kpi_rebuild(aged_days);
        RETURN;
    END IF;
    IF built.version = 4 THEN
        RAISE NOTICE 'kpi-service: upgrading the summaries: the buyers'' links by day';
        PERFORM kpi.kpi_count_links();
    END IF;
    IF built.version < 6 OR built.aged_days IS DISTINCT FROM kpi_build.aged_days THEN
        RAISE NOTICE 'kpi-service: upgrading the summaries: the long sales for aged_days %', aged_days;
        PERFORM kpi.kpi_count_long(aged_days);
    END IF;
    UPDATE kpi.kpi_summary_state SET version = kpi.kpi_summary_version();
END
$fn$;

-- The summaries built anew by the service itself where they stopped after a TRUNCATE, or after
-- an init-db whose build did not finish: when every trigger is there and enabled since the
-- summaries were last built, and every column the KPIs read is there (otherwise only init-db
-- can bring them back). Whether it built them. Called by the service's applier, with its
-- KPI_AGED_DAYS, in a REPEATABLE READ transaction of its own without a statement timeout.
CREATE OR REPLACE FUNCTION kpi.kpi_rebuild_if_needed(aged_days integer) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
BEGIN
    IF EXISTS (SELECT FROM kpi.kpi_summary_state) OR NOT kpi.kpi_capturing() OR cardinality(kpi.kpi_missing_columns()) > 0 THEN
        RETURN false;
    END IF;
    PERFORM kpi.kpi_build(aged_days);
    RETURN true;
END
$fn$;