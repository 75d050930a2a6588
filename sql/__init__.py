"""The SQL files, shipped inside the package as kpi_service.sql (see setup.cfg)."""
