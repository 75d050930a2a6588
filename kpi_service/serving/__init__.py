"""A window's KPIs from query string to response body: parsing the window, the Redis cache and
its single-flight lock, the serving rules (hit, refresh, miss, stale) and the body built."""
