"""Per-process caches for the hot path: bounded (LRU), short-lived (TTL), and switched off
whenever cross-instance invalidation (Postgres LISTEN/NOTIFY) is not known to work."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

MISSING: Any = object()


class TTLCache(Generic[K, V]):
    """An LRU map whose entries also expire `ttl` seconds after they were stored."""

    def __init__(self, size: int, ttl: float) -> None:
        self.size = size
        self.ttl = ttl
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: K) -> V:
        """The value, or MISSING."""
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            self.misses += 1
            return MISSING  # type: ignore[no-any-return]
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[1]

    def put(self, key: K, value: V) -> None:
        if self.size <= 0:
            return
        self._entries[key] = (time.monotonic() + self.ttl, value)
        self._entries.move_to_end(key)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def pop(self, key: K) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(slots=True)
class HotPathCaches:
    """What one process remembers between requests.

    `live` is true only while the invalidation listener is connected: a cache that
    cannot hear about revocations is bypassed (and was flushed when the listener
    dropped), so a revoked key never outlives the listener's outage by more than the
    time it takes to notice it.
    """

    keys: TTLCache[bytes, Any]  # token digest -> KeyGrant, or None for "no such live key"
    # Attachments by canonical id text (as in the URL: no parsing on a hit).
    attachments: TTLCache[str, Any]  # id -> (workspace id, target or None)
    urls: TTLCache[tuple[str, str], Any]  # (attachment id, method) -> PresignedUrl
    live: bool = False
    # Bumped by every invalidation: a lookup that started before one must not store its
    # (possibly stale) answer.
    generation: int = 0
    flushes: int = field(default=0)

    def flush(self) -> None:
        self.keys.clear()
        self.attachments.clear()
        self.urls.clear()
        self.generation += 1
        self.flushes += 1

    def forget_attachment(self, attachment_id: str) -> None:
        self.attachments.pop(attachment_id)
        for method in ("GET", "HEAD"):
            self.urls.pop((attachment_id, method))
