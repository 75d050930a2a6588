-- Pre-aggregated sums of the KPI service (docs/design.md): its own tables, kept
-- exact by statement-level triggers on the sales tables, in the same transaction as each change.
-- Applied after schema.sql by `kpi-service init-db`, as the tables' owner; safe to run again.
--
-- kpi_sums holds additive sums per bucket at two grains: 15 minutes (every UTC offset in use
-- is a multiple of it, so every window edge is a bucket edge) and the UTC day (so a long
-- window reads a few hundred rows). It is append-only for the triggers: a change inserts the
-- difference it makes (old rows subtracted, new rows added), so concurrent writers never
-- update the same row, and the service merges the rows of a bucket now and then
-- (kpi_compact). A bucket's value is the sum of its rows.
--
-- kpi_buyer_buckets holds, per buyer, each 15-minute bucket with a lead or purchase of that
-- buyer and the buyer's previous such bucket: active_buyers is not additive, and these rows
-- make it a sum plus a short correction (sql/kpi.sql).
--
-- kpi_purchase_facts holds what each purchase took from its listing and lead, so that any
-- change, in any statement shape, subtracts exactly what was added.

-- The functions below run as the owner with this search path (SET search_path FROM CURRENT):
-- the schema of the tables, then pg_temp last, so that a session's temporary tables can never
-- stand in for them.
SELECT set_config('search_path', quote_ident(current_schema()) || ', pg_temp', true);

CREATE TABLE IF NOT EXISTS kpi_sums (
    grain         integer NOT NULL CHECK (grain IN (900, 86400)),  -- seconds
    bucket        timestamptz NOT NULL,  -- start: a multiple of grain since the Unix epoch
    listings      bigint NOT NULL,       -- listings by listed_at
    price_sum     numeric NOT NULL,
    scored        bigint NOT NULL,
    score_sum     numeric NOT NULL,
    leads         bigint NOT NULL,       -- leads by created_at
    converted     bigint NOT NULL,       -- ... referenced by a purchase
    costed        bigint NOT NULL,       -- purchases by purchased_at whose listing has a cost
    profit_sum    numeric NOT NULL,
    led           bigint NOT NULL,       -- purchases by purchased_at that have a lead
    lead_seconds  numeric NOT NULL,
    buyer_buckets bigint NOT NULL,       -- kpi_buyer_buckets rows by bucket
    buyer_links   bigint NOT NULL        -- kpi_buyer_buckets rows by prev_bucket
);
CREATE INDEX IF NOT EXISTS kpi_sums_bucket_idx ON kpi_sums (grain, bucket);

CREATE TABLE IF NOT EXISTS kpi_buyer_buckets (
    buyer_id    bigint NOT NULL,
    bucket      timestamptz NOT NULL,
    prev_bucket timestamptz,  -- NULL for the buyer's first bucket
    PRIMARY KEY (buyer_id, bucket)
);
CREATE INDEX IF NOT EXISTS kpi_buyer_buckets_bucket_idx ON kpi_buyer_buckets (bucket) INCLUDE (prev_bucket);
CREATE INDEX IF NOT EXISTS kpi_buyer_buckets_prev_idx ON kpi_buyer_buckets (prev_bucket) INCLUDE (bucket);

-- What each purchase added to kpi_sums, with the values it took from its listing and lead, so
-- that a change subtracts exactly what was added, whatever else the same statement changed
-- (a purchase and its lead deleted together, a cascade).
CREATE TABLE IF NOT EXISTS kpi_purchase_facts (
    purchase_id     bigint PRIMARY KEY,
    listing_id      bigint NOT NULL,
    lead_id         bigint,
    purchased_at    timestamptz NOT NULL,
    sale_price      numeric NOT NULL,
    cost            numeric,      -- the listing's acquisition_cost
    lead_created_at timestamptz   -- NULL: no lead
);
CREATE INDEX IF NOT EXISTS kpi_purchase_facts_listing_idx ON kpi_purchase_facts (listing_id);
CREATE INDEX IF NOT EXISTS kpi_purchase_facts_lead_idx ON kpi_purchase_facts (lead_id);

-- Which version of the functions below built the rows; another version rebuilds them.
CREATE TABLE IF NOT EXISTS kpi_summary_state (version integer NOT NULL);

-- A buyer's buckets come from all of its leads and purchases: the recomputation looks them up.
CREATE INDEX IF NOT EXISTS leads_buyer_idx ON leads (buyer_id) INCLUDE (created_at);
CREATE INDEX IF NOT EXISTS purchases_buyer_idx ON purchases (buyer_id) INCLUDE (purchased_at);

DO $$
BEGIN
    CREATE TYPE kpi_delta AS (
        at            timestamptz,
        listings      bigint,
        price_sum     numeric,
        scored        bigint,
        score_sum     numeric,
        leads         bigint,
        converted     bigint,
        costed        bigint,
        profit_sum    numeric,
        led           bigint,
        lead_seconds  numeric,
        buyer_buckets bigint,
        buyer_links   bigint
    );
EXCEPTION
    WHEN duplicate_object THEN NULL;
END
$$;

-- Adds differences, each at the instant it belongs to, to both grains; nothing for a bucket
-- whose differences cancel out (an UPDATE of a column no KPI reads).
CREATE OR REPLACE FUNCTION kpi_apply(deltas kpi_delta[]) RETURNS void
LANGUAGE sql AS $fn$
    INSERT INTO kpi_sums (grain, bucket, listings, price_sum, scored, score_sum, leads, converted,
                          costed, profit_sum, led, lead_seconds, buyer_buckets, buyer_links)
    SELECT g.grain, date_bin(g.stride, d.at, timestamptz 'epoch'),
           sum(d.listings), sum(d.price_sum), sum(d.scored), sum(d.score_sum), sum(d.leads),
           sum(d.converted), sum(d.costed), sum(d.profit_sum), sum(d.led), sum(d.lead_seconds),
           sum(d.buyer_buckets), sum(d.buyer_links)
    FROM unnest(deltas) AS d
    CROSS JOIN (VALUES (900, interval '15 minutes'), (86400, interval '1 day')) AS g (grain, stride)
    GROUP BY 1, 2
    HAVING (sum(d.listings), sum(d.price_sum), sum(d.scored), sum(d.score_sum), sum(d.leads),
            sum(d.converted), sum(d.costed), sum(d.profit_sum), sum(d.led), sum(d.lead_seconds),
            sum(d.buyer_buckets), sum(d.buyer_links))
           <> (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
$fn$;

-- What buyer bucket rows add (sign 1) or take away (sign -1): the row in its bucket, the link
-- in its previous bucket. Counted per bucket first: a rebuild moves millions of rows.
CREATE OR REPLACE FUNCTION kpi_buyer_deltas(rows kpi_buyer_buckets[], sign integer) RETURNS kpi_delta[]
LANGUAGE sql AS $fn$
    SELECT coalesce(array_agg(ROW(g.at, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, sign * g.buckets, sign * g.links)::kpi_delta),
                    '{}')
    FROM (
        SELECT e.at, sum(e.bucket) AS buckets, sum(e.link) AS links
        FROM unnest(rows) AS r
        CROSS JOIN LATERAL (VALUES (r.bucket, 1, 0), (r.prev_bucket, 0, 1)) AS e (at, bucket, link)
        WHERE e.at IS NOT NULL
        GROUP BY e.at
    ) AS g
$fn$;

-- Replaces the kpi_buyer_buckets rows of these buyers by what their leads and purchases say now.
CREATE OR REPLACE FUNCTION kpi_buyers_refresh(ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    gone kpi_delta[];
    made kpi_delta[];
BEGIN
    IF cardinality(ids) = 0 THEN
        RETURN;
    END IF;
    -- Two transactions refreshing one buyer would each rebuild its rows from their own view;
    -- this lock makes the second wait and then read the first's rows. NO KEY UPDATE does not
    -- conflict with the KEY SHARE lock that inserting the buyer's leads and purchases takes.
    IF cardinality(ids) > 10000 THEN
        LOCK TABLE buyers IN EXCLUSIVE MODE;  -- a bulk change, as in kpi_purchases_refresh
    ELSE
        PERFORM FROM buyers WHERE id = ANY (ids) ORDER BY id FOR NO KEY UPDATE;
    END IF;
    -- Joins with unnest(ids), not "= ANY (ids)": a rebuild passes hundreds of thousands of ids,
    -- and the planner can hash a relation.
    WITH deleted AS (
        DELETE FROM kpi_buyer_buckets b USING unnest(ids) AS k (id) WHERE b.buyer_id = k.id RETURNING b.*
    )
    SELECT kpi_buyer_deltas(array_agg(d::kpi_buyer_buckets), -1) INTO gone FROM deleted d;

    WITH inserted AS (
        INSERT INTO kpi_buyer_buckets (buyer_id, bucket, prev_bucket)
        SELECT e.buyer_id, e.bucket, lag(e.bucket) OVER (PARTITION BY e.buyer_id ORDER BY e.bucket)
        FROM (
            SELECT buyer_id, date_bin('15 minutes', created_at, timestamptz 'epoch')
            FROM unnest(ids) AS k (id) JOIN leads ON buyer_id = k.id
            UNION
            SELECT buyer_id, date_bin('15 minutes', purchased_at, timestamptz 'epoch')
            FROM unnest(ids) AS k (id) JOIN purchases ON buyer_id = k.id
        ) AS e (buyer_id, bucket)
        RETURNING *
    )
    SELECT kpi_buyer_deltas(array_agg(i::kpi_buyer_buckets), 1) INTO made FROM inserted i;

    -- One call, so that the rows a buyer keeps cancel out instead of adding two rows each.
    PERFORM kpi_apply(gone || made);
END
$fn$;

-- The own buckets of changed listings: old rows subtracted, new rows added.
CREATE OR REPLACE FUNCTION kpi_listings_apply(olds listings[], news listings[]) RETURNS void
LANGUAGE sql AS $fn$
    SELECT kpi_apply(ARRAY(
        SELECT ROW(c.listed_at, c.sign, c.sign * c.price, c.sign * (c.score IS NOT NULL)::integer,
                   c.sign * coalesce(c.score, 0), 0, 0, 0, 0, 0, 0, 0, 0)::kpi_delta
        FROM (SELECT -1 AS sign, o.* FROM unnest(olds) AS o UNION ALL SELECT 1, n.* FROM unnest(news) AS n) AS c
    ))
$fn$;

-- The own buckets of changed leads (their conversion belongs to the purchase's facts).
CREATE OR REPLACE FUNCTION kpi_leads_apply(olds leads[], news leads[]) RETURNS void
LANGUAGE sql AS $fn$
    SELECT kpi_apply(ARRAY(
        SELECT ROW(c.created_at, 0, 0, 0, 0, c.sign, 0, 0, 0, 0, 0, 0, 0)::kpi_delta
        FROM (SELECT -1 AS sign, o.* FROM unnest(olds) AS o UNION ALL SELECT 1, n.* FROM unnest(news) AS n) AS c
    ))
$fn$;

-- What purchase facts add (sign 1) or take away (sign -1): profit and lead time in the
-- purchase's bucket, a conversion in its lead's. Counted per 15-minute bucket first: a
-- rebuild passes every purchase.
CREATE OR REPLACE FUNCTION kpi_fact_deltas(facts kpi_purchase_facts[], sign integer) RETURNS kpi_delta[]
LANGUAGE sql AS $fn$
    SELECT coalesce(array_agg(ROW(g.at, 0, 0, 0, 0, 0, sign * g.converted, sign * g.costed, sign * g.profit,
                                  sign * g.led, sign * g.seconds, 0, 0)::kpi_delta), '{}')
    FROM (
        SELECT date_bin('15 minutes', e.at, timestamptz 'epoch') AS at, sum(e.converted) AS converted,
               sum(e.costed) AS costed, sum(e.profit) AS profit,
               sum(e.led) AS led, sum(e.seconds) AS seconds
        FROM unnest(facts) AS f
        CROSS JOIN LATERAL (VALUES
            (f.purchased_at, 0, (f.cost IS NOT NULL)::integer, coalesce(f.sale_price - f.cost, 0),
             (f.lead_created_at IS NOT NULL)::integer,
             coalesce(extract(epoch FROM f.purchased_at) - extract(epoch FROM f.lead_created_at), 0)),
            (f.lead_created_at, 1, 0, 0, 0, 0)
        ) AS e (at, converted, costed, profit, led, seconds)
        WHERE e.at IS NOT NULL
        GROUP BY 1
    ) AS g
$fn$;

-- Replaces the facts of these purchases by what purchases, listings and leads say now.
--
-- Concurrency: the facts read a listing's cost and a lead's instant. Another transaction
-- changing those (or these purchases) holds a lock on that row until it commits; FOR SHARE waits
-- for it, so the statements after it read the committed value (READ COMMITTED: each statement
-- takes a new snapshot). In the other order, that transaction's own trigger waits for ours and
-- then sees our purchase. FOR UPDATE on the facts serializes two refreshes of one purchase.
CREATE OR REPLACE FUNCTION kpi_purchases_refresh(ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    gone kpi_delta[];
    made kpi_delta[];
BEGIN
    IF cardinality(ids) = 0 THEN
        RETURN;
    END IF;
    IF cardinality(ids) > 10000 THEN
        -- A bulk change (a load, a rebuild): the same waits as a table lock; a row lock each
        -- would cost minutes at a million rows.
        LOCK TABLE kpi_purchase_facts IN EXCLUSIVE MODE;
        LOCK TABLE listings, leads IN SHARE MODE;
    ELSE
        PERFORM FROM kpi_purchase_facts WHERE purchase_id = ANY (ids) ORDER BY purchase_id FOR UPDATE;
        PERFORM FROM purchases p JOIN listings li ON li.id = p.listing_id
        WHERE p.id = ANY (ids) ORDER BY li.id FOR SHARE OF li;
        PERFORM FROM purchases p JOIN leads ld ON ld.id = p.lead_id
        WHERE p.id = ANY (ids) ORDER BY ld.id FOR SHARE OF ld;
    END IF;

    WITH deleted AS (
        DELETE FROM kpi_purchase_facts f USING unnest(ids) AS k (id) WHERE f.purchase_id = k.id RETURNING f.*
    )
    SELECT kpi_fact_deltas(array_agg(d::kpi_purchase_facts), -1) INTO gone FROM deleted d;

    WITH inserted AS (
        INSERT INTO kpi_purchase_facts
        -- Lookups by key, not joins: a hash join on lead_id (NULL for a purchase without a
        -- lead, a fifth of them) cannot split that one value across batches and, in a rebuild,
        -- kept doubling its batches for minutes.
        SELECT p.id, p.listing_id, p.lead_id, p.purchased_at, p.sale_price,
               (SELECT li.acquisition_cost FROM listings li WHERE li.id = p.listing_id),
               (SELECT ld.created_at FROM leads ld WHERE ld.id = p.lead_id)
        FROM unnest(ids) AS k (id)
        JOIN purchases p ON p.id = k.id
        RETURNING *
    )
    SELECT kpi_fact_deltas(array_agg(i::kpi_purchase_facts), 1) INTO made FROM inserted i;

    PERFORM kpi_apply(gone || made);
END
$fn$;

-- A SQL text: the rows of `olds` and `news` (transition tables) that differ in `columns`.
CREATE OR REPLACE FUNCTION kpi_difference(columns text, olds text, news text) RETURNS text
LANGUAGE sql IMMUTABLE AS $fn$
    SELECT format('(SELECT %1$s FROM %2$s a EXCEPT ALL SELECT %1$s FROM %3$s b)'
                  ' UNION ALL (SELECT %1$s FROM %3$s c EXCEPT ALL SELECT %1$s FROM %2$s d)', columns, olds, news)
$fn$;

-- One function for the statement-level triggers of the three tables. It runs as its owner
-- (who applied this file), so the application's roles need no rights on the kpi_* tables.
-- Only what a statement changed is recomputed: a listing's cost or a lead's instant reaches
-- the purchases that use it, a lead's or purchase's buyer and instant reach that buyer's
-- buckets, and an UPDATE of other columns (a status) touches nothing else.
CREATE OR REPLACE FUNCTION kpi_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
DECLARE
    -- The transition tables as relations: an INSERT has no old rows, a DELETE no new ones.
    olds text := CASE WHEN TG_OP = 'INSERT' THEN '(SELECT * FROM new_rows LIMIT 0)' ELSE 'old_rows' END;
    news text := CASE WHEN TG_OP = 'DELETE' THEN '(SELECT * FROM old_rows LIMIT 0)' ELSE 'new_rows' END;
    instant text := CASE TG_TABLE_NAME WHEN 'leads' THEN 'created_at' ELSE 'purchased_at' END;
    ids bigint[];
BEGIN
    IF TG_TABLE_NAME = 'purchases' THEN
        EXECUTE format('SELECT ARRAY(SELECT DISTINCT id FROM (%s) x)', kpi_difference('*', olds, news)) INTO ids;
        PERFORM kpi_purchases_refresh(ids);
    ELSE
        EXECUTE format('SELECT kpi_%1$s_apply(ARRAY(SELECT o::%1$I FROM %2$s o), ARRAY(SELECT n::%1$I FROM %3$s n))',
                       TG_TABLE_NAME, olds, news);
        EXECUTE format('SELECT ARRAY(SELECT DISTINCT id FROM (%s) x)',
                       kpi_difference(CASE TG_TABLE_NAME WHEN 'leads' THEN 'id, created_at' ELSE 'id, acquisition_cost' END,
                                      olds, news))
        INTO ids;
        EXECUTE format('SELECT ARRAY(SELECT purchase_id FROM kpi_purchase_facts WHERE %1$I = ANY ($1)'
                       ' UNION SELECT id FROM purchases WHERE %1$I = ANY ($1))',
                       CASE TG_TABLE_NAME WHEN 'leads' THEN 'lead_id' ELSE 'listing_id' END)
        INTO ids USING ids;
        PERFORM kpi_purchases_refresh(ids);
    END IF;
    IF TG_TABLE_NAME <> 'listings' THEN
        EXECUTE format('SELECT ARRAY(SELECT DISTINCT buyer_id FROM (%s) x)',
                       kpi_difference(format('id, buyer_id, %I', instant), olds, news))
        INTO ids;
        PERFORM kpi_buyers_refresh(ids);
    END IF;
    RETURN NULL;
END
$fn$;

-- Everything again from the sales tables, through the same functions as the triggers.
CREATE OR REPLACE FUNCTION kpi_rebuild() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
BEGIN
    TRUNCATE kpi_sums, kpi_buyer_buckets, kpi_purchase_facts;
    PERFORM kpi_listings_apply('{}', ARRAY(SELECT l FROM listings l));
    PERFORM kpi_leads_apply('{}', ARRAY(SELECT l FROM leads l));
    PERFORM kpi_purchases_refresh(ARRAY(SELECT id FROM purchases));
    PERFORM kpi_buyers_refresh(ARRAY(SELECT buyer_id FROM leads UNION SELECT buyer_id FROM purchases));
    PERFORM kpi_compact();  -- one row per bucket instead of one per function above
END
$fn$;

CREATE OR REPLACE FUNCTION kpi_truncated() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
BEGIN
    PERFORM kpi_rebuild();
    RETURN NULL;
END
$fn$;

-- Merges the rows of each bucket into one (the sum is unchanged, so readers see the same
-- numbers before and after). Returns how many rows it removed; 0 when another session is at it.
CREATE OR REPLACE FUNCTION kpi_compact() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
DECLARE
    removed bigint;
BEGIN
    IF NOT pg_try_advisory_xact_lock(4946157313062342) THEN
        RETURN 0;
    END IF;
    WITH deleted AS (
        DELETE FROM kpi_sums s
        USING (SELECT grain, bucket FROM kpi_sums GROUP BY 1, 2 HAVING count(*) > 1) AS m
        WHERE s.grain = m.grain AND s.bucket = m.bucket
        RETURNING s.*
    ),
    merged AS (
        INSERT INTO kpi_sums
        SELECT grain, bucket, sum(listings), sum(price_sum), sum(scored), sum(score_sum), sum(leads),
               sum(converted), sum(costed), sum(profit_sum), sum(led), sum(lead_seconds),
               sum(buyer_buckets), sum(buyer_links)
        FROM deleted
        GROUP BY grain, bucket
        HAVING (sum(listings), sum(price_sum), sum(scored), sum(score_sum), sum(leads), sum(converted),
                sum(costed), sum(profit_sum), sum(led), sum(lead_seconds), sum(buyer_buckets), sum(buyer_links))
               <> (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM deleted) - (SELECT count(*) FROM merged) INTO removed;
    RETURN removed;
END
$fn$;

-- Functions are executable by everyone by default; these two run as the tables' owner.
-- sql/roles.sql grants kpi_compact to the service's role.
REVOKE EXECUTE ON FUNCTION kpi_rebuild(), kpi_compact() FROM PUBLIC;

-- Statement-level, ALWAYS: bulk loads that run with session_replication_role = replica (the
-- seeder does) must keep the sums too. Only ALTER TABLE ... DISABLE TRIGGER stops them, and a
-- logical-replication subscriber fires none (its apply process runs row triggers only):
-- afterwards, `SELECT kpi_rebuild()`.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['listings', 'leads', 'purchases'] LOOP
        EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER INSERT ON %I REFERENCING NEW TABLE AS new_rows'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION kpi_changed()', 'kpi_' || t || '_insert', t);
        EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER UPDATE ON %I REFERENCING OLD TABLE AS old_rows'
                       ' NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION kpi_changed()',
                       'kpi_' || t || '_update', t);
        EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER DELETE ON %I REFERENCING OLD TABLE AS old_rows'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION kpi_changed()', 'kpi_' || t || '_delete', t);
        EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER TRUNCATE ON %I'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION kpi_truncated()', 'kpi_' || t || '_truncate', t);
        EXECUTE format('ALTER TABLE %1$I ENABLE ALWAYS TRIGGER %2$I, ENABLE ALWAYS TRIGGER %3$I,'
                       ' ENABLE ALWAYS TRIGGER %4$I, ENABLE ALWAYS TRIGGER %5$I', t, 'kpi_' || t || '_insert',
                       'kpi_' || t || '_update', 'kpi_' || t || '_delete', 'kpi_' || t || '_truncate');
    END LOOP;
END
$$;

-- Built once per version of the functions above (the triggers keep them from then on).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM kpi_summary_state WHERE version = 3) THEN
        PERFORM kpi_rebuild();
        DELETE FROM kpi_summary_state;
        INSERT INTO kpi_summary_state VALUES (3);
    END IF;
END
$$;
