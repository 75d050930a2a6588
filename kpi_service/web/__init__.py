"""The HTTP surface: the API's blueprints, authentication, the error envelope, the OpenAPI
document, the dashboard page, and the hooks every request passes (request log, Server-Timing)."""
