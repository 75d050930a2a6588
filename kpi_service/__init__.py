"""kpi-service: the dashboard KPIs of the used-vehicle dealership application.

Nothing is imported here, so that `kpi_service.client` (for processes without the service)
loads only what it uses: the app factory is `kpi_service.app.create_app`.
"""
