-- The application's write mix (bench/write_cost.py): one transaction adds leads for two
-- distinct buyers of a busy set of 20 (ids 1..20), in either order, so that two clients can
-- take the same two buyers in opposite orders (a deadlock if the writes lock per buyer).
\set a random(1, 20)
\set b random(1, 19)
\set b CASE WHEN :b >= :a THEN :b + 1 ELSE :b END
\set listing_a random(1, :listings)
\set listing_b random(1, :listings)
BEGIN;
INSERT INTO leads (buyer_id, listing_id, created_at, status) VALUES (:a, :listing_a, now(), 'open');
INSERT INTO leads (buyer_id, listing_id, created_at, status) VALUES (:b, :listing_b, now(), 'open');
END;
