"""gunicorn settings of the container: gunicorn -c gunicorn.conf.py wsgi:app

The settings read here (PORT, GUNICORN_*, KPI_MAX_STREAMS, KPI_METRICS, PROMETHEUS_MULTIPROC_DIR)
are in docs/configuration.md, the threads a worker runs in docs/operations.md. Prometheus runs in
multiprocess mode: every worker writes its samples under PROMETHEUS_MULTIPROC_DIR and a scrape of
any worker (or of the master's listener for KPI_METRICS=port:NNNN) merges them.

The master imports neither kpi_service nor prometheus_client before on_starting has prepared
that directory: a metric created before then would be a plain in-memory one, and the forked
workers would inherit it and count only for themselves. Hence also no preload_app.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gunicorn.arbiter import Arbiter
    from gunicorn.workers.base import Worker

bind = f"0.0.0.0:{int(os.environ.get('PORT', '8000'))}"
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
# gthread: every request holds one of the worker's threads while it runs, and so does every open
# GET /api/kpi/stream or /api/kpi/ws, for as long as it is open (an async worker would avoid that,
# but the app, psycopg's pool and the cache are synchronous code). The app serves at most
# KPI_MAX_STREAMS of both per worker (16; a 503 with Retry-After beyond), so the threads are that
# many for streams plus 4 for ordinary requests, as many as the database pool has connections (KPI_DB_POOL_SIZE):
# a full house of streams leaves the polling API as fast as before. Streams cost no connection:
# their refreshes run on the app's own refresher pool (4 threads, serving/refresher.py).
_max_streams = int(os.environ.get("KPI_MAX_STREAMS") or "16")
threads = int(os.environ.get("GUNICORN_THREADS") or str(4 + _max_streams))
worker_class = "gthread"
# A KPI request is bounded by the statement timeout (5 s by default); this only catches a hung worker.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
# On SIGTERM, in-flight requests get this long to finish before the workers are killed.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
keepalive = 5
preload_app = False
# gunicorn >= 25.1 opens a control socket under $HOME by default: one path shared by every
# instance on the host, and the container's user has no home. Older versions ignore this name.
control_socket_disable = True
# The app writes one JSON line per request (kpi_service.web.request_log): no second, plain access log.
accesslog = None
errorlog = "-"
# gunicorn's own messages in the same JSON shape as the app's (kpi_service.ops.logs.JSON_FORMAT).
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "{levelname}{name}{message}",
            "style": "{",
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": "ts",
        }
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
    "loggers": {"gunicorn.error": {"handlers": ["console"], "level": "INFO", "propagate": False}},
}

# An operator's directory (the Dockerfile sets one) must exist before anything loads the app,
# including `gunicorn --check-config`; without one, on_starting makes a private one.
_owned_metrics_dir = False
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)


def on_starting(server: Arbiter) -> None:
    """Before the workers fork: an empty metrics directory, inherited by every worker."""
    global _owned_metrics_dir
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        path = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="kpi-metrics-")
        _owned_metrics_dir = True
    # Files of an earlier run would be summed into this one's counters.
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.remove(os.path.join(path, name))


def when_ready(server: Arbiter) -> None:
    """KPI_METRICS=port:NNNN: one listener for the whole server, in the master, which outlives
    every worker and reads all their files; workers never bind it (they would race for it)."""
    from kpi_service.config import parse_metrics_exposure
    from kpi_service.ops.metrics import start_exporter

    mode, port = parse_metrics_exposure(os.environ.get("KPI_METRICS") or "on")
    if mode == "port" and port is not None:
        start_exporter(port)
        server.log.info("metrics listener on port %d", port)


def post_worker_init(worker: Worker) -> None:
    """Open streams end as soon as the worker is told to stop. gthread waits up to the graceful
    timeout for open connections, and a stream, left alone, never closes: SIGTERM would then always
    cost the full 20 s, and SIGINT/SIGQUIT would hang the exit behind the stream threads.
    A WebSocket is closed with 1001. Clients reconnect (EventSource does by itself) to a worker
    that is not stopping."""

    def chain(signum: int) -> None:
        previous = signal.getsignal(signum)

        def stop_streams(number: int, frame: object) -> None:
            from kpi_service.live.hub import close_all

            close_all()  # only sets flags and wakes the stream threads
            if callable(previous):
                previous(number, frame)

        signal.signal(signum, stop_streams)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        chain(signum)
    signal.siginterrupt(signal.SIGTERM, False)  # as gunicorn has it: no interrupted system calls


def child_exit(server: Arbiter, worker: Worker) -> None:
    """prometheus_client multiprocess bookkeeping for a worker that died or was replaced."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Arbiter) -> None:
    if _owned_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
