-- name: kpi_windows(starts, ends, as_ofs, aged_days)
-- The ten KPIs of the contract for a set of windows, one row per window in the order given.
-- Window i is [starts[i], ends[i]) with as-of instant as_ofs[i]; a NULL start or end leaves
-- that side open. /api/kpi passes one window and /api/kpi/history one per bucket, so the two
-- agree by construction. Sums and averages stay numeric until the final round(), which
-- rounds halves away from zero; an empty average is 0, never NULL.
WITH windows AS (
    SELECT w.ord,
           coalesce(w.start_at, '-infinity') AS lo,
           coalesce(w.end_at, 'infinity') AS hi,
           w.as_of
    FROM unnest(:starts::timestamptz[], :ends::timestamptz[], :as_ofs::timestamptz[])
         WITH ORDINALITY AS w (start_at, end_at, as_of, ord)
)
SELECT
    l.n AS total_listings,
    round(coalesce(l.price_sum / nullif(l.n, 0), 0), 2) AS average_price,
    round(coalesce(l.price_sum, 0), 2) AS total_value,
    round(coalesce(100.0 * l.scored / nullif(l.n, 0), 0), 2) AS scoring_rate,
    round(coalesce(l.score_sum / nullif(l.scored, 0), 0), 2) AS average_score,
    a.n AS aged_inventory,
    round(coalesce(p.profit_sum / nullif(p.costed, 0), 0), 2) AS average_profit_per_unit,
    round(coalesce(p.lead_seconds / nullif(p.led * 86400, 0), 0), 2) AS lead_to_purchase_time,
    round(coalesce(100.0 * c.converted / nullif(c.n, 0), 0), 2) AS conversion_rate,
    b.n AS active_buyers
FROM windows w
CROSS JOIN LATERAL (
    SELECT count(*) AS n, sum(price) AS price_sum, count(score) AS scored, sum(score) AS score_sum
    FROM listings
    WHERE listed_at >= w.lo AND listed_at < w.hi
) l
CROSS JOIN LATERAL (
    -- In stock at as_of and listed more than aged_days 24-hour days before it; the window's
    -- start does not limit it. Seconds, not days, so the session time zone cannot shift it.
    SELECT count(*) AS n
    FROM listings
    WHERE status <> 'withdrawn'
      AND listed_at < w.as_of - make_interval(secs => :aged_days * 86400)
      AND (sold_at IS NULL OR sold_at > w.as_of)
) a
CROSS JOIN LATERAL (
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
    SELECT count(*) AS n, count(p.id) AS converted
    FROM leads ld
    LEFT JOIN purchases p ON p.lead_id = ld.id
    WHERE ld.created_at >= w.lo AND ld.created_at < w.hi
) c
CROSS JOIN LATERAL (
    SELECT count(*) AS n
    FROM (
        SELECT buyer_id FROM leads WHERE created_at >= w.lo AND created_at < w.hi
        UNION
        SELECT buyer_id FROM purchases WHERE purchased_at >= w.lo AND purchased_at < w.hi
    ) u
) b
ORDER BY w.ord;
