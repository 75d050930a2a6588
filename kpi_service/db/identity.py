"""Which database this is, for the Redis keys (serving/keys.py): a scope shared by a primary and
its physical standbys (the same system identifier and name), and by nothing else."""

from __future__ import annotations

import hashlib


def scope_of(system_identifier: str, database: str) -> str:
    """A database's scope: the first 16 hex digits of SHA-256 of "<system identifier>/<name>" (a
    fixed length, whatever the name's characters; the identifier is pg_control_system()'s)."""
    return hashlib.sha256(f"{system_identifier}/{database}".encode()).hexdigest()[:16]
