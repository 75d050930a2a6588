"""The SQL files, shipped inside the package as kpi_service.sql (see setup.cfg), by role:
runtime/ (the KPI statement), schema/ (tables, indexes, summaries), ops/ (roles and logins, run
by hand or by docker-compose), demo/ (the demo data generator)."""
