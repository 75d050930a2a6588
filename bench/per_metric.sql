-- Baseline (a) of bench/kpi_scale.py: one simple query per metric, ten round trips per window,
-- as a client asking for each KPI on its own would do. Same definitions as sql/runtime/kpi.sql;
-- :lo and :hi are the window (NULL: open side), :as_of its as-of instant.

-- name: total_listings(lo, hi)$
SELECT count(*) FROM listings
WHERE listed_at >= coalesce(:lo, '-infinity'::timestamptz) AND listed_at < coalesce(:hi, 'infinity'::timestamptz);

-- name: average_price(lo, hi)$
SELECT round(coalesce(avg(price), 0), 2) FROM listings
WHERE listed_at >= coalesce(:lo, '-infinity'::timestamptz) AND listed_at < coalesce(:hi, 'infinity'::timestamptz);

-- name: total_value(lo, hi)$
SELECT round(coalesce(sum(price), 0), 2) FROM listings
WHERE listed_at >= coalesce(:lo, '-infinity'::timestamptz) AND listed_at < coalesce(:hi, 'infinity'::timestamptz);

-- name: scoring_rate(lo, hi)$
SELECT round(coalesce(100.0 * count(score) / nullif(count(*), 0), 0), 2) FROM listings
WHERE listed_at >= coalesce(:lo, '-infinity'::timestamptz) AND listed_at < coalesce(:hi, 'infinity'::timestamptz);

-- name: average_score(lo, hi)$
SELECT round(coalesce(avg(score), 0), 2) FROM listings
WHERE listed_at >= coalesce(:lo, '-infinity'::timestamptz) AND listed_at < coalesce(:hi, 'infinity'::timestamptz);

-- name: aged_inventory(as_of, aged_days)$
SELECT count(*) FROM listings
WHERE status <> 'withdrawn' AND listed_at < :as_of - make_interval(secs => :aged_days * 86400)
  AND (sold_at IS NULL OR sold_at > :as_of);

-- name: average_profit_per_unit(lo, hi)$
SELECT round(coalesce(avg(p.sale_price - l.acquisition_cost), 0), 2)
FROM purchases p JOIN listings l ON l.id = p.listing_id
WHERE p.purchased_at >= coalesce(:lo, '-infinity'::timestamptz) AND p.purchased_at < coalesce(:hi, 'infinity'::timestamptz);

-- name: lead_to_purchase_time(lo, hi)$
SELECT round(coalesce(sum(extract(epoch FROM p.purchased_at) - extract(epoch FROM ld.created_at))
                      / nullif(count(*) * 86400, 0), 0), 2)
FROM purchases p JOIN leads ld ON ld.id = p.lead_id
WHERE p.purchased_at >= coalesce(:lo, '-infinity'::timestamptz) AND p.purchased_at < coalesce(:hi, 'infinity'::timestamptz);

-- name: conversion_rate(lo, hi)$
SELECT round(coalesce(100.0 * count(p.id) / nullif(count(*), 0), 0), 2)
FROM leads ld LEFT JOIN purchases p ON p.lead_id = ld.id
WHERE ld.created_at >= coalesce(:lo, '-infinity'::timestamptz) AND ld.created_at < coalesce(:hi, 'infinity'::timestamptz);

-- name: active_buyers(lo, hi)$
SELECT count(*) FROM (
    SELECT buyer_id FROM leads
    WHERE created_at >= coalesce(:lo, '-infinity'::timestamptz) AND created_at < coalesce(:hi, 'infinity'::timestamptz)
    UNION
    SELECT buyer_id FROM purchases
    WHERE purchased_at >= coalesce(:lo, '-infinity'::timestamptz) AND purchased_at < coalesce(:hi, 'infinity'::timestamptz)
) u;
