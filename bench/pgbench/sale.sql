-- The application's write mix (bench/write_cost.py): a sale through a lead. The listing is
-- inserted and sold in the same transaction, so that concurrent clients never sell the same
-- listing (purchases.listing_id is UNIQUE); listed 30 days ago, so the sale also changes a
-- past bucket of the summaries, as a backdated sale does.
\set buyer random(1, :buyers)
\set price random(3000, 63000)
\set cost :price * random(70, 92) / 100
\set sale_price :price * random(90, 100) / 100
\set year random(2012, 2026)
BEGIN;
INSERT INTO listings (make, model, year, price, acquisition_cost, status, listed_at, sold_at, score)
VALUES ('Volkswagen', 'Golf', :year, :price, :cost, 'sold', now() - interval '30 days', now(), NULL)
RETURNING id AS listing_id \gset
INSERT INTO leads (buyer_id, listing_id, created_at, status)
VALUES (:buyer, :listing_id, now() - interval '10 days', 'converted')
RETURNING id AS lead_id \gset
INSERT INTO purchases (listing_id, buyer_id, lead_id, sale_price, purchased_at)
VALUES (:listing_id, :buyer, :lead_id, :sale_price, now());
END;
