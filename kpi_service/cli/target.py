"""The database a command runs against: DATABASE_URL, or the embedded demo server."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from kpi_service.cli.embedded import EmbeddedPostgres
from kpi_service.config import ConfigError
from kpi_service.ops.lifecycle import signals_deferred


@contextmanager
def target_database(environ: Mapping[str, str], data_dir: Path, *, reset: bool = False) -> Iterator[tuple[str, bool]]:
    """DATABASE_URL, or the embedded demo server in data_dir for the block: (conninfo, embedded)."""
    url = environ.get("DATABASE_URL")
    if url:
        if reset:
            raise ConfigError("--reset only applies to the embedded database, and DATABASE_URL is set")
        yield url, False
        return
    server = EmbeddedPostgres(data_dir)
    if reset:
        server.reset()
    try:
        with signals_deferred():
            url = server.start()
        yield url, True
    finally:
        with signals_deferred():
            server.stop()
