"""A dict for a hot path that bounds itself, for the memos of parsed queries, verified tokens and
served hits: each entry a poller repeats is worked out once, and the memo holds about what is
being polled rather than everything ever asked."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Memo(Generic[K, V]):
    """Entries by key. Reaching `limit` entries, it drops those `keep` rejects (all without
    `keep`, or when more than `limit` are kept), and waits to prune again until it has doubled:
    amortized O(1) per entry, with no lock (a lost entry is only computed again)."""

    def __init__(self, limit: int, keep: Callable[[V], bool] | None = None) -> None:
        self.limit = limit
        self.keep = keep
        self._entries: dict[K, V] = {}
        self._prune_at = limit

    def get(self, key: K) -> V | None:
        return self._entries.get(key)

    def put(self, key: K, value: V) -> V:
        if len(self._entries) >= self._prune_at:
            keep = self.keep
            kept = {k: v for k, v in list(self._entries.items()) if keep(v)} if keep is not None else {}
            self._entries = kept if len(kept) <= self.limit else {}
            self._prune_at = max(self.limit, 2 * len(self._entries))
        self._entries[key] = value
        return value

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
