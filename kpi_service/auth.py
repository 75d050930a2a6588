"""JWT bearer tokens issued by the main application: HS256 with the shared secret, header only."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Flask, Response
from flask_jwt_extended import JWTManager, create_access_token

from kpi_service.errors import envelope


def init_app(app: Flask, secret: str) -> JWTManager:
    app.config.update(
        JWT_SECRET_KEY=secret,
        JWT_TOKEN_LOCATION=["headers"],
        JWT_ALGORITHM="HS256",
        # Pinned: a token's own header must never choose the algorithm (alg=none, RS/HS confusion).
        JWT_DECODE_ALGORITHMS=["HS256"],
        JWT_ERROR_MESSAGE_KEY="message",
    )
    jwt = JWTManager(app)

    def reject(reason: str) -> Response:
        response = envelope(401, reason)
        response.headers["WWW-Authenticate"] = 'Bearer realm="kpi"'
        return response

    @jwt.unauthorized_loader
    def _missing(reason: str) -> Response:
        return reject(f"Missing or malformed Authorization header: {reason}")

    @jwt.invalid_token_loader
    def _invalid(reason: str) -> Response:
        return reject(f"Invalid token: {reason}")

    @jwt.expired_token_loader
    def _expired(header: dict[str, Any], payload: dict[str, Any]) -> Response:
        return reject("Token has expired.")

    @jwt.revoked_token_loader
    def _revoked(header: dict[str, Any], payload: dict[str, Any]) -> Response:
        return reject("Token has been revoked.")

    @jwt.needs_fresh_token_loader
    def _not_fresh(header: dict[str, Any], payload: dict[str, Any]) -> Response:
        return reject("Fresh token required.")

    return jwt


def mint_token(app: Flask, subject: str, ttl_seconds: int) -> str:
    """An access token as the main application issues them (for the demo and internal services)."""
    with app.app_context():
        return create_access_token(identity=subject, expires_delta=timedelta(seconds=ttl_seconds))
