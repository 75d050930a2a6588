-- The application's write mix (bench/write_cost.py): the scoring job rescores a listing.
\set listing random(1, :listings)
\set score random(0, 100)
UPDATE listings SET score = :score WHERE id = :listing;
