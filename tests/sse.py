"""Helpers for tests that need a real HTTP server: the app on werkzeug's threaded server in a
thread, and a minimal server-sent-events reader."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from flask import Flask
from werkzeug.serving import ThreadedWSGIServer

from kpi_service.cli.demo import RequestHandler

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication


class _Server(ThreadedWSGIServer):
    """werkzeug's threaded server, which can also drop every connection it has open."""

    def __init__(self, port: int, app: WSGIApplication) -> None:
        super().__init__("127.0.0.1", port, app, handler=RequestHandler)
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def process_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:
        with self._lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:
        with self._lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self._lock:
            connections = list(self._open)
        for connection in connections:
            with suppress(OSError):  # closed meanwhile
                connection.shutdown(socket.SHUT_RDWR)


@contextmanager
def serving(app: Flask, wsgi: WSGIApplication | None = None, port: int = 0) -> Iterator[str]:
    """The app (or `wsgi`, a middleware around it) on a loopback port (a free one unless given),
    as the demo serves it; yields its base URL. On the way out its streams end and its
    connections drop, keep-alive ones included, as when a server process stops."""
    server = _Server(port, wsgi or app)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        app.extensions["kpi_stream"].hub.close()
        server.shutdown()
        server.server_close()
        server.drop_connections()
        thread.join(timeout=10)


@dataclass
class Item:
    """One thing read from a stream: an event, or a comment (heartbeat)."""

    event: str | None = None
    id: str | None = None
    data: str | None = None
    comment: str | None = None
    retry: int | None = None

    def json(self) -> dict:
        assert self.data is not None, self
        return json.loads(self.data)


class Sse:
    """GET a stream and read it item by item, each read bounded by `timeout` seconds."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, timeout: float = 15) -> None:
        parts = urlsplit(url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        self.connection.request("GET", f"{parts.path}?{parts.query}", headers=headers or {})
        self.response = self.connection.getresponse()
        self.status = self.response.status
        self.headers = self.response.headers

    def body(self) -> dict:
        return json.loads(self.response.read())

    def next(self) -> Item | None:
        """The next event or comment; None at the end of the stream."""
        item = Item()
        seen = False
        while True:
            raw = self.response.readline()
            if not raw:
                return item if seen else None
            line = raw.decode().rstrip("\r\n")
            if line == "":
                if seen:
                    return item
                continue
            seen = True
            if line.startswith(":"):
                item.comment = line[1:].strip()
                return item
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                item.event = value
            elif name == "id":
                item.id = value
            elif name == "data":
                item.data = value if item.data is None else f"{item.data}\n{value}"
            elif name == "retry":
                item.retry = int(value)

    def next_event(self) -> Item:
        """The next event, skipping heartbeats and the retry hint; fails at the end of the stream."""
        while True:
            item = self.next()
            assert item is not None, "the stream ended"
            if item.event is not None:
                return item

    def until(self, ready: Callable[[dict], bool], seconds: float = 15) -> dict:
        """The body of the first event that satisfies `ready`; fails after `seconds` of
        heartbeats and other events (heartbeats would otherwise keep the wait going for ever)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            item = self.next()
            assert item is not None, "the stream ended"
            if item.event is not None and ready(item.json()):
                return item.json()
        raise AssertionError(f"no such event within {seconds} s")

    def heartbeats(self, count: int) -> list[str]:
        """Reads the next `count` heartbeats; the names of any events that came between them."""
        events, seen = [], 0
        while seen < count:
            item = self.next()
            assert item is not None, "the stream ended"
            if item.comment == "heartbeat":
                seen += 1
            elif item.event is not None:
                events.append(item.event)
        return events

    def close(self) -> None:
        self.response.close()
        self.connection.close()

    def __enter__(self) -> Sse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
