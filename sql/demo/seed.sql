-- Demo data for the four sales tables, generated inside PostgreSQL (kpi-service seed).
--
-- Every random draw is a hash of (seed, stream, row key): the same parameters give the same
-- rows on any server, and no statement depends on the order in which rows are produced.
-- The history covers the two years (730 days) before :until. Rows get their ids in the order
-- of their own instant (listed_at, created_at, purchased_at), as the live application would
-- insert them. The statements run in one transaction, in the order of this file.
--
-- No percent signs in this file: aiosql passes it to psycopg as a format string.

-- name: prepare#
-- Helpers and the per-listing plan, all dropped at commit. The helpers are one-expression
-- SQL functions, which the planner inlines, so they cost nothing per row.
CREATE FUNCTION pg_temp.seed_u(seed bigint, stream integer, k bigint) RETURNS double precision
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    -- 53 bits of the 64-bit hash: a uniform double in [0, 1).
    RETURN (hashint8extended(k, hashint8extended(seed, stream)) & 9007199254740991)::double precision
           / 9007199254740992.0;

CREATE FUNCTION pg_temp.seed_normal(seed bigint, stream integer, k bigint) RETURNS double precision
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    -- Box-Muller; 1 - u keeps the logarithm finite.
    RETURN sqrt(-2 * ln(1 - pg_temp.seed_u(seed, stream, k)))
           * cos(2 * pi() * pg_temp.seed_u(seed, stream + 1, k));

-- A buyer who already exists at instant t (buyers sign up evenly over the history; see
-- insert_buyers), mostly a recent one: u cubed puts most picks close to the newest buyer.
CREATE FUNCTION pg_temp.seed_buyer(u double precision, newest bigint) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN newest - floor(u * u * u * newest)::bigint;

-- The newest of `buyers` buyers who exists at instant t.
-- STABLE, not IMMUTABLE: timestamptz arithmetic reads the session time zone (seed.py sets UTC).
CREATE FUNCTION pg_temp.seed_newest_buyer(t timestamptz, until timestamptz, buyers bigint) RETURNS bigint
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN least(buyers, 1 + floor(date_part('epoch', t - (until - interval '730 days'))
                                   / (730 * 86400) * buyers)::bigint);

CREATE TEMP TABLE seed_plan (
    id           bigint NOT NULL,
    listed_at    timestamptz NOT NULL,
    ends_at      timestamptz NOT NULL,  -- sale, withdrawal, or the end of the history
    status       text NOT NULL,
    make         text NOT NULL,
    model        text NOT NULL,
    year         integer NOT NULL,
    price        numeric(12, 2) NOT NULL,
    sold_at      timestamptz,
    leads        integer NOT NULL,      -- how many inquiries the listing gets
    converting   integer NOT NULL,      -- which of them became the sale (0: none)
    sale_price   numeric(12, 2),
    walk_in      bigint                 -- the buyer of a sale without a lead
) ON COMMIT DROP;

-- name: plan_listings(listings, seed, until)!
-- Arrivals grow linearly over the history (the rate doubles), so listing i sits at the
-- inverse of the cumulative arrival curve: t = sqrt(1 + 3x) - 1 of the 730 days, x in [0, 1).
-- A car is a model of the catalog, 0 to 20 years old (median 3), asking its new price less
-- 14 of every 100 per year, give or take, in whole hundreds less 10.
-- Each listing ends in a sale (82 of 100, lognormal time on market, median 30 days) or a
-- withdrawal (median 50 days); if that is after :until it is still in stock, and a sale due
-- within a week is already pending.
INSERT INTO seed_plan (id, make, model, year, price, listed_at, ends_at, status, sold_at, leads, converting,
                       sale_price, walk_in)
WITH catalog (n, make, model, new_price) AS (
    VALUES (0, 'Volkswagen', 'Golf', 32000), (1, 'Volkswagen', 'Polo', 24000), (2, 'Volkswagen', 'Passat', 42000),
           (3, 'Volkswagen', 'Tiguan', 45000), (4, 'Toyota', 'Corolla', 30000), (5, 'Toyota', 'Yaris', 22000),
           (6, 'Toyota', 'RAV4', 44000), (7, 'Ford', 'Focus', 27000), (8, 'Ford', 'Fiesta', 20000),
           (9, 'Ford', 'Kuga', 38000), (10, 'Opel', 'Corsa', 21000), (11, 'Opel', 'Astra', 28000),
           (12, 'BMW', '3 Series', 52000), (13, 'BMW', 'X1', 48000), (14, 'BMW', '5 Series', 68000),
           (15, 'Mercedes-Benz', 'A-Class', 40000), (16, 'Mercedes-Benz', 'C-Class', 55000),
           (17, 'Mercedes-Benz', 'E-Class', 72000), (18, 'Audi', 'A3', 38000), (19, 'Audi', 'A4', 50000),
           (20, 'Audi', 'Q5', 62000), (21, 'Skoda', 'Octavia', 31000), (22, 'Skoda', 'Fabia', 21000),
           (23, 'Renault', 'Clio', 20000), (24, 'Peugeot', '208', 22000), (25, 'Hyundai', 'Tucson', 36000),
           (26, 'Kia', 'Sportage', 35000), (27, 'Tesla', 'Model 3', 48000), (28, 'Fiat', '500', 18000),
           (29, 'Dacia', 'Sandero', 15000)
),
drawn AS (
    SELECT id,
           :until - interval '730 days'
           + make_interval(secs => 730 * 86400
               * (sqrt(1 + 3 * (id - 1 + pg_temp.seed_u(:seed, 1, id)) / :listings) - 1)) AS listed_at,
           floor(30 * pg_temp.seed_u(:seed, 2, id))::integer AS model,
           least(20, floor(-4.5 * ln(1 - pg_temp.seed_u(:seed, 3, id))))::integer AS age,
           pg_temp.seed_normal(:seed, 4, id) AS z_price,
           pg_temp.seed_u(:seed, 6, id) < 0.82 AS sells,
           pg_temp.seed_normal(:seed, 7, id) AS z_days,
           pg_temp.seed_u(:seed, 9, id) < 0.78 AS by_lead,
           floor(5 * pg_temp.seed_u(:seed, 10, id))::integer AS inquiries
    FROM generate_series(1, :listings::bigint) AS id
),
ended AS (
    SELECT d.*, c.make, c.model AS model_name,
           date_part('year', d.listed_at)::integer - d.age AS year,
           round(least(80000, greatest(3000, c.new_price * power(0.86, d.age) * exp(0.18 * d.z_price)))::numeric,
                 -2) - 10 AS price,
           d.listed_at + make_interval(secs => 86400 * CASE
               WHEN d.sells THEN least(400, greatest(0.125, exp(ln(30) + 0.75 * d.z_days)))
               ELSE least(400, greatest(1, exp(ln(50) + 0.7 * d.z_days))) END) AS ends_at
    FROM drawn d
    JOIN catalog c ON c.n = d.model
),
planned AS MATERIALIZED (
    SELECT e.*,
           CASE WHEN e.ends_at <= :until THEN CASE WHEN e.sells THEN 'sold' ELSE 'withdrawn' END
                WHEN e.sells AND e.ends_at <= :until + interval '7 days' THEN 'pending'
                ELSE 'active' END AS status,
           -- A sale through a lead needs at least one inquiry.
           CASE WHEN e.sells AND e.by_lead THEN greatest(1, e.inquiries) ELSE e.inquiries END AS leads
    FROM ended e
)
SELECT id, make, model_name, year, price, listed_at, least(ends_at, :until), status,
       CASE WHEN status = 'sold' THEN ends_at END,
       leads,
       CASE WHEN status = 'sold' AND by_lead THEN 1 + floor(leads * pg_temp.seed_u(:seed, 11, id))::integer
            ELSE 0 END,
       CASE WHEN status = 'sold' THEN round(price * (0.90 + 0.10 * pg_temp.seed_u(:seed, 12, id))::numeric, 2) END,
       CASE WHEN status = 'sold' AND NOT by_lead THEN
           pg_temp.seed_buyer(pg_temp.seed_u(:seed, 13, id),
                              pg_temp.seed_newest_buyer(ends_at, :until, ceil(:listings * 0.45)::bigint))
       END
FROM planned;

-- name: insert_listings(seed, until)!
INSERT INTO listings (id, make, model, year, price, acquisition_cost, status, listed_at, sold_at, score)
SELECT id, make, model, year, price,
       -- Usually known: the dealer paid 70 to 92 of every 100 asked.
       CASE WHEN pg_temp.seed_u(:seed, 20, id) >= 0.08
            THEN round((price * (0.70 + 0.22 * pg_temp.seed_u(:seed, 21, id)))::numeric, 2) END,
       status, listed_at, sold_at,
       -- Scoring runs after listing: nothing from the last six hours is scored, and 15 of 100 never are.
       CASE WHEN pg_temp.seed_u(:seed, 22, id) >= 0.15 AND listed_at < :until - interval '6 hours'
            THEN round(least(100, greatest(0, 62 + 17 * pg_temp.seed_normal(:seed, 23, id)))::numeric, 2) END
FROM seed_plan
ORDER BY id;

-- name: insert_buyers(listings, seed, until)!
-- Buyers sign up evenly over the history; buyer b exists from a moment inside its slot, so
-- seed_newest_buyer() never picks a buyer created after the lead or sale it is picked for.
INSERT INTO buyers (id, name, email, created_at)
SELECT b,
       first_name || ' ' || last_name,
       CASE WHEN pg_temp.seed_u(:seed, 42, b) >= 0.1
            THEN lower(first_name) || '.' || lower(last_name) || b || '@example.com' END,
       :until - interval '730 days'
       + make_interval(secs => 730 * 86400 * (b - 1 - 0.99 * pg_temp.seed_u(:seed, 43, b)) / buyers)
FROM (
    SELECT b, buyers,
           (ARRAY['Anna', 'Ben', 'Clara', 'David', 'Emma', 'Felix', 'Grace', 'Hugo', 'Ida', 'Jonas',
                  'Kim', 'Leon', 'Mia', 'Noah', 'Olivia', 'Paul', 'Rosa', 'Sam', 'Tara', 'Yusuf'])
               [1 + floor(20 * pg_temp.seed_u(:seed, 40, b))::integer] AS first_name,
           (ARRAY['Adams', 'Becker', 'Costa', 'Dubois', 'Evans', 'Fischer', 'Garcia', 'Hansen', 'Ivanova',
                  'Jensen', 'Kowalski', 'Larsen', 'Meyer', 'Nowak', 'Okafor', 'Petit', 'Rossi', 'Schmidt',
                  'Tanaka', 'Weber'])
               [1 + floor(20 * pg_temp.seed_u(:seed, 41, b))::integer] AS last_name
    FROM (SELECT ceil(:listings * 0.45)::bigint AS buyers) n
    CROSS JOIN generate_series(1, n.buyers) AS b
) named
ORDER BY b;

-- name: insert_leads(listings, seed, until)!
-- A listing's inquiries arrive while it is on the market, before its sale or withdrawal.
-- The converting one is the buyer's; the others are lost once the listing is gone or after
-- 45 days without an answer, and open otherwise. A few are general inquiries (no listing).
INSERT INTO leads (id, buyer_id, listing_id, created_at, status)
SELECT row_number() OVER (ORDER BY created_at, listing, n),
       pg_temp.seed_buyer(pg_temp.seed_u(:seed, 51, k),
                          pg_temp.seed_newest_buyer(created_at, :until, ceil(:listings * 0.45)::bigint)),
       CASE WHEN converted OR pg_temp.seed_u(:seed, 52, k) >= 0.03 THEN listing END,
       created_at,
       CASE WHEN converted THEN 'converted'
            WHEN status IN ('sold', 'withdrawn') OR created_at < :until - interval '45 days' THEN 'lost'
            ELSE 'open' END
FROM (
    SELECT p.id AS listing, n, p.status, p.id * 8 + n AS k,  -- n is at most 4
           n = p.converting AS converted,
           -- 0.999: strictly before the end even after rounding to microseconds.
           p.listed_at + (p.ends_at - p.listed_at) * (0.999 * pg_temp.seed_u(:seed, 50, p.id * 8 + n)) AS created_at
    FROM seed_plan p
    CROSS JOIN LATERAL generate_series(1, p.leads) AS n
) drawn
ORDER BY created_at, listing, n;

-- name: insert_purchases()!
-- One purchase per sold listing, at its sold_at, by the converting lead's buyer or a walk-in.
INSERT INTO purchases (id, listing_id, buyer_id, lead_id, sale_price, purchased_at)
SELECT row_number() OVER (ORDER BY p.sold_at, p.id),
       p.id, coalesce(ld.buyer_id, p.walk_in), ld.id, p.sale_price, p.sold_at
FROM seed_plan p
LEFT JOIN leads ld ON ld.listing_id = p.id AND ld.status = 'converted'
WHERE p.status = 'sold'
ORDER BY p.sold_at, p.id;

-- name: reset_sequences#
-- Later inserts by the application continue after the seeded ids.
SELECT setval(pg_get_serial_sequence('buyers', 'id'), coalesce(max(id), 0) + 1, false) FROM buyers;
SELECT setval(pg_get_serial_sequence('listings', 'id'), coalesce(max(id), 0) + 1, false) FROM listings;
SELECT setval(pg_get_serial_sequence('leads', 'id'), coalesce(max(id), 0) + 1, false) FROM leads;
SELECT setval(pg_get_serial_sequence('purchases', 'id'), coalesce(max(id), 0) + 1, false) FROM purchases;

-- name: has_rows()$
SELECT EXISTS (SELECT FROM buyers) OR EXISTS (SELECT FROM listings)
       OR EXISTS (SELECT FROM leads) OR EXISTS (SELECT FROM purchases);

-- name: row_counts()^
SELECT (SELECT count(*) FROM buyers) AS buyers,
       (SELECT count(*) FROM listings) AS listings,
       (SELECT count(*) FROM leads) AS leads,
       (SELECT count(*) FROM purchases) AS purchases;

-- name: dangling_references()$
-- Foreign keys the seeded rows would break; the seeder checks them itself when it could skip
-- the per-row constraint triggers (one anti-join per key instead of one lookup per row).
SELECT (SELECT count(*) FROM leads ld WHERE NOT EXISTS (SELECT FROM buyers b WHERE b.id = ld.buyer_id))
     + (SELECT count(*) FROM leads ld
        WHERE ld.listing_id IS NOT NULL AND NOT EXISTS (SELECT FROM listings l WHERE l.id = ld.listing_id))
     + (SELECT count(*) FROM purchases p WHERE NOT EXISTS (SELECT FROM listings l WHERE l.id = p.listing_id))
     + (SELECT count(*) FROM purchases p WHERE NOT EXISTS (SELECT FROM buyers b WHERE b.id = p.buyer_id))
     + (SELECT count(*) FROM purchases p
        WHERE p.lead_id IS NOT NULL AND NOT EXISTS (SELECT FROM leads ld WHERE ld.id = p.lead_id));
