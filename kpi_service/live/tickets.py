"""Short-lived, single-use stream tickets: how a browser's EventSource, which cannot send an
Authorization header, opens GET /api/kpi/stream without a long-lived token in a URL.

A ticket is 32 random bytes (URL-safe). Redis holds only its SHA-256, under
`kpi:v1:ticket:<hex>` with SET EX, so a dump of Redis yields no usable ticket; redeeming it is a
GETDEL, atomic in Redis, so a ticket opens one stream across every worker and instance sharing
that Redis. The stored value carries the bearer token's subject and expiry: a stream opened with
a ticket ends when the token it was issued for expires.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import secrets
import time
from dataclasses import dataclass

import redis

log = logging.getLogger(__name__)

TICKET_TTL = 30  # seconds: long enough for a page to open its EventSource, short enough to be useless later
# Not a database's: a ticket names a token, not numbers (docs/clients.md, Redis key layout).
_PREFIX = "kpi:v1:ticket:"


class TicketsUnavailable(Exception):
    """Redis could not be asked: no ticket can be issued or redeemed."""


@dataclass(frozen=True)
class Grant:
    """Who a ticket (or a bearer token) lets in, and until when (the token's `exp`)."""

    subject: str
    expires_at: float


@dataclass(frozen=True)
class Ticket:
    value: str
    expires_in: int


class TicketStore:
    def __init__(self, client: redis.Redis, ttl: int = TICKET_TTL) -> None:
        self.client = client
        self.ttl = ttl

    def issue(self, grant: Grant) -> Ticket:
        """A new ticket, valid for `ttl` seconds but never past the token's own expiry."""
        expires_in = min(self.ttl, math.floor(grant.expires_at - time.time()))
        if expires_in < 1:
            # The token expires within the second: a ticket would be born dead.
            expires_in = 1
        value = secrets.token_urlsafe(32)
        stored = json.dumps({"sub": grant.subject, "exp": grant.expires_at}, separators=(",", ":"))
        try:
            self.client.set(_key(value), stored, ex=expires_in)
        except redis.RedisError as error:
            raise TicketsUnavailable from error
        return Ticket(value, expires_in)

    def redeem(self, value: str) -> Grant | None:
        """The ticket's grant, consumed: None when it is unknown, expired or already used."""
        if not value or len(value) > 128:
            return None
        try:
            stored = self.client.getdel(_key(value))
        except redis.RedisError as error:
            raise TicketsUnavailable from error
        if stored is None:
            return None
        try:
            data = json.loads(stored)
            grant = Grant(subject=str(data["sub"]), expires_at=float(data["exp"]))
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed stream ticket")
            return None
        return grant if grant.expires_at > time.time() else None


def _key(value: str) -> str:
    return _PREFIX + hashlib.sha256(value.encode()).hexdigest()
