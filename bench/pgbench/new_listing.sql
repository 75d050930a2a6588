-- The application's write mix (bench/write_cost.py): a car comes in; scored later.
\set price random(3000, 63000)
\set cost :price * random(70, 92) / 100
\set year random(2012, 2026)
INSERT INTO listings (make, model, year, price, acquisition_cost, status, listed_at, score)
VALUES ('Toyota', 'Corolla', :year, :price, :cost, 'active', now(), NULL);
