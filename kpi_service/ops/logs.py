"""Logging of the service's own loggers as one JSON object per line."""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

ROOT_LOGGER = "kpi_service"
# The attribute that marks a host's own handler (see configure_logging).
HOST_HANDLER = "kpi_host_handler"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of the call, not at creation: the handler
    outlives any one test's captured stream, and a host may swap stderr after start."""

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


# Also the formatter of gunicorn's own log (gunicorn.conf.py repeats these arguments there, so
# that the master does not import this package before its metrics directory is set up).
JSON_FORMAT = {
    "fmt": "{levelname}{name}{message}",
    "style": "{",
    "rename_fields": {"levelname": "level", "name": "logger"},
    "timestamp": "ts",
}


def json_formatter() -> logging.Formatter:
    """The formatter of every line the service writes."""
    return JsonFormatter(**JSON_FORMAT)


def configure_logging(level: str) -> None:
    """JSON lines on stderr for the kpi_service.* loggers, at `level`.

    Idempotent (create_app may run more than once in a process): the handler is added once and
    only the level follows the latest settings. The loggers do not propagate, so a root logger
    configured by a host (gunicorn) does not print every line a second time. A host that routes
    the records itself (the test suite, to pytest's capture) marks a handler of its own with
    `HOST_HANDLER` on the kpi_service logger first: then nothing else is changed.
    """
    logger = logging.getLogger(ROOT_LOGGER)
    logger.setLevel(level)
    if any(getattr(handler, HOST_HANDLER, False) for handler in logger.handlers):
        return
    if not any(getattr(handler, "_kpi_json", False) for handler in logger.handlers):
        # Request threads only enqueue their record; one thread formats and writes. A handler
        # writing in the request thread made every request of a gunicorn worker's threads queue
        # on that handler's lock: on the cached hot path that cost more than the request itself.
        writer = _StderrHandler()
        writer.setFormatter(json_formatter())
        records: queue.Queue[logging.LogRecord] = queue.Queue()
        listener = logging.handlers.QueueListener(records, writer)
        listener.start()
        atexit.register(listener.stop)  # writes what is still queued when the process exits
        handler = logging.handlers.QueueHandler(records)
        handler._kpi_json = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False
