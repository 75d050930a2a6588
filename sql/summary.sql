-- Pre-aggregated sums of the KPI service (docs/design.md), applied after schema.sql by
-- `kpi-service init-db`, as the tables' owner. Safe to run again.
--
-- The application's transactions pay for almost nothing here: a statement on listings, leads
-- or purchases appends the keys it touched to kpi_changes, one INSERT from its transition
-- table, with no read of another table and no lock but its new rows. The service's applier
-- (kpi_apply_changes, one session at a time across all instances) later turns those keys into
-- the dirty 15-minute buckets, buyers and listings, and RECOMPUTES them from the committed rows:
-- replaying the log twice, in another order, or after a crash half-way gives the same sums.
--
-- kpi_sums       per bucket at two UTC grains, 15 minutes (every UTC offset in use is a
--                multiple of it, so every window edge is a bucket edge) and the day (so a long
--                window reads a few hundred rows); the day row is the sum of its 15-minute rows.
-- kpi_buyer_buckets  per buyer, each 15-minute bucket with a lead or purchase of that buyer and
--                the buyer's previous such bucket: active_buyers is not additive, and these rows
--                make it a sum plus a short correction (sql/kpi.sql).
-- kpi_sales      the listings sold and not withdrawn, with both instants: aged_inventory's
--                sold part, on the service's own table and indexes.

-- The functions below run as the owner with this search path (SET search_path FROM CURRENT):
-- the schema of the tables, then pg_temp last, so that a session's temporary tables can never
-- stand in for them.
SELECT set_config('search_path', quote_ident(current_schema()) || ', pg_temp', true);

-- Version 3 kept the sums exact inside the application's transactions: drop its objects.
DO $$
BEGIN
    IF to_regclass('kpi_sums') IS NOT NULL
       AND NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass('kpi_sums') AND attname = 'unsold') THEN
        DROP FUNCTION IF EXISTS kpi_changed(), kpi_truncated() CASCADE;  -- and their triggers
        DROP TABLE IF EXISTS kpi_sums, kpi_buyer_buckets, kpi_purchase_facts, kpi_summary_state CASCADE;
        DROP FUNCTION IF EXISTS kpi_rebuild(), kpi_compact(), kpi_buyers_refresh(bigint[]),
            kpi_purchases_refresh(bigint[]), kpi_difference(text, text, text),
            kpi_listings_apply(listings[], listings[]), kpi_leads_apply(leads[], leads[]);
        DROP TYPE IF EXISTS kpi_delta CASCADE;
    END IF;
END
$$;

-- Tables the applier rewrites all the time: vacuumed (and their visibility maps kept, for
-- index-only scans) after a fixed number of changed rows, not a fraction of the table, and
-- with room on each page for HOT updates of kpi_sums.
CREATE TABLE IF NOT EXISTS kpi_sums (
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
    PRIMARY KEY (grain, bucket)
) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
        autovacuum_analyze_scale_factor = 0.05);

CREATE TABLE IF NOT EXISTS kpi_buyer_buckets (
    buyer_id    bigint NOT NULL,
    bucket      timestamptz NOT NULL,
    prev_bucket timestamptz,  -- NULL for the buyer's first bucket
    PRIMARY KEY (buyer_id, bucket)
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
        autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 20000,
        autovacuum_analyze_scale_factor = 0.05);
CREATE INDEX IF NOT EXISTS kpi_buyer_buckets_bucket_idx ON kpi_buyer_buckets (bucket) INCLUDE (prev_bucket);
CREATE INDEX IF NOT EXISTS kpi_buyer_buckets_prev_idx ON kpi_buyer_buckets (prev_bucket) INCLUDE (bucket);
-- The links inside a window of a day or less (a history's day, 25 hours on a DST day) are this
-- short: a few per day, where the links leaving the day are about every buyer active in it.
CREATE INDEX IF NOT EXISTS kpi_buyer_buckets_short_idx ON kpi_buyer_buckets (bucket) INCLUDE (prev_bucket)
    WHERE bucket - prev_bucket < interval '26 hours';

CREATE TABLE IF NOT EXISTS kpi_sales (
    listing_id bigint PRIMARY KEY,
    listed_at  timestamptz NOT NULL,
    sold_at    timestamptz NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
        autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 20000,
        autovacuum_analyze_scale_factor = 0.05);
CREATE INDEX IF NOT EXISTS kpi_sales_sold_at_idx ON kpi_sales (sold_at) INCLUDE (listed_at);
CREATE INDEX IF NOT EXISTS kpi_sales_listed_at_idx ON kpi_sales (listed_at) INCLUDE (sold_at);

-- The change log. No index, no key, no default: an insert into it is a heap append, and the
-- applier takes all of it at once. A row per changed row (old and new): its table ('l'
-- listings, 'd' leads, 'p' purchases), the instant that places it in a bucket, its id, and
-- what else the applier needs to find what it changed; 't' alone: a TRUNCATE.
CREATE TABLE IF NOT EXISTS kpi_changes (
    tbl      "char",
    at       timestamptz,
    id       bigint,
    buyer_id bigint,   -- leads, purchases
    lead_id  bigint,   -- purchases
    cost     numeric   -- listings: acquisition_cost
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
        autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 1000);

-- Which version of the functions below built the rows; another version rebuilds them.
CREATE TABLE IF NOT EXISTS kpi_summary_state (version integer NOT NULL);

-- The trigger functions: one INSERT per transition table, nothing else. They run as their owner
-- (who applied this file), so the application's roles need no rights on kpi_changes.
CREATE OR REPLACE FUNCTION kpi_listings_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        INSERT INTO kpi_changes (tbl, at, id, cost) SELECT 'l', listed_at, id, acquisition_cost FROM old_rows;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO kpi_changes (tbl, at, id, cost) SELECT 'l', listed_at, id, acquisition_cost FROM new_rows;
    END IF;
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION kpi_leads_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        INSERT INTO kpi_changes (tbl, at, id, buyer_id) SELECT 'd', created_at, id, buyer_id FROM old_rows;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO kpi_changes (tbl, at, id, buyer_id) SELECT 'd', created_at, id, buyer_id FROM new_rows;
    END IF;
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION kpi_purchases_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        INSERT INTO kpi_changes (tbl, at, id, buyer_id, lead_id)
        SELECT 'p', purchased_at, id, buyer_id, lead_id FROM old_rows;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO kpi_changes (tbl, at, id, buyer_id, lead_id)
        SELECT 'p', purchased_at, id, buyer_id, lead_id FROM new_rows;
    END IF;
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION kpi_truncated() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
BEGIN
    INSERT INTO kpi_changes (tbl) VALUES ('t');
    RETURN NULL;
END
$fn$;

-- Recomputes 15-minute buckets from the committed rows, each family of columns only where it
-- may have changed: the listings' columns for the buckets in `l`, the leads' in `d`, the
-- purchases' in `p`, the buyer counts (from kpi_buyer_buckets) in `y`; a bucket's other
-- columns keep their values. Then the day rows of the buckets that changed, from their
-- 15-minute rows. A rescored listing thus reads the 15 minutes of listings around it, nothing
-- more. The joins carry both the range and the bucket equality, so that the planner can probe
-- the instants' indexes for a few buckets and hash whole tables for a rebuild.
CREATE OR REPLACE FUNCTION kpi_recompute(l timestamptz[], d timestamptz[], p timestamptz[], y timestamptz[])
RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    fresh kpi_sums[];
    changed timestamptz[];
BEGIN
    WITH lb AS (SELECT DISTINCT u.bucket FROM unnest(l) AS u (bucket)),
    db AS (SELECT DISTINCT u.bucket FROM unnest(d) AS u (bucket)),
    pb AS (SELECT DISTINCT u.bucket FROM unnest(p) AS u (bucket)),
    yb AS (SELECT DISTINCT u.bucket FROM unnest(y) AS u (bucket)),
    ls AS (
        SELECT lb.bucket, count(x.id) AS listings, coalesce(sum(x.price), 0) AS price_sum,
               count(x.score) AS scored, coalesce(sum(x.score), 0) AS score_sum,
               count(x.id) FILTER (WHERE x.status <> 'withdrawn' AND x.sold_at IS NULL) AS unsold
        FROM lb
        LEFT JOIN listings x ON x.listed_at >= lb.bucket AND x.listed_at < lb.bucket + interval '15 minutes'
                            AND date_bin('15 minutes', x.listed_at, timestamptz 'epoch') = lb.bucket
        GROUP BY lb.bucket
    ),
    ds AS (
        SELECT db.bucket, count(x.id) AS leads, count(cp.id) AS converted
        FROM db
        LEFT JOIN leads x ON x.created_at >= db.bucket AND x.created_at < db.bucket + interval '15 minutes'
                         AND date_bin('15 minutes', x.created_at, timestamptz 'epoch') = db.bucket
        LEFT JOIN purchases cp ON cp.lead_id = x.id
        GROUP BY db.bucket
    ),
    ps AS (
        SELECT pb.bucket, count(li.acquisition_cost) AS costed,
               coalesce(sum(x.sale_price - li.acquisition_cost), 0) AS profit_sum, count(ld.id) AS led,
               coalesce(sum(extract(epoch FROM x.purchased_at) - extract(epoch FROM ld.created_at)), 0)
                   AS lead_seconds
        FROM pb
        LEFT JOIN purchases x ON x.purchased_at >= pb.bucket AND x.purchased_at < pb.bucket + interval '15 minutes'
                             AND date_bin('15 minutes', x.purchased_at, timestamptz 'epoch') = pb.bucket
        LEFT JOIN listings li ON li.id = x.listing_id
        LEFT JOIN leads ld ON ld.id = x.lead_id
        GROUP BY pb.bucket
    ),
    ys AS (
        SELECT yb.bucket,
               (SELECT count(*) FROM kpi_buyer_buckets x WHERE x.bucket = yb.bucket) AS buckets,
               (SELECT count(*) FROM kpi_buyer_buckets x WHERE x.prev_bucket = yb.bucket) AS links
        FROM yb
    )
    SELECT array_agg(ROW(
        900, b.bucket,
        coalesce(ls.listings, s.listings, 0), coalesce(ls.price_sum, s.price_sum, 0),
        coalesce(ls.scored, s.scored, 0), coalesce(ls.score_sum, s.score_sum, 0), coalesce(ls.unsold, s.unsold, 0),
        coalesce(ds.leads, s.leads, 0), coalesce(ds.converted, s.converted, 0),
        coalesce(ps.costed, s.costed, 0), coalesce(ps.profit_sum, s.profit_sum, 0), coalesce(ps.led, s.led, 0),
        coalesce(ps.lead_seconds, s.lead_seconds, 0),
        coalesce(ys.buckets, s.buyer_buckets, 0), coalesce(ys.links, s.buyer_links, 0)
    )::kpi_sums)
    INTO fresh
    FROM (SELECT bucket FROM lb UNION SELECT bucket FROM db UNION SELECT bucket FROM pb UNION SELECT bucket FROM yb) b
    LEFT JOIN kpi_sums s ON s.grain = 900 AND s.bucket = b.bucket
    LEFT JOIN ls ON ls.bucket = b.bucket
    LEFT JOIN ds ON ds.bucket = b.bucket
    LEFT JOIN ps ON ps.bucket = b.bucket
    LEFT JOIN ys ON ys.bucket = b.bucket;

    changed := kpi_store(fresh);
    PERFORM kpi_store(ARRAY(
        SELECT ROW(86400, d.day, coalesce(sum(s.listings), 0), coalesce(sum(s.price_sum), 0),
                   coalesce(sum(s.scored), 0), coalesce(sum(s.score_sum), 0), coalesce(sum(s.unsold), 0),
                   coalesce(sum(s.leads), 0), coalesce(sum(s.converted), 0), coalesce(sum(s.costed), 0),
                   coalesce(sum(s.profit_sum), 0), coalesce(sum(s.led), 0), coalesce(sum(s.lead_seconds), 0),
                   coalesce(sum(s.buyer_buckets), 0), coalesce(sum(s.buyer_links), 0))::kpi_sums
        FROM (SELECT DISTINCT date_bin('1 day', c, timestamptz 'epoch') FROM unnest(changed) AS c) AS d (day)
        LEFT JOIN kpi_sums s ON s.grain = 900 AND s.bucket >= d.day AND s.bucket < d.day + interval '1 day'
        GROUP BY d.day
    ));
END
$fn$;

-- Writes these rows of kpi_sums and returns the buckets that changed: a row whose counts are
-- all 0 has nothing in its bucket and is removed; a row equal to the stored one is left alone;
-- the others replace what was there (a HOT update: no indexed column changes).
CREATE OR REPLACE FUNCTION kpi_store(rows kpi_sums[]) RETURNS timestamptz[]
LANGUAGE sql AS $fn$
    WITH removed AS (
        DELETE FROM kpi_sums s
        USING unnest(rows) AS r
        WHERE s.grain = r.grain AND s.bucket = r.bucket
          AND (r.listings, r.leads, r.costed, r.led, r.buyer_buckets, r.buyer_links) = (0, 0, 0, 0, 0, 0)
        RETURNING s.bucket
    ),
    written AS (
        INSERT INTO kpi_sums
        SELECT * FROM unnest(rows) AS r
        WHERE (r.listings, r.leads, r.costed, r.led, r.buyer_buckets, r.buyer_links) <> (0, 0, 0, 0, 0, 0)
        ON CONFLICT (grain, bucket) DO UPDATE SET
            listings = excluded.listings, price_sum = excluded.price_sum, scored = excluded.scored,
            score_sum = excluded.score_sum, unsold = excluded.unsold, leads = excluded.leads,
            converted = excluded.converted, costed = excluded.costed, profit_sum = excluded.profit_sum,
            led = excluded.led, lead_seconds = excluded.lead_seconds, buyer_buckets = excluded.buyer_buckets,
            buyer_links = excluded.buyer_links
        WHERE kpi_sums IS DISTINCT FROM excluded
        RETURNING bucket
    )
    SELECT ARRAY(SELECT bucket FROM removed UNION ALL SELECT bucket FROM written)
$fn$;

-- The applier's lock, until the end of the transaction: taken (true), or, without waiting, taken
-- by another session (false). One applier, or rebuild, at a time across all instances.
CREATE OR REPLACE FUNCTION kpi_applier_lock(wait boolean) RETURNS boolean
LANGUAGE sql AS $fn$
    SELECT CASE WHEN wait THEN pg_advisory_xact_lock(4946157313062342) IS NOT NULL
                ELSE pg_try_advisory_xact_lock(4946157313062342) END
$fn$;

-- Everything again from the sales tables (init-db, a TRUNCATE of a sales table, a repair).
CREATE OR REPLACE FUNCTION kpi_rebuild() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
BEGIN
    PERFORM kpi_applier_lock(true);  -- an applier meanwhile would write what it computed
    TRUNCATE kpi_sums, kpi_buyer_buckets, kpi_sales;
    INSERT INTO kpi_sales
    SELECT id, listed_at, sold_at FROM listings WHERE status <> 'withdrawn' AND sold_at IS NOT NULL;
    INSERT INTO kpi_buyer_buckets (buyer_id, bucket, prev_bucket)
    SELECT e.buyer_id, e.bucket, lag(e.bucket) OVER (PARTITION BY e.buyer_id ORDER BY e.bucket)
    FROM (
        SELECT buyer_id, date_bin('15 minutes', created_at, timestamptz 'epoch') FROM leads
        UNION
        SELECT buyer_id, date_bin('15 minutes', purchased_at, timestamptz 'epoch') FROM purchases
    ) AS e (buyer_id, bucket);
    PERFORM kpi_recompute(
        ARRAY(SELECT DISTINCT date_bin('15 minutes', listed_at, timestamptz 'epoch') FROM listings),
        ARRAY(SELECT DISTINCT date_bin('15 minutes', created_at, timestamptz 'epoch') FROM leads),
        ARRAY(SELECT DISTINCT date_bin('15 minutes', purchased_at, timestamptz 'epoch') FROM purchases),
        ARRAY(SELECT DISTINCT bucket FROM kpi_buyer_buckets)  -- every link's prev_bucket is one too
    );
END
$fn$;

-- The sums of kpi_sums over [lo, hi), both 15-minute edges: the whole UTC days at day grain,
-- the 15-minute buckets before and after them (a window without a whole day: all at 15 minutes).
CREATE OR REPLACE FUNCTION kpi_range(lo timestamptz, hi timestamptz)
RETURNS TABLE (listings bigint, price_sum numeric, scored bigint, score_sum numeric, unsold bigint,
               leads bigint, converted bigint, costed bigint, profit_sum numeric, led bigint,
               lead_seconds numeric, buyer_buckets bigint, buyer_links bigint)
LANGUAGE sql STABLE AS $fn$
    SELECT coalesce(sum(r.listings), 0)::bigint, coalesce(sum(r.price_sum), 0), coalesce(sum(r.scored), 0)::bigint,
           coalesce(sum(r.score_sum), 0), coalesce(sum(r.unsold), 0)::bigint, coalesce(sum(r.leads), 0)::bigint,
           coalesce(sum(r.converted), 0)::bigint, coalesce(sum(r.costed), 0)::bigint, coalesce(sum(r.profit_sum), 0),
           coalesce(sum(r.led), 0)::bigint, coalesce(sum(r.lead_seconds), 0),
           coalesce(sum(r.buyer_buckets), 0)::bigint, coalesce(sum(r.buyer_links), 0)::bigint
    FROM (
        SELECT CASE WHEN d.first < d.last THEN d.first ELSE hi END AS day_lo,
               CASE WHEN d.first < d.last THEN d.last ELSE hi END AS day_hi
        FROM (
            SELECT CASE WHEN date_bin('1 day', lo, timestamptz 'epoch') = lo THEN lo
                        ELSE date_bin('1 day', lo, timestamptz 'epoch') + interval '1 day' END AS first,
                   date_bin('1 day', hi, timestamptz 'epoch') AS last
        ) d
    ) s
    CROSS JOIN LATERAL (
        SELECT * FROM kpi_sums WHERE grain = 900 AND bucket >= lo AND bucket < s.day_lo
        UNION ALL
        SELECT * FROM kpi_sums WHERE grain = 86400 AND bucket >= s.day_lo AND bucket < s.day_hi
        UNION ALL
        SELECT * FROM kpi_sums WHERE grain = 900 AND bucket >= s.day_hi AND bucket < hi
    ) r
$fn$;

-- The applier: takes up to max_rows rows of the change log and recomputes what they name, in the
-- caller's transaction. Returns how many rows it took; NULL when another session is applying
-- (one at a time: two would each write what they computed from their own snapshot, and the
-- older could land last), unless told to wait for it (a deploy script after a bulk load).
-- Taking the log rows and recomputing from a later snapshot is safe: a change committed in
-- between is read now and applied again with its own rows later. Everything is set-based per
-- bucket: a bucket with thousands of new leads is read once, not once per lead.
CREATE OR REPLACE FUNCTION kpi_apply_changes(max_rows integer DEFAULT 50000, wait boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
DECLARE
    changes kpi_changes[];
    listing_ids bigint[];
    buyer_ids bigint[];
    buyer_buckets timestamptz[];
BEGIN
    IF NOT kpi_applier_lock(wait) THEN
        RETURN NULL;
    END IF;
    WITH taken AS (
        DELETE FROM kpi_changes WHERE ctid = ANY (ARRAY(SELECT ctid FROM kpi_changes LIMIT max_rows))
        RETURNING *
    )
    SELECT coalesce(array_agg(t), '{}') INTO changes FROM taken t;
    IF cardinality(changes) = 0 THEN
        RETURN 0;
    END IF;
    IF EXISTS (SELECT FROM unnest(changes) c WHERE c.tbl = 't') THEN
        PERFORM kpi_rebuild();
        RETURN cardinality(changes);
    END IF;

    -- The sold listings of aged_inventory: only rows that differ are written (a rescore of a
    -- sold listing leaves kpi_sales alone).
    listing_ids := ARRAY(SELECT DISTINCT c.id FROM unnest(changes) c WHERE c.tbl = 'l');
    WITH wanted AS (
        SELECT li.id, li.listed_at, li.sold_at
        FROM unnest(listing_ids) AS k (id)
        JOIN listings li ON li.id = k.id
        WHERE li.status <> 'withdrawn' AND li.sold_at IS NOT NULL
    ),
    stale AS (
        SELECT s.* FROM unnest(listing_ids) AS k (id) JOIN kpi_sales s ON s.listing_id = k.id
        EXCEPT
        SELECT * FROM wanted
    ),
    removed AS (
        DELETE FROM kpi_sales s USING stale WHERE s.listing_id = stale.listing_id RETURNING s.listing_id
    )
    INSERT INTO kpi_sales
    SELECT w.* FROM wanted w
    WHERE NOT EXISTS (
        SELECT FROM kpi_sales s
        WHERE s.listing_id = w.id AND (s.listed_at, s.sold_at) = (w.listed_at, w.sold_at)
    )
    ON CONFLICT (listing_id) DO UPDATE SET listed_at = excluded.listed_at, sold_at = excluded.sold_at;

    -- The buyers' buckets: each (buyer, bucket) a change touched holds if a lead or purchase of
    -- that buyer is in that bucket now. Each bucket's rows are read once for all its buyers.
    WITH pairs AS (
        SELECT DISTINCT c.buyer_id, date_bin('15 minutes', c.at, timestamptz 'epoch') AS bucket
        FROM unnest(changes) c
        WHERE c.tbl IN ('d', 'p')
    ),
    active AS (
        SELECT x.buyer_id, b.bucket
        FROM (SELECT DISTINCT bucket FROM pairs) b
        JOIN leads x ON x.created_at >= b.bucket AND x.created_at < b.bucket + interval '15 minutes'
        UNION
        SELECT x.buyer_id, b.bucket
        FROM (SELECT DISTINCT bucket FROM pairs) b
        JOIN purchases x ON x.purchased_at >= b.bucket AND x.purchased_at < b.bucket + interval '15 minutes'
    ),
    truth AS (
        SELECT p.buyer_id, p.bucket, a.buyer_id IS NOT NULL AS holds
        FROM pairs p
        LEFT JOIN active a ON a.buyer_id = p.buyer_id AND a.bucket = p.bucket
    ),
    removed AS (
        DELETE FROM kpi_buyer_buckets b USING truth t
        WHERE NOT t.holds AND b.buyer_id = t.buyer_id AND b.bucket = t.bucket
        RETURNING b.buyer_id, b.bucket, b.prev_bucket
    ),
    added AS (
        INSERT INTO kpi_buyer_buckets (buyer_id, bucket)
        SELECT t.buyer_id, t.bucket FROM truth t WHERE t.holds
        ON CONFLICT DO NOTHING
        RETURNING buyer_id, bucket
    ),
    moved AS (
        SELECT buyer_id, bucket, prev_bucket FROM removed
        UNION ALL
        SELECT buyer_id, bucket, NULL FROM added
    )
    SELECT ARRAY(SELECT bucket FROM moved UNION SELECT prev_bucket FROM moved WHERE prev_bucket IS NOT NULL),
           ARRAY(SELECT DISTINCT buyer_id FROM moved)
    INTO buyer_buckets, buyer_ids;

    -- Their links to their previous bucket, where those changed (a statement of its own: the
    -- one above cannot see its own DELETE and INSERT).
    WITH linked AS (
        SELECT b.buyer_id, b.bucket, b.prev_bucket AS old_prev,
               lag(b.bucket) OVER (PARTITION BY b.buyer_id ORDER BY b.bucket) AS new_prev
        FROM unnest(buyer_ids) AS k (id)
        JOIN kpi_buyer_buckets b ON b.buyer_id = k.id
    ),
    relinked AS (
        UPDATE kpi_buyer_buckets b SET prev_bucket = l.new_prev
        FROM linked l
        WHERE b.buyer_id = l.buyer_id AND b.bucket = l.bucket AND l.old_prev IS DISTINCT FROM l.new_prev
        RETURNING l.old_prev, l.new_prev
    )
    SELECT buyer_buckets || ARRAY(SELECT old_prev FROM relinked UNION SELECT new_prev FROM relinked)
    INTO buyer_buckets;

    PERFORM kpi_recompute(
        -- The listings' columns: where a listing was or is.
        ARRAY(SELECT date_bin('15 minutes', c.at, timestamptz 'epoch') FROM unnest(changes) c WHERE c.tbl = 'l'),
        -- The leads' columns: where a lead was or is, and where the leads of logged purchases are
        -- (their conversion).
        ARRAY(
            SELECT date_bin('15 minutes', c.at, timestamptz 'epoch') FROM unnest(changes) c WHERE c.tbl = 'd'
            UNION
            SELECT date_bin('15 minutes', ld.created_at, timestamptz 'epoch')
            FROM (SELECT DISTINCT c.lead_id FROM unnest(changes) c WHERE c.tbl = 'p' AND c.lead_id IS NOT NULL) k
            JOIN leads ld ON ld.id = k.lead_id
        ),
        -- The purchases' columns: where a purchase was or is, and where the purchases are of a
        -- listing whose cost changed or a lead whose instant changed (an id logged once, or with
        -- two values: an insert, a delete, or an update of that value).
        ARRAY(
            SELECT date_bin('15 minutes', c.at, timestamptz 'epoch') FROM unnest(changes) c WHERE c.tbl = 'p'
            UNION
            SELECT date_bin('15 minutes', x.purchased_at, timestamptz 'epoch')
            FROM (
                SELECT c.id FROM unnest(changes) c WHERE c.tbl = 'l'
                GROUP BY c.id HAVING count(*) = 1 OR count(DISTINCT c.cost) + max((c.cost IS NULL)::integer) > 1
            ) k
            JOIN purchases x ON x.listing_id = k.id
            UNION
            SELECT date_bin('15 minutes', x.purchased_at, timestamptz 'epoch')
            FROM (
                SELECT c.id FROM unnest(changes) c WHERE c.tbl = 'd'
                GROUP BY c.id HAVING count(*) = 1 OR count(DISTINCT c.at) > 1
            ) k
            JOIN purchases x ON x.lead_id = k.id
        ),
        -- The buyer counts: where a buyer's bucket appeared or went, or a link moved.
        buyer_buckets
    );
    RETURN cardinality(changes);
END
$fn$;

-- How far behind the applier is: the rows waiting (for /readyz and the service's metrics).
CREATE OR REPLACE FUNCTION kpi_pending_changes() RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
    SELECT count(*) FROM kpi_changes
$fn$;

-- Statement-level, ALWAYS: bulk loads that run with session_replication_role = replica (the
-- seeder does) must log their changes too. Only ALTER TABLE ... DISABLE TRIGGER stops them,
-- and a logical-replication subscriber fires none (its apply process runs row triggers only):
-- afterwards, `SELECT kpi_rebuild()`. (An UPDATE of a column no KPI reads, a lead's status, is
-- logged too: PostgreSQL allows no column list on a trigger with transition tables, and the
-- applier finds nothing changed in that bucket.)
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['listings', 'leads', 'purchases'] LOOP
        EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER INSERT ON %I REFERENCING NEW TABLE AS new_rows'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION %I()', 'kpi_' || t || '_insert', t, 'kpi_' || t || '_changed');
        EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER UPDATE ON %I REFERENCING OLD TABLE AS old_rows'
                       ' NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION %I()',
                       'kpi_' || t || '_update', t, 'kpi_' || t || '_changed');
        EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER DELETE ON %I REFERENCING OLD TABLE AS old_rows'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION %I()', 'kpi_' || t || '_delete', t, 'kpi_' || t || '_changed');
        EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER TRUNCATE ON %I'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION kpi_truncated()', 'kpi_' || t || '_truncate', t);
        EXECUTE format('ALTER TABLE %1$I ENABLE ALWAYS TRIGGER %2$I, ENABLE ALWAYS TRIGGER %3$I,'
                       ' ENABLE ALWAYS TRIGGER %4$I, ENABLE ALWAYS TRIGGER %5$I', t, 'kpi_' || t || '_insert',
                       'kpi_' || t || '_update', 'kpi_' || t || '_delete', 'kpi_' || t || '_truncate');
    END LOOP;
END
$$;

-- Built once per version of the functions above, by kpi_build() (kpi-service init-db runs it in
-- a transaction of its own after this file: the triggers are then already logging, and the
-- build's snapshot is later than their creation, so nothing falls between the two). Until then
-- kpi_source() says 'raw', and the service reads the raw rows.
DELETE FROM kpi_summary_state WHERE version <> 4;

CREATE OR REPLACE FUNCTION kpi_build() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
BEGIN
    IF NOT EXISTS (SELECT FROM kpi_summary_state) THEN
        PERFORM kpi_rebuild();
        INSERT INTO kpi_summary_state VALUES (4);
    END IF;
END
$fn$;

-- Functions are executable by everyone by default; these run as the tables' owner. sql/roles.sql
-- grants the applier and the backlog count to the service's role.
REVOKE EXECUTE ON FUNCTION kpi_rebuild(), kpi_build(), kpi_apply_changes(integer, boolean), kpi_pending_changes()
    FROM PUBLIC;
