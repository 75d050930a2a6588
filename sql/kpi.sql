-- name: kpi_windows(starts, ends, as_ofs, aged_days)
-- The ten KPIs of the contract for a set of windows, one row per window in the order given.
-- Window i is [starts[i], ends[i]) with as-of instant as_ofs[i]; a NULL start or end leaves
-- that side open. /api/kpi passes one window and /api/kpi/history one per bucket, so the two
-- agree by construction. Sums and averages stay numeric until the final round(), which
-- rounds halves away from zero; an empty average is 0, never NULL.
--
-- A window whose edges are 15-minute edges (every window in a zone's standard time, which
-- is every window since local mean time ended) is summed from kpi_sums, kept exact by the
-- triggers of sql/summary.sql: its whole UTC days at day grain, the rest at 15 minutes, a few
-- hundred rows whatever the window. Other windows read the raw rows. Both give the same
-- numbers: docs/design.md, and the tests compare both with the reference.
WITH windows AS (
    SELECT w.ord,
           coalesce(w.start_at, '-infinity') AS lo,
           coalesce(w.end_at, 'infinity') AS hi,
           w.as_of,
           w.as_of - make_interval(secs => :aged_days * 86400) AS aged_before,
           date_bin('15 minutes', coalesce(w.start_at, '-infinity'), timestamptz 'epoch')
               = coalesce(w.start_at, '-infinity')
           AND date_bin('15 minutes', coalesce(w.end_at, 'infinity'), timestamptz 'epoch')
               = coalesce(w.end_at, 'infinity') AS aligned
    FROM unnest(:starts::timestamptz[], :ends::timestamptz[], :as_ofs::timestamptz[])
         WITH ORDINALITY AS w (start_at, end_at, as_of, ord)
),
-- The whole UTC days of an aligned window [lo, hi) are [day_lo, day_hi); a window without
-- one whole UTC day gets the empty [hi, hi), so that [lo, day_lo) is the whole window.
spans AS (
    SELECT w.ord, w.lo, w.hi,
           CASE WHEN d.first < d.last THEN d.first ELSE w.hi END AS day_lo,
           CASE WHEN d.first < d.last THEN d.last ELSE w.hi END AS day_hi
    FROM windows w
    CROSS JOIN LATERAL (
        SELECT CASE WHEN date_bin('1 day', w.lo, timestamptz 'epoch') = w.lo THEN w.lo
                    ELSE date_bin('1 day', w.lo, timestamptz 'epoch') + interval '1 day' END AS first,
               date_bin('1 day', w.hi, timestamptz 'epoch') AS last
    ) d
    WHERE w.aligned
),
summed AS (
    -- sum(bigint) is numeric: the two counts that are KPIs themselves go back to integers.
    SELECT s.ord, k.listings::bigint, k.price_sum, k.scored, k.score_sum, k.leads, k.converted, k.costed,
           k.profit_sum, k.led, k.lead_seconds,
           -- active_buyers: each active buyer has one run of consecutive buckets inside the
           -- window, so it is the buckets in the window, less the links between two of them
           -- (a link is counted at its earlier bucket: all links from inside the window, less
           -- those that leave it).
           (k.buyer_buckets - k.buyer_links + x.leaving)::bigint AS buyers
    FROM spans s
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(r.listings), 0) AS listings, coalesce(sum(r.price_sum), 0) AS price_sum,
               coalesce(sum(r.scored), 0) AS scored, coalesce(sum(r.score_sum), 0) AS score_sum,
               coalesce(sum(r.leads), 0) AS leads, coalesce(sum(r.converted), 0) AS converted,
               coalesce(sum(r.costed), 0) AS costed, coalesce(sum(r.profit_sum), 0) AS profit_sum,
               coalesce(sum(r.led), 0) AS led, coalesce(sum(r.lead_seconds), 0) AS lead_seconds,
               coalesce(sum(r.buyer_buckets), 0) AS buyer_buckets, coalesce(sum(r.buyer_links), 0) AS buyer_links
        FROM (
            SELECT * FROM kpi_sums WHERE grain = 900 AND bucket >= s.lo AND bucket < s.day_lo
            UNION ALL
            SELECT * FROM kpi_sums WHERE grain = 86400 AND bucket >= s.day_lo AND bucket < s.day_hi
            UNION ALL
            SELECT * FROM kpi_sums WHERE grain = 900 AND bucket >= s.day_hi AND bucket < s.hi
        ) r
    ) k
    CROSS JOIN LATERAL (
        -- Links that leave the window: from a bucket inside it to one at or after its end.
        -- Either index finds them; the one with fewer rows to read is, for evenly spread
        -- data, the later-bucket index when less time follows the window than it spans.
        SELECT CASE
            WHEN s.hi = 'infinity' THEN 0
            WHEN s.lo = '-infinity' OR s.hi - s.lo > statement_timestamp() - s.hi THEN (
                SELECT count(*) FROM kpi_buyer_buckets b  -- kpi_buyer_buckets_bucket_idx
                WHERE b.bucket >= s.hi AND tstzrange(s.lo, s.hi) @> b.prev_bucket)
            ELSE (
                SELECT count(*) FROM kpi_buyer_buckets b  -- kpi_buyer_buckets_prev_idx
                WHERE b.prev_bucket >= s.lo AND b.prev_bucket < s.hi AND b.bucket >= s.hi)
        END AS leaving
    ) x
),
-- The raw rows, for a window with an edge inside a 15-minute bucket.
raw AS (
    SELECT w.ord, l.listings, l.price_sum, l.scored, l.score_sum, b.leads, b.converted, p.costed,
           p.profit_sum, p.led, p.lead_seconds, b.buyers
    FROM windows w
    CROSS JOIN LATERAL (
        SELECT count(*) AS listings, coalesce(sum(price), 0) AS price_sum, count(score) AS scored,
               coalesce(sum(score), 0) AS score_sum
        FROM listings
        WHERE listed_at >= w.lo AND listed_at < w.hi
    ) l
    CROSS JOIN LATERAL (
        SELECT count(li.acquisition_cost) AS costed, coalesce(sum(p.sale_price - li.acquisition_cost), 0) AS profit_sum,
               count(ld.id) AS led,
               coalesce(sum(extract(epoch FROM p.purchased_at) - extract(epoch FROM ld.created_at)), 0) AS lead_seconds
        FROM purchases p
        JOIN listings li ON li.id = p.listing_id
        LEFT JOIN leads ld ON ld.id = p.lead_id
        WHERE p.purchased_at >= w.lo AND p.purchased_at < w.hi
    ) p
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(g.leads), 0) AS leads, coalesce(sum(g.converted), 0) AS converted, count(*) AS buyers
        FROM (
            SELECT e.buyer_id, sum(e.lead) AS leads, sum(e.converted) AS converted
            FROM (
                SELECT ld.buyer_id, 1 AS lead,
                       CASE WHEN EXISTS (SELECT FROM purchases cp WHERE cp.lead_id = ld.id) THEN 1 ELSE 0 END
                FROM leads ld
                WHERE ld.created_at >= w.lo AND ld.created_at < w.hi
                UNION ALL
                SELECT buyer_id, 0, 0
                FROM purchases
                WHERE purchased_at >= w.lo AND purchased_at < w.hi
            ) e (buyer_id, lead, converted)
            GROUP BY e.buyer_id
        ) g
    ) b
    WHERE NOT w.aligned
),
totals AS (
    SELECT * FROM summed
    UNION ALL
    SELECT * FROM raw
),
-- aged_inventory: in stock at as_of and listed more than aged_days 24-hour days before it,
-- whatever the window's start: count(listed_at < c, sold_at > as_of or NULL) over listings not
-- withdrawn, with c = as_of - aged_days (seconds, so the session time zone cannot shift it).
-- The window with the latest as_of counts directly: at as_of = now that is the current stock
-- plus nothing. Each earlier window (in as_of order) is the next one's count less what changed
-- between their instants, so a year of daily buckets reads that year's sales and listings once
-- instead of every later sale for each bucket:
--   count(c_i, T_i) = count(c_j, T_j) + sold in (T_i, T_j] and listed before c_i
--                                      - listed in [c_i, c_j) and not sold by T_j.
ordered AS (
    SELECT w.ord, w.as_of, w.aged_before,
           lead(w.as_of) OVER later AS next_as_of, lead(w.aged_before) OVER later AS next_before,
           row_number() OVER later AS position
    FROM windows w
    WINDOW later AS (ORDER BY w.as_of, w.ord)
),
aged_steps AS (
    SELECT o.ord, o.position,
        CASE WHEN o.next_as_of IS NULL THEN (
            -- Never sold (listings_unsold_idx), then sold after as_of (listings_sold_at_idx).
            SELECT count(*) FROM listings
            WHERE status <> 'withdrawn' AND sold_at IS NULL AND listed_at < o.aged_before
        ) + (
            -- (The range operator keeps the planner off listings_stock_idx, which would read
            -- every listing listed before c.)
            SELECT count(*) FROM listings
            WHERE status <> 'withdrawn' AND sold_at IS NOT NULL AND sold_at > o.as_of
              AND tstzrange(NULL, o.aged_before) @> listed_at
        )
        ELSE (
            SELECT count(*) FROM listings  -- listings_sold_at_idx
            WHERE status <> 'withdrawn' AND sold_at IS NOT NULL
              AND sold_at > o.as_of AND sold_at <= o.next_as_of AND listed_at < o.aged_before
        ) - (
            SELECT count(*) FROM listings  -- listings_stock_idx
            WHERE status <> 'withdrawn' AND listed_at >= o.aged_before AND listed_at < o.next_before
              AND (sold_at IS NULL OR sold_at > o.next_as_of)
        )
        END AS step
    FROM ordered o
),
aged AS (
    SELECT s.ord, sum(s.step) OVER (ORDER BY s.position DESC) AS n
    FROM aged_steps s
)
SELECT
    t.listings AS total_listings,
    round(coalesce(t.price_sum / nullif(t.listings, 0), 0), 2) AS average_price,
    round(t.price_sum, 2) AS total_value,
    round(coalesce(100.0 * t.scored / nullif(t.listings, 0), 0), 2) AS scoring_rate,
    round(coalesce(t.score_sum / nullif(t.scored, 0), 0), 2) AS average_score,
    aged.n::bigint AS aged_inventory,
    round(coalesce(t.profit_sum / nullif(t.costed, 0), 0), 2) AS average_profit_per_unit,
    round(coalesce(t.lead_seconds / nullif(t.led * 86400, 0), 0), 2) AS lead_to_purchase_time,
    round(coalesce(100.0 * t.converted / nullif(t.leads, 0), 0), 2) AS conversion_rate,
    t.buyers AS active_buyers
FROM totals t
JOIN aged ON aged.ord = t.ord
ORDER BY t.ord;
