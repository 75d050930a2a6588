"""schemathesis's own command line, every check, coverage and fuzzing phases, against the service
on a real port: the OpenAPI document says exactly what the service accepts and answers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from kpi_service.app import create_app
from tests.helpers import make_settings, token
from tests.sse import serving

ROOT = Path(__file__).parents[1]
ST = str(Path(sys.executable).with_name("st"))


class FirstEventOnly:
    """A stream ends after its first event or heartbeat, as for a client that reads one and
    disconnects: schemathesis reads a stream to its end, and the service's never ends by itself."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        streaming = False

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            nonlocal streaming
            streaming = any(k.lower() == "content-type" and v.startswith("text/event-stream") for k, v in headers)
            return start_response(status, headers, exc_info)

        body = self.app(environ, start)
        return self._first(body) if streaming else body

    @staticmethod
    def _first(body: Iterable[bytes]) -> Iterator[bytes]:
        try:
            for chunk in body:
                yield chunk
                if not chunk.startswith(b"retry:"):
                    return
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()  # the stream's own cleanup (unsubscribe), as when a client goes away


@pytest.mark.slow
def test_schemathesis_finds_nothing(database_url: str, conn: psycopg.Connection, tmp_path: Path) -> None:
    app = create_app(make_settings(database_url, stream_heartbeat=1))
    bearer = token(exp=datetime.now(UTC) + timedelta(hours=1))
    try:
        with serving(app, FirstEventOnly(app)) as base:
            done = subprocess.run(
                [
                    ST, "run", f"{base}/api/openapi.json",
                    "--checks", "all",
                    "--phases", "coverage,fuzzing",
                    "--header", f"Authorization: Bearer {bearer}",
                    "--max-examples", "30",
                    "--seed", "20261130",
                    # schemathesis speaks HTTP, not WebSocket: tests/test_websocket.py covers it.
                    "--exclude-path", "/api/kpi/ws",
                    "--workers", "2",
                    "--report-dir", str(tmp_path),
                ],
                capture_output=True, text=True, timeout=900, cwd=tmp_path,
                env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks", "PYTHONPATH": str(ROOT)},
            )  # fmt: skip
    finally:
        app.extensions["kpi"].close()
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
