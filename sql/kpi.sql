-- name: kpi_windows(starts, ends, as_ofs, aged_days)
-- The ten KPIs of the contract for a set of windows, one row per window in the order given.
-- Window i is [starts[i], ends[i]) with as-of instant as_ofs[i]; a NULL start or end leaves
-- that side open. /api/kpi passes one window and /api/kpi/history one per bucket, so the two
-- agree by construction. Sums and averages stay numeric until the final round(), which
-- rounds halves away from zero; an empty average is 0, never NULL.
--
-- Cost: every predicate is a range on an indexed instant (sargable), each table is read once
-- per window and only over the window's range (no scan of a whole table for a short window):
-- see sql/schema.sql for the index each part reads, and docs/design.md.
WITH windows AS (
    SELECT w.ord,
           coalesce(w.start_at, '-infinity') AS lo,
           coalesce(w.end_at, 'infinity') AS hi,
           w.as_of,
           w.as_of - make_interval(secs => :aged_days * 86400) AS aged_before
    FROM unnest(:starts::timestamptz[], :ends::timestamptz[], :as_ofs::timestamptz[])
         WITH ORDINALITY AS w (start_at, end_at, as_of, ord)
)
SELECT
    l.n AS total_listings,
    round(coalesce(l.price_sum / nullif(l.n, 0), 0), 2) AS average_price,
    round(coalesce(l.price_sum, 0), 2) AS total_value,
    round(coalesce(100.0 * l.scored / nullif(l.n, 0), 0), 2) AS scoring_rate,
    round(coalesce(l.score_sum / nullif(l.scored, 0), 0), 2) AS average_score,
    a_unsold.n + a_sold.n AS aged_inventory,
    round(coalesce(p.profit_sum / nullif(p.costed, 0), 0), 2) AS average_profit_per_unit,
    round(coalesce(p.lead_seconds / nullif(p.led * 86400, 0), 0), 2) AS lead_to_purchase_time,
    round(coalesce(100.0 * b.converted / nullif(b.leads, 0), 0), 2) AS conversion_rate,
    b.buyers AS active_buyers
FROM windows w
CROSS JOIN LATERAL (
    -- listings_listed_at_idx, index only.
    SELECT count(*) AS n, sum(price) AS price_sum, count(score) AS scored, sum(score) AS score_sum
    FROM listings
    WHERE listed_at >= w.lo AND listed_at < w.hi
) l
-- aged_inventory: in stock at as_of and listed more than aged_days 24-hour days before it;
-- the window's start does not limit it. Seconds, not days, so the session time zone cannot
-- shift it. "sold_at IS NULL OR sold_at > as_of" is split into its two disjoint halves so
-- that each is a range on a small partial index instead of a scan of every listing.
CROSS JOIN LATERAL (
    -- Never sold: the current stock (listings_unsold_idx).
    SELECT count(*) AS n
    FROM listings
    WHERE status <> 'withdrawn' AND sold_at IS NULL AND listed_at < w.aged_before
) a_unsold
CROSS JOIN LATERAL (
    -- Sold after as_of (listings_sold_at_idx): nothing for as_of = now, a range for the past.
    SELECT count(*) AS n
    FROM listings
    WHERE status <> 'withdrawn' AND sold_at IS NOT NULL AND sold_at > w.as_of AND listed_at < w.aged_before
) a_sold
CROSS JOIN LATERAL (
    -- purchases_purchased_at_idx, then the listing's cost and the lead's instant by key.
    SELECT count(li.acquisition_cost) AS costed,
           sum(p.sale_price - li.acquisition_cost) AS profit_sum,
           count(ld.id) AS led,
           sum(extract(epoch FROM p.purchased_at) - extract(epoch FROM ld.created_at)) AS lead_seconds
    FROM purchases p
    JOIN listings li ON li.id = p.listing_id
    LEFT JOIN leads ld ON ld.id = p.lead_id
    WHERE p.purchased_at >= w.lo AND p.purchased_at < w.hi
) p
CROSS JOIN LATERAL (
    -- Leads are read once for both conversion_rate and active_buyers: one pass over the
    -- window's leads and purchases, grouped by buyer (a hash, not a sort of a UNION).
    SELECT coalesce(sum(g.leads), 0) AS leads, coalesce(sum(g.converted), 0) AS converted, count(*) AS buyers
    FROM (
        SELECT e.buyer_id, sum(e.lead) AS leads, sum(e.converted) AS converted
        FROM (
            SELECT ld.buyer_id, 1 AS lead,
                   -- purchases_lead_id_key, index only: conversion is defined by purchases.lead_id.
                   CASE WHEN EXISTS (SELECT FROM purchases cp WHERE cp.lead_id = ld.id) THEN 1 ELSE 0 END
                       AS converted
            FROM leads ld
            WHERE ld.created_at >= w.lo AND ld.created_at < w.hi
            UNION ALL
            SELECT buyer_id, 0, 0
            FROM purchases
            WHERE purchased_at >= w.lo AND purchased_at < w.hi
        ) e
        GROUP BY e.buyer_id
    ) g
) b
ORDER BY w.ord;
