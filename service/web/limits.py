"""Abuse limits: token buckets per key, per workspace, and for failed authentication per
client address, each answered with 429 `rate_limited`.

A bucket holds up to `burst` requests and refills at `rate` per second. The limits are
per process: N instances (or workers) allow up to N times as much, the usual trade for
a gateway with no shared state on the hot path (see docs/api.md, "Abuse limits").

429s carry `Retry-After` and the IETF rate-limit fields (draft-ietf-httpapi-ratelimit-
headers): `RateLimit-Policy: "key";q=<burst>;w=<seconds to refill>` and
`RateLimit: "key";r=<remaining>;t=<seconds until one more>`. Redirects never carry them:
a client that sees a low quota on a 307 may wait before following it, and the URL's
lifetime runs meanwhile.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Hashable

from aiohttp import web

from .problems import Problem

# Buckets remembered per limiter; the least recently used go first (a full bucket
# forgotten is the same as a full bucket remembered).
MAX_BUCKETS = 100_000


class TokenBuckets:
    """Named buckets of one policy (`name` in the RateLimit fields)."""

    def __init__(self, name: str, rate: float, burst: int) -> None:
        self.name = name
        self.rate = rate
        self.burst = burst
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    @property
    def active(self) -> bool:
        """Some bucket is remembered: without any, every caller has its whole burst."""
        return bool(self._buckets)

    def _level(self, key: Hashable, now: float) -> float:
        entry = self._buckets.get(key)
        if entry is None:
            return float(self.burst)
        tokens, at = entry
        return min(float(self.burst), tokens + (now - at) * self.rate)

    def take(self, key: Hashable) -> bool:
        """Spend one token if there is one."""
        now = time.monotonic()
        tokens = self._level(key, now)
        if tokens < 1:
            return False
        self._store(key, tokens - 1, now)
        return True

    def has_token(self, key: Hashable) -> bool:
        level = self._level(key, time.monotonic())
        if level >= self.burst:  # refilled: forgetting it changes nothing, lets `active` end
            self._buckets.pop(key, None)
        return level >= 1

    def _store(self, key: Hashable, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        if len(self._buckets) > MAX_BUCKETS:
            self._buckets.popitem(last=False)

    def refused(self, key: Hashable) -> Problem:
        """The 429 for `key`'s empty bucket."""
        tokens = self._level(key, time.monotonic())
        wait = max(1, math.ceil((1 - tokens) / self.rate))
        refill = max(1, math.ceil(self.burst / self.rate))
        headers = {
            "Retry-After": str(wait),
            "RateLimit-Policy": f'"{self.name}";q={self.burst};w={refill}',
            "RateLimit": f'"{self.name}";r=0;t={wait}',
        }
        return Problem("rate_limited", headers, reason=self.name)


class RateLimits:
    def __init__(
        self,
        per_key: tuple[float, int],
        per_workspace: tuple[float, int],
        failed_auth_per_address: tuple[float, int],
    ) -> None:
        self.keys = TokenBuckets("key", *per_key)
        self.workspaces = TokenBuckets("workspace", *per_workspace)
        self.failed_auth = TokenBuckets("failed-auth", *failed_auth_per_address)

    def admit(self, key_id: Hashable, workspace_id: Hashable) -> None:
        """Spend a request of the key and of its workspace, or raise the 429."""
        if self.keys.enabled and not self.keys.take(key_id):
            raise self.keys.refused(key_id)
        if self.workspaces.enabled and not self.workspaces.take(workspace_id):
            raise self.workspaces.refused(workspace_id)

    def check_address(self, address: str | None) -> None:
        """An address that has used up its failed attempts is refused before its token is
        even read: otherwise a guesser would learn which guess was right."""
        if self.failed_auth.enabled and not self.failed_auth.has_token(address):
            raise self.failed_auth.refused(address)

    def failed(self, address: str | None) -> None:
        if self.failed_auth.enabled:
            self.failed_auth.take(address)


RATE_LIMITS = web.AppKey("rate_limits", RateLimits)
