"""PostgreSQL: the runtime pool, the SQL files, schema setup, the summaries' applier and the
read replica's routing."""
