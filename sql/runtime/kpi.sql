-- name: kpi_windows(starts, ends, as_ofs, aged_days)
-- The ten KPIs of docs/kpis.md for a set of windows, one row per window in the order given,
-- from the summaries of sql/schema/summary.sql. Window i is [starts[i], ends[i]) with as-of instant
-- as_ofs[i]; a NULL start or end leaves that side open. /api/kpi passes one window and
-- /api/kpi/history one per bucket, so the two agree by construction.
--
-- A window whose edges are 15-minute edges (every window in a zone's standard time, which is
-- every window since local mean time ended) is summed from kpi_sums: its whole UTC days at day
-- grain, the rest at 15 minutes (kpi_range), a few hundred rows whatever the window. Other
-- windows read the raw rows (kpi_raw). Both give the same numbers: docs/design.md, and the
-- tests compare both with the reference.
WITH windows AS (
    SELECT w.ord, e.lo, e.hi, w.as_of, e.aged_before,
           -- The whole UTC days inside the window, for active_buyers (below).
           CASE WHEN w.start_at IS NULL THEN NULL
                WHEN date_bin('1 day', w.start_at, timestamptz 'epoch') = w.start_at THEN w.start_at
                ELSE date_bin('1 day', w.start_at, timestamptz 'epoch') + interval '24 hours' END AS first_day,
           CASE WHEN w.end_at IS NOT NULL THEN date_bin('1 day', w.end_at, timestamptz 'epoch') END AS last_day,
           date_bin('15 minutes', e.lo, timestamptz 'epoch') = e.lo
           AND date_bin('15 minutes', e.hi, timestamptz 'epoch') = e.hi AS aligned,
           -- aged_inventory counts below this 15-minute edge from the summaries, and the
           -- listings in [aged_edge, aged_before) from the raw rows.
           date_bin('15 minutes', e.aged_before, timestamptz 'epoch') AS aged_edge,
           -- With as_of a 15-minute edge (then so is aged_before) and the aged_days the summaries
           -- count long sales for, aged_inventory is sums of buckets alone (aged_steps).
           date_bin('15 minutes', w.as_of, timestamptz 'epoch') = w.as_of
           AND coalesce((SELECT s.aged_days = :aged_days FROM kpi.kpi_summary_state s), false) AS aged_bucketed
    FROM unnest(:starts::timestamptz[], :ends::timestamptz[], :as_ofs::timestamptz[])
         WITH ORDINALITY AS w (start_at, end_at, as_of, ord)
    CROSS JOIN LATERAL (
        -- aged_days in seconds, so that the session time zone cannot shift it.
        SELECT coalesce(w.start_at, '-infinity') AS lo, coalesce(w.end_at, 'infinity') AS hi,
               w.as_of - make_interval(secs => :aged_days * 86400) AS aged_before
    ) e
),
summed AS (
    SELECT w.ord, w.as_of, w.aged_edge, w.aged_before, true AS aligned, k.listings, k.price_sum, k.scored, k.score_sum, k.leads, k.converted, k.costed,
           k.profit_sum, k.led, k.lead_seconds,
           -- active_buyers: each active buyer has one run of consecutive buckets inside the
           -- window, so it is the buckets in the window, less the links between two of them
           -- (a link is counted at its earlier bucket: all links from inside the window, less
           -- those that leave it).
           k.buyer_buckets - k.buyer_links + x.leaving AS buyers
    FROM windows w
    CROSS JOIN LATERAL kpi.kpi_range(w.lo, w.hi) k
    CROSS JOIN LATERAL (
        -- The buyers' buckets after the window: how many rows the later-bucket index would read.
        SELECT CASE WHEN w.lo > '-infinity' AND w.hi < 'infinity' AND w.hi - w.lo > interval '26 hours'
                    THEN (SELECT r.buyer_buckets FROM kpi.kpi_range(w.hi, 'infinity'::timestamptz) r) END AS after
    ) a
    CROSS JOIN LATERAL (
        -- Links that leave the window: from a bucket inside it to one at or after its end, that
        -- is the links from inside it less those inside it. A window of a day or less (a
        -- history's day) counts the links inside it, which are short: the few in
        -- kpi_buyer_buckets_near_idx, not every buyer active that day. A longer one with
        -- whole UTC days [first_day, last_day) counts those inside its whole days from
        -- kpi_buyer_days, day by day the gaps that stay inside (n(n+1)/2 rows at most), and
        -- those from or to its partial days at the edges from kpi_buyer_buckets: the rows
        -- whose previous bucket is in the head [lo, first_day), and the rows in the tail
        -- [last_day, hi) whose previous bucket is in the window's whole days or tail. That
        -- is taken where it reads fewer rows than an index of kpi_buyer_buckets would (a long
        -- window with little after it, the last 365 days, leaves few links); otherwise the
        -- index with fewer rows to read finds the leaving links: the later-bucket one reads
        -- the buckets after the window, the previous-bucket one the links from inside it.
        -- (CASE, not OR: it fixes the order, and an infinite edge cannot be subtracted.)
        SELECT CASE
            WHEN w.hi = 'infinity' THEN 0
            WHEN w.lo = '-infinity' THEN (
                SELECT count(*) FROM kpi.kpi_buyer_buckets b  -- kpi_buyer_buckets_bucket_idx
                WHERE b.bucket >= w.hi AND b.prev_bucket < w.hi)
            WHEN w.hi - w.lo <= interval '26 hours' THEN k.buyer_links - (
                SELECT count(*) FROM kpi.kpi_buyer_buckets b  -- kpi_buyer_buckets_near_idx
                WHERE CASE WHEN isfinite(b.bucket) AND isfinite(b.prev_bucket)
                           THEN b.bucket - b.prev_bucket < interval '26 hours' END
                  AND b.bucket >= w.lo AND b.bucket < w.hi AND b.prev_bucket >= w.lo)
            WHEN w.first_day < w.last_day
                 AND (extract(epoch FROM w.last_day - w.first_day) / 86400) ^ 2 / 2 < least(k.buyer_links, a.after)
            THEN k.buyer_links - (
                SELECT coalesce(sum(x.n), 0)::bigint
                FROM generate_series(w.first_day, w.last_day - interval '24 hours', interval '24 hours') AS g (day)
                CROSS JOIN LATERAL (
                    SELECT sum(d.n) AS n FROM kpi.kpi_buyer_days d  -- its key
                    WHERE d.day = g.day AND d.gap <= extract(epoch FROM g.day - w.first_day)::integer / 86400
                ) x
            ) - (
                SELECT count(*) FROM kpi.kpi_buyer_buckets b  -- kpi_buyer_buckets_prev_idx
                WHERE b.prev_bucket >= w.lo AND b.prev_bucket < w.first_day AND b.bucket < w.hi
            ) - (
                SELECT count(*) FROM kpi.kpi_buyer_buckets b  -- kpi_buyer_buckets_bucket_idx
                WHERE b.bucket >= w.last_day AND b.bucket < w.hi AND b.prev_bucket >= w.first_day
            )
            WHEN a.after < k.buyer_links THEN (
                SELECT count(*) FROM kpi.kpi_buyer_buckets b  -- kpi_buyer_buckets_bucket_idx
                WHERE b.bucket >= w.hi AND tstzrange(w.lo, w.hi) @> b.prev_bucket)
            ELSE (
                SELECT count(*) FROM kpi.kpi_buyer_buckets b  -- kpi_buyer_buckets_prev_idx
                WHERE b.prev_bucket >= w.lo AND b.prev_bucket < w.hi AND b.bucket >= w.hi)
        END AS leaving
    ) x
    WHERE w.aligned
),
totals AS (
    SELECT * FROM summed
    UNION ALL
    SELECT w.ord, w.as_of, w.aged_edge, w.aged_before, false, r.*
    FROM windows w
    CROSS JOIN LATERAL kpi.kpi_raw(w.lo, w.hi) r
    WHERE NOT w.aligned
),
-- aged_inventory: in stock at as_of and listed more than aged_days 24-hour days before it,
-- whatever the window's start. Below the window's aged_edge b, that is the listings never sold
-- (kpi_sums.unsold, by listing bucket) plus those sold after as_of (kpi_sales): neither costs
-- time in proportion to the stock. The window with the latest as_of counts directly; each
-- earlier one (in as_of order) is the next one's count less what changed between them, so a
-- year of daily buckets reads that year's sales once instead of every later sale per bucket:
--   count(b_i, T_i) = count(b_j, T_j) - unsold listed in [b_i, b_j)
--                     + sold in (T_i, T_j] and listed before b_i
--                     - sold after T_j and listed in [b_i, b_j).
-- A window that is aged_bucketed (b = as_of - aged_days, both 15-minute edges) counts from
-- buckets alone, reading no sale: unsold + long_listed below b - long_sold below as_of
-- (kpi_long_sale in sql/schema/summary.sql), and a step between two such windows is the
-- difference of those sums, two bucket ranges (a daily history's days, whose edges are
-- 15-minute edges in every zone in use). Other windows (as_of now, another aged_days) and
-- steps to or from one take the sales.
-- (The range operators keep the planner on the index named beside each count: it cannot know
-- which condition is selective, and the other index would read every sale.)
ordered AS (
    SELECT w.ord, w.as_of, w.aged_edge, w.aged_bucketed,
           lead(w.as_of) OVER later AS next_as_of, lead(w.aged_edge) OVER later AS next_edge,
           lead(w.aged_bucketed) OVER later AS next_bucketed,
           row_number() OVER later AS position
    FROM windows w
    WINDOW later AS (ORDER BY w.as_of, w.ord)
),
aged_steps AS (
    SELECT o.ord, o.position,
        CASE WHEN o.next_as_of IS NULL AND o.aged_bucketed THEN (
            SELECT unsold + long_listed FROM kpi.kpi_range('-infinity'::timestamptz, o.aged_edge)
        ) - (
            SELECT long_sold FROM kpi.kpi_range('-infinity'::timestamptz, o.as_of)
        )
        WHEN o.next_as_of IS NULL THEN (
            SELECT unsold FROM kpi.kpi_range('-infinity'::timestamptz, o.aged_edge)
        ) + (
            SELECT coalesce(sum(n), 0) FROM kpi.kpi_sales  -- kpi_sales_sold_at_idx: at as_of = now, about none
            WHERE sold_at > o.as_of AND tstzrange(NULL, o.aged_edge) @> listed_at
        )
        WHEN o.aged_bucketed AND o.next_bucketed THEN (
            SELECT -unsold - long_listed FROM kpi.kpi_range(o.aged_edge, o.next_edge)
        ) + (
            SELECT long_sold FROM kpi.kpi_range(o.as_of, o.next_as_of)
        )
        ELSE (
            SELECT -unsold FROM kpi.kpi_range(o.aged_edge, o.next_edge)
        ) + (
            SELECT coalesce(sum(n), 0) FROM kpi.kpi_sales  -- kpi_sales_sold_at_idx
            WHERE sold_at > o.as_of AND sold_at <= o.next_as_of AND tstzrange(NULL, o.aged_edge) @> listed_at
        ) - (
            SELECT coalesce(sum(n), 0) FROM kpi.kpi_sales  -- kpi_sales_listed_at_idx
            WHERE listed_at >= o.aged_edge AND listed_at < o.next_edge AND tstzrange(o.next_as_of, NULL, '()') @> sold_at
        )
        END AS step
    FROM ordered o
),
aged AS (
    SELECT s.ord, sum(s.step) OVER (ORDER BY s.position DESC) AS n
    FROM aged_steps s
)
-- The aged counts by position in one array, computed once: a join on ord, with the planner's
-- estimate of one window for unnest(), became a nested loop comparing every pair of windows.
-- Each row also carries the sums its KPIs divide (total_listings, active_buyers and
-- aged_inventory are their own) and the number of the last batch of the summaries in this
-- snapshot (kpi_announce): the service adds later batches' deltas to them (kpi_metrics_of).
SELECT m.*, t.price_sum, t.scored, t.score_sum, t.leads, t.converted, t.costed, t.profit_sum, t.led,
       t.lead_seconds, t.aligned, (SELECT r.batch FROM kpi.kpi_applier_rest r) AS batch
FROM totals t
CROSS JOIN LATERAL kpi.kpi_metrics(
    t.listings, t.price_sum, t.scored, t.score_sum, t.leads, t.converted, t.costed, t.profit_sum, t.led,
    t.lead_seconds, t.buyers,
    ((SELECT array_agg(a.n ORDER BY a.ord) FROM aged a)[t.ord] + kpi.kpi_raw_stock(t.aged_edge, t.aged_before, t.as_of))::bigint
) m
ORDER BY t.ord;


-- name: kpi_windows_raw(starts, ends, as_ofs, aged_days)
-- The same rows as kpi_windows from the raw rows alone, for a database without the summaries
-- (an owner who allows the service no triggers): correct, and slower in proportion to the rows
-- of each window and to the listings before each as-of instant.
SELECT m.*
FROM unnest(:starts::timestamptz[], :ends::timestamptz[], :as_ofs::timestamptz[])
     WITH ORDINALITY AS w (start_at, end_at, as_of, ord)
CROSS JOIN LATERAL kpi.kpi_raw(coalesce(w.start_at, '-infinity'::timestamptz), coalesce(w.end_at, 'infinity'::timestamptz)) t
CROSS JOIN LATERAL kpi.kpi_metrics(
    t.listings, t.price_sum, t.scored, t.score_sum, t.leads, t.converted, t.costed, t.profit_sum, t.led,
    t.lead_seconds, t.buyers,
    kpi.kpi_raw_stock('-infinity'::timestamptz, w.as_of - make_interval(secs => :aged_days * 86400), w.as_of)
) m
ORDER BY w.ord;


-- name: kpi_metrics_of(listings, price_sums, scored, score_sums, leads, converted, costed, profit_sums, led, lead_seconds, buyers, aged)
-- The ten KPIs of windows whose sums the service holds (kpi_windows' extra columns, with later
-- batches' deltas added: kpi_service/serving/advance.py), one row per window in the order given:
-- the same divisions and roundings, kpi_metrics', whoever summed. Reads no table.
SELECT m.*
FROM unnest(:listings::bigint[], :price_sums::numeric[], :scored::bigint[], :score_sums::numeric[],
            :leads::bigint[], :converted::bigint[], :costed::bigint[], :profit_sums::numeric[], :led::bigint[],
            :lead_seconds::numeric[], :buyers::bigint[], :aged::bigint[])
     WITH ORDINALITY AS t (listings, price_sum, scored, score_sum, leads, converted, costed, profit_sum, led,
                          lead_seconds, buyers, aged, ord)
CROSS JOIN LATERAL kpi.kpi_metrics(
    t.listings, t.price_sum, t.scored, t.score_sum, t.leads, t.converted, t.costed, t.profit_sum, t.led,
    t.lead_seconds, t.buyers, t.aged
) m
ORDER BY t.ord;


-- name: next_aging(as_of, aged_days)$
-- The next instant after as_of at which aged_inventory of a window whose as-of instant is now
-- grows without a write (sql/schema/schema.sql, kpi_next_aging). Live updates schedule the
-- window's recompute then (kpi_service/live/hub.py).
SELECT kpi.kpi_next_aging(:as_of::timestamptz, :aged_days::integer) AS at;
