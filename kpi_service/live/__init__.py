"""Pushed updates: GET /api/kpi/stream (server-sent events), GET /api/kpi/ws (WebSocket), their
single-use tickets, and the per-process hub that fans each window's new values out to them."""
