"""Attacks on the bearer token: each is a 401 in the error envelope, never a 200 or a 500."""

from __future__ import annotations

import base64
import hmac
import http.client
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask.testing import FlaskClient

from tests.helpers import SECRET, token, wait_until
from tests.servers import gunicorn

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_PEM = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(header: dict, payload: dict, key: bytes, digest: str = "sha256") -> str:
    """A token signed by hand: PyJWT refuses to use a PEM key as an HMAC secret, an attacker does not."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(key, signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64(signature)}"


def claims(**extra: object) -> dict:
    base: dict[str, object] = {"sub": "dashboard", "exp": int(time.time()) + 300}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def tampered() -> str:
    """A genuine token whose payload now names another subject, with the original signature."""
    header, _, signature = token().split(".")
    return f"{header}.{b64(json.dumps(claims(sub='admin')).encode())}.{signature}"


ATTACKS = {
    "alg-none": jwt.encode(claims(), None, algorithm="none"),
    "alg-none-with-signature": jwt.encode(claims(), None, algorithm="none") + b64(b"x" * 32),
    "hs256-signed-with-the-public-key": hs256({"alg": "HS256", "typ": "JWT"}, claims(), PUBLIC_PEM),
    "rs256-signed": jwt.encode(claims(), RSA_KEY, algorithm="RS256"),
    "hs512-with-the-secret": hs256({"alg": "HS512", "typ": "JWT"}, claims(), SECRET.encode(), "sha512"),
    "wrong-key": token(secret="another-secret-that-is-32-bytes-long!!"),
    "tampered-payload": tampered(),
    "expired": token(exp=datetime.now(UTC) - timedelta(seconds=1)),
    "nbf-in-the-future": token(nbf=datetime.now(UTC) + timedelta(minutes=10)),
    "missing-sub": token(sub=None),
    "missing-exp": token(exp=None),
    "exp-not-a-number": hs256({"alg": "HS256", "typ": "JWT"}, claims(exp="tomorrow"), SECRET.encode()),
    "empty-signature": token().rsplit(".", 1)[0] + ".",
    "not-base64": "a.b.c",
}
MALFORMED_HEADERS = {
    "bearer-alone": "Bearer",
    "bearer-space": "Bearer ",
    "two-tokens": f"Bearer {token()} {token()}",
    "two-bearer-values": f"Bearer {token()}, Bearer {token()}",
    # The main application's form is `Authorization: Bearer <JWT>`, spelled so (flask-jwt-extended compares
    # the scheme exactly); a client sending another spelling is told so.
    "lowercase-scheme": f"bearer {token()}",
    "token-scheme": f"Token {token()}",
    "no-scheme": token(),
    "basic": "Basic dXNlcjpwYXNz",
}


def assert_401_envelope(response) -> None:  # werkzeug TestResponse
    assert response.status_code == 401, response.get_data(as_text=True)
    body = response.get_json()
    assert body["success"] is False and body["metrics"] is None and body["message"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


# Every operation the OpenAPI document protects with the bearer token, as a request: the stream
# with its first parameters (its ticket-or-token rule is tests/test_stream.py's), the 304 path
# of a poller's If-None-Match too.
PROTECTED = [
    ("GET", "/api/kpi", {}),
    ("GET", "/api/kpi", {"If-None-Match": 'W/"x"'}),
    ("GET", "/api/kpi/history?from=2026-01-01&to=2026-01-31&interval=week", {}),
    ("POST", "/api/kpi/stream-ticket", {}),
    ("GET", "/api/kpi/stream", {}),
]
REFUSED = {
    "missing": {},
    **{f"header-{name}": {"Authorization": header} for name, header in MALFORMED_HEADERS.items()},
    **{name: {"Authorization": f"Bearer {bearer}"} for name, bearer in ATTACKS.items()},
}


def test_every_protected_operation_refuses_every_bad_or_missing_token(client: FlaskClient) -> None:
    spec = client.get("/api/openapi.json").get_json()
    protected = {(m.upper(), p) for p, ops in spec["paths"].items() for m, op in ops.items() if op.get("security")}
    # The list above covers what the document protects (the WebSocket is tests/test_websocket.py's).
    assert {(m, p.split("?")[0]) for m, p, _ in PROTECTED} == protected - {("GET", "/api/kpi/ws")}
    for name, headers in REFUSED.items():
        for method, path, extra in PROTECTED:
            response = client.open(path, method=method, headers={**headers, **extra})
            try:
                assert_401_envelope(response)
            except AssertionError as error:
                raise AssertionError(f"{name}: {method} {path}") from error


def test_the_genuine_token_of_the_same_shape_works(client: FlaskClient) -> None:
    # The control for the attacks above: only what they changed makes them fail.
    assert client.get("/api/kpi", headers={"Authorization": f"Bearer {token()}"}).status_code == 200


@pytest.mark.parametrize("where", ["query-jwt", "query-access_token", "cookie", "cookie-with-csrf"])
def test_a_token_outside_the_header_is_ignored(client: FlaskClient, where: str) -> None:
    good = token()
    if where.startswith("query"):
        name = where.removeprefix("query-")
        response = client.get(f"/api/kpi?{name}={good}")
    else:
        client.set_cookie("access_token_cookie", good)
        headers = {"X-CSRF-TOKEN": "x"} if where == "cookie-with-csrf" else {}
        response = client.get("/api/kpi", headers=headers)
    assert_401_envelope(response)


def test_a_100_kb_token_is_refused(client: FlaskClient) -> None:
    # Correctly signed even: refused for its size, before any decoding (and never memoized).
    huge = token(padding="x" * 100_000)
    assert len(huge) > 100_000
    assert_401_envelope(client.get("/api/kpi", headers={"Authorization": f"Bearer {huge}"}))
    assert_401_envelope(client.get("/api/kpi", headers={"Authorization": f"Bearer {huge[:-4]}AAAA"}))


def test_a_memoized_token_is_rejected_once_it_expires(client: FlaskClient) -> None:
    exp = int(time.time()) + 2
    headers = {"Authorization": f"Bearer {token(exp=exp)}"}
    assert client.get("/api/kpi", headers=headers).status_code == 200
    assert client.get("/api/kpi", headers=headers).status_code == 200  # the memoized path
    wait_until(lambda: time.time() >= exp + 0.05, seconds=5)  # the clock is the event awaited
    assert_401_envelope(client.get("/api/kpi", headers=headers))


@pytest.fixture
def server(database_url: str, conn: psycopg.Connection) -> Iterator[str]:
    with gunicorn({"DATABASE_URL": database_url, "JWT_SECRET_KEY": SECRET, "GUNICORN_WORKERS": "1"}) as base:
        yield base


def raw_get(base: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.slow
def test_huge_and_forged_tokens_against_gunicorn(server: str) -> None:
    huge = token(padding="x" * 100_000)
    status, body = raw_get(server, "/api/kpi", {"Authorization": f"Bearer {huge}"})
    # gunicorn refuses the header line itself (limit_request_field_size, 8190 bytes) before the
    # app sees it: a 400 from the server, never a 500 and never a worker crash.
    assert status in (400, 401, 431), (status, body[:200])
    # Just under gunicorn's limit, the app decides: a 401 envelope for a bad signature.
    big = token(padding="x" * 6000)
    status, body = raw_get(server, "/api/kpi", {"Authorization": f"Bearer {big[:-4]}AAAA"})
    assert status == 401 and json.loads(body)["success"] is False
    for name in ("alg-none", "hs256-signed-with-the-public-key", "rs256-signed", "tampered-payload"):
        status, body = raw_get(server, "/api/kpi", {"Authorization": f"Bearer {ATTACKS[name]}"})
        assert status == 401 and json.loads(body)["metrics"] is None, name
    # The worker survived all of it.
    assert raw_get(server, "/api/kpi", {"Authorization": f"Bearer {token()}"})[0] == 200
