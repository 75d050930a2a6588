-- The application's write mix (bench/write_cost.py): an inquiry on a random listing.
-- Set by the bench with -D: :buyers and :listings, the generated id ranges.
\set buyer random(1, :buyers)
\set listing random(1, :listings)
INSERT INTO leads (buyer_id, listing_id, created_at, status) VALUES (:buyer, :listing, now(), 'open');
