"""What a stream sends and holds: an Event (a value or `unavailable`, as a server-sent event or a
WebSocket frame) and a Subscriber, one stream's mailbox holding only the newest event not yet sent."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

from kpi_service.serving.bodies import format_instant, parse_instant
from kpi_service.serving.responses import Served


class Closed(Exception):
    """The hub is shutting down."""


def format_event_id(value: str | None) -> str | None:
    """An event id (a `computed_at`) in its canonical spelling, or None when it is not one.
    Canonical ids have a fixed width, so they order as strings in time order."""
    moment = parse_instant(value) if value else None
    return format_instant(moment) if moment is not None else None


@dataclass(frozen=True)
class Event:
    """One server-sent event: `kpi` (a body as GET /api/kpi answers it) or `unavailable`."""

    name: str
    computed_at: str  # of the value it carries (unavailable: of the last value known)
    state: str  # "fresh", "stale" or "unavailable": a change of state alone is news
    data: bytes
    numbers: str = ""  # the ten KPIs (the comparison's, the targets), to tell an event that changes nothing
    targets: str = ""  # the window's targets: a value sent again with other targets is news

    @classmethod
    def of(cls, served: Served) -> Event:
        stale = bool(served.body["meta"]["stale"])
        # The comparison too: a change of the compared window alone is news to its streams.
        shown = {k: served.body[k] for k in ("metrics", "comparison", "targets") if k in served.body}
        numbers = json.dumps(shown, sort_keys=True)
        targets = json.dumps(served.body["targets"], sort_keys=True) if served.body.get("targets") else ""
        state = "stale" if stale else "fresh"
        return cls("kpi", served.body["meta"]["computed_at"], state, served.payload, numbers, targets)

    @classmethod
    def unavailable(cls, message: str, computed_at: str) -> Event:
        body = {"metrics": None, "success": False, "message": message}
        return cls("unavailable", computed_at, "unavailable", json.dumps(body, separators=(",", ":")).encode())

    @property
    def mark(self) -> tuple[str, str]:
        """What a stream has once this event is sent: its value's time, its state with its targets."""
        return (self.computed_at, self.state + self.targets)

    def newer_than(self, other: tuple[str, str] | None) -> bool:
        if other is None:
            return True
        computed_at, state = other
        return self.computed_at > computed_at or (self.computed_at == computed_at and self.mark[1] != state)

    def encode(self) -> bytes:
        """The event on the wire. `id:` only for KPI values: a browser reconnects with the
        last id it saw, and an error is not something to resume from."""
        head = f"id: {self.computed_at}\n" if self.name == "kpi" else ""
        # The JSON is compact, without newlines: one data line.
        return f"{head}event: {self.name}\ndata: ".encode() + self.data + b"\n\n"

    def frame(self) -> str:
        """The event as one WebSocket text frame: a JSON object with the same id and data as
        the server-sent event. The body is spliced in as it is, not parsed and dumped again."""
        head = f'{{"event":"{self.name}",' + (f'"id":"{self.computed_at}",' if self.name == "kpi" else "")
        return head + '"data":' + self.data.decode() + "}"


class Subscriber:
    """One stream's mailbox: the newest event not yet sent, or closed."""

    def __init__(self, key: str, last_event_id: str | None, expires_at: float) -> None:
        self.key = key
        self.expires_at = expires_at  # the token's exp: the stream ends then
        self._cond = threading.Condition()
        self._pending: Event | None = None
        # What the client already has: Last-Event-ID counts as a fresh value of that time.
        self._seen: tuple[str, str] | None = (last_event_id, "fresh") if last_event_id else None
        self._numbers: tuple[str, str] | None = None  # (numbers, state) of the last event offered
        self._woken = False
        self.closed = False

    def offer(self, event: Event) -> None:
        with self._cond:
            if self.closed or not event.newer_than(self._seen):
                return
            self._seen = event.mark
            if event.numbers and (event.numbers, event.state) == self._numbers:
                return  # recomputed, and nothing changed: the client has these numbers
            self._numbers = (event.numbers, event.state)
            self._pending = event
            self._cond.notify()

    def take(self, timeout: float) -> Event | None:
        """The next event; None after `timeout` seconds without one, or once woken. Raises Closed."""
        with self._cond:
            if self._pending is None and not self.closed and not self._woken:
                self._cond.wait(timeout)
            if self.closed:
                raise Closed
            event, self._pending, self._woken = self._pending, None, False
            return event

    def wake(self) -> None:
        """Return from take() now: the stream has something else to look at (a WebSocket's
        connection ended or its client sent a message)."""
        with self._cond:
            self._woken = True
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify()
