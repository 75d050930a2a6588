"""JWT bearer tokens issued by the main application: HS256 with the shared secret, header only."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from flask import Flask, Response, current_app, request
from flask_jwt_extended import JWTManager, create_access_token, get_jwt, verify_jwt_in_request
from flask_jwt_extended.exceptions import JWTDecodeError, NoAuthorizationError

from kpi_service.ops.memo import Memo
from kpi_service.web.errors import WWW_AUTHENTICATE, envelope


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
    # Kept while unexpired; the rest dropped when it fills.
    app.extensions[_VERIFIED] = Memo(_MAX_VERIFIED, keep=lambda expires: time.time() < expires)

    def reject(reason: str) -> Response:
        response = envelope(401, reason)
        response.headers["WWW-Authenticate"] = WWW_AUTHENTICATE
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

    return jwt


_VERIFIED = "kpi_verified_tokens"
_MAX_VERIFIED = 10_000
# No token the main application issues comes near this; gunicorn refuses a longer header line
# (8190 bytes) before the app sees it, but another server may not, and the memo would hold it.
MAX_AUTHORIZATION_BYTES = 8192
View = TypeVar("View", bound=Callable[..., Any])


def token_required(view: View) -> View:
    """Like flask-jwt-extended's jwt_required, remembering each verified Authorization header
    until its token's `exp`, so that a poller's token is decoded and its signature checked once,
    not on every request. The memo is per app, hence per secret."""

    @functools.wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        verified: Memo[str, float] = current_app.extensions[_VERIFIED]
        header = request.environ.get("HTTP_AUTHORIZATION", "")  # the header, read as Headers.get would
        if len(header) > MAX_AUTHORIZATION_BYTES:
            raise NoAuthorizationError(f"longer than {MAX_AUTHORIZATION_BYTES} bytes")
        expires = verified.get(header)
        if expires is None or time.time() >= expires:
            verified.put(header, float(verified_claims()["exp"]))
        return view(*args, **kwargs)

    return guarded  # type: ignore[return-value]


def verified_claims() -> dict[str, Any]:
    """The request's token, verified, with its `exp` (which flask-jwt-extended leaves optional);
    raises, and flask-jwt-extended answers through the loaders of init_app."""
    verify_jwt_in_request()
    claims = get_jwt()
    if "exp" not in claims:
        raise JWTDecodeError("Missing claim: exp")
    return claims


def mint_token(app: Flask, subject: str, ttl_seconds: int) -> str:
    """An access token as the main application issues them (for the demo and internal services)."""
    with app.app_context():
        return create_access_token(identity=subject, expires_delta=timedelta(seconds=ttl_seconds))
