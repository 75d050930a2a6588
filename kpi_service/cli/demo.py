"""`kpi-service demo`: the service with a database, demo data, a secret and a token, on one command."""

from __future__ import annotations

import os
import secrets
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from werkzeug.serving import WSGIRequestHandler, make_server

from kpi_service.app import create_app
from kpi_service.cli.seed import has_rows, seed
from kpi_service.cli.target import target_database
from kpi_service.config import Settings
from kpi_service.db.schema import apply_schema
from kpi_service.live.hub import close_all
from kpi_service.web.auth import mint_token

TOKEN_TTL = 24 * 3600
TOKEN_SUBJECT = "demo"


def run(
    *,
    host: str,
    port: int,
    data_dir: Path,
    reset: bool,
    listings: int,
    environ: Mapping[str, str] = os.environ,
    out: TextIO | None = None,
) -> None:
    """Serve until stopped by a signal (lifecycle.stop_on_signals must be installed)."""

    def say(line: str = "") -> None:
        print(line, file=out or sys.stdout, flush=True)

    with target_database(environ, data_dir, reset=reset) as (url, embedded):
        if embedded:
            pgdata = Path(data_dir).absolute() / "pgdata"
            say(f"database  embedded PostgreSQL in {pgdata} (kept; --reset starts afresh)")
        else:
            say("database  DATABASE_URL")
        apply_schema(url)
        if has_rows(url):
            say("data      the sales tables already hold rows: not seeding")
        else:
            done = seed(url, listings)
            rows = ", ".join(f"{count:,} {table}" for table, count in done.rows.items())
            say(f"data      seeded {rows} in {done.seconds:.1f} s")
        if environ.get("REDIS_SENTINELS"):
            say("cache     the primary REDIS_SENTINELS name")
        else:
            say("cache     " + ("REDIS_URL" if environ.get("REDIS_URL") else "in-process stand-in (REDIS_URL not set)"))

        secret = environ.get("JWT_SECRET_KEY")
        if not secret:
            secret = secrets.token_urlsafe(32)
            say(f"secret    JWT_SECRET_KEY not set: generated one for this run: {secret}")
        settings = Settings.from_env(environ, database_url=url, jwt_secret_key=secret, env="development")
        app = create_app(settings)
        try:
            # Bound before the token is printed: whoever reads the token can call at once.
            server = make_server(host, port, app, threaded=True, request_handler=RequestHandler)
            try:
                base = f"http://{_netloc(host, server.server_port)}"
                token = mint_token(app, TOKEN_SUBJECT, TOKEN_TTL)
                say(f"token     {token}")
                say(f"          (sub {TOKEN_SUBJECT!r}, valid 24 h; more with: kpi-service token --sub NAME)")
                say()
                say(f"curl -s -H {shlex.quote('Authorization: Bearer ' + token)} {base}/api/kpi")
                say()
                # The token travels in the fragment, which the browser keeps to itself.
                say(f"dashboard {base}/#token={token}")
                say(f"serving   {base}/api/kpi  (Ctrl-C to stop)")
                server.serve_forever()
            finally:
                close_all()  # open streams end, so that their threads do not hold the exit
                server.server_close()
        finally:
            app.extensions["kpi"].close()


class RequestHandler(WSGIRequestHandler):
    """werkzeug's handler without its access line: the app writes its own JSON line per request,
    and werkzeug's would repeat it with the full query string, which may carry a stream ticket."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
