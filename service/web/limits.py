"""Abuse limits: token buckets per key, per workspace, and per client address for failed
authentication and for secret-scanning reports, each answered with 429 `rate_limited`.

A bucket holds up to `burst` requests and refills at `rate` per second. With
RATE_LIMIT_BACKEND=local the buckets are per process: N replicas (or workers) allow up to
N times as much. With RATE_LIMIT_BACKEND=redis they live in Redis (data/shared_limits.py),
shared by every replica, one round trip per event-loop iteration for all its requests;
while Redis does not answer within REDIS_TIMEOUT_SECONDS, each process falls back to its
local buckets (docs/operations.md, "Scaling out").

429s carry `Retry-After` and the IETF rate-limit fields (draft-ietf-httpapi-ratelimit-
headers): `RateLimit-Policy: "key";q=<burst>;w=<seconds to refill>` and
`RateLimit: "key";r=<remaining>;t=<seconds until one more>`. Redirects never carry them:
a client that sees a low quota on a 307 may wait before following it, and the URL's
lifetime runs meanwhile.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator, Hashable

from aiohttp import web

from ..data.shared_limits import Ask, Policy, SharedBuckets, SharedLimitsDown
from .config import SETTINGS
from .problems import Problem

# The policies' numbers in the shared buckets' script (RateLimits.shared_policies).
FAILED_AUTH, KEY, WORKSPACE, REPORTS = 1, 2, 3, 4
# After Redis failed to answer, the local buckets decide for this long before it is asked again.
SHARED_RETRY_SECONDS = 1.0

# Buckets remembered per limiter; the least recently used go first (a full bucket
# forgotten is the same as a full bucket remembered).
MAX_BUCKETS = 100_000


class TokenBuckets:
    """Named buckets of one policy (`name` in the RateLimit fields)."""

    def __init__(self, name: str, rate: float, burst: int) -> None:
        self.name = name
        self.rate = rate
        self.burst = burst
        self.enabled = rate > 0
        # key -> (tokens, at). A plain dict in recency order: a bucket written is taken out
        # and put back at the end, so the first one is the least recently used.
        self._buckets: dict[Hashable, tuple[float, float]] = {}

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

    def cost(self, requests: int) -> int:
        """What `requests` requests at once spend: one token each, but never more than the
        bucket holds (else a batch bigger than the burst could never be admitted)."""
        return min(requests, self.burst)

    def cost_beyond(self, requests: int, counted: int) -> int:
        """What `requests` cost beyond the `counted` already spent for the same request:
        the two together never more than the bucket holds."""
        return self.cost(requests) - self.cost(counted)

    def take(self, key: Hashable, requests: int = 1, now: float | None = None) -> bool:
        """Spend a token per request if there are that many (`now`: the caller's clock
        read, when it takes from several policies at once). Inlined: it runs twice on
        every request."""
        if now is None:
            now = time.monotonic()
        buckets = self._buckets
        burst = self.burst
        # Taken out and put back, taken from or not: the bucket becomes the most recent,
        # so that one refused again and again is not the one forgotten (a fresh burst).
        entry = buckets.pop(key, None)
        if entry is None:
            tokens = float(burst)
        else:
            tokens = min(float(burst), entry[0] + (now - entry[1]) * self.rate)
        cost = requests if requests < burst else burst
        if tokens < cost:
            if entry is not None:
                buckets[key] = entry
            return False
        buckets[key] = (tokens - cost, now)
        if len(buckets) > MAX_BUCKETS:
            del buckets[next(iter(buckets))]
        return True

    def give_back(self, key: Hashable, requests: int, now: float) -> None:
        """Undo a `take` made at `now`: another policy refused the same request."""
        entry = self._buckets.get(key)
        if entry is not None:
            self._buckets[key] = (min(float(self.burst), entry[0] + self.cost(requests)), now)

    def set_level(self, key: Hashable, tokens: float, now: float) -> None:
        """Hold `tokens` in the key's bucket as of `now`: what a shared bucket said."""
        self._buckets.pop(key, None)
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > MAX_BUCKETS:
            del self._buckets[next(iter(self._buckets))]

    def has_token(self, key: Hashable) -> bool:
        level = self._level(key, time.monotonic())
        if level >= self.burst:  # refilled: forgetting it changes nothing, lets `active` end
            self._buckets.pop(key, None)
        return level >= 1

    def refused(self, key: Hashable, requests: int = 1) -> Problem:
        """The 429 for `key`'s bucket, too low for `requests`."""
        return self.refusal(self._level(key, time.monotonic()), requests)

    def refusal(self, tokens: float, requests: int = 1) -> Problem:
        """The 429 for a bucket of this policy holding `tokens`, fewer than `requests`
        cost."""
        wait = max(1, math.ceil((self.cost(requests) - tokens) / self.rate))
        refill = max(1, math.ceil(self.burst / self.rate))
        headers = {
            "Retry-After": str(wait),
            "RateLimit-Policy": f'"{self.name}";q={self.burst};w={refill}',
            "RateLimit": f'"{self.name}";r={max(0, math.floor(tokens))};t={wait}',
        }
        return Problem("rate_limited", headers, reason=self.name)


class RateLimits:
    def __init__(
        self,
        per_key: tuple[float, int],
        per_workspace: tuple[float, int],
        failed_auth_per_address: tuple[float, int],
        reports_per_address: tuple[float, int],
    ) -> None:
        self.keys = TokenBuckets("key", *per_key)
        self.workspaces = TokenBuckets("workspace", *per_workspace)
        self.failed_auth = TokenBuckets("failed-auth", *failed_auth_per_address)
        # Every secret-scanning report counts, signed or not: a replayed signed report
        # costs a database write, an unsigned one a signature check.
        self.reports = TokenBuckets("secret-scanning", *reports_per_address)
        # The buckets in Redis (RATE_LIMIT_BACKEND=redis), once the app has started.
        self.shared: SharedBuckets | None = None
        # With shared limits, the addresses Redis refused for their failed attempts, each
        # with its bucket as Redis told it: until that holds a token again, this process
        # refuses the address before reading its token, as local limits do. Otherwise
        # each guess of a flood would still cost a key lookup, and a miss in the key cache.
        self.refused_addresses = TokenBuckets("failed-auth", *failed_auth_per_address)

    async def admit_shared(
        self,
        key_id: Hashable,
        workspace_id: Hashable,
        address: str | None,
        requests: int = 1,
        counted: int = 0,
    ) -> None:
        """`admit` on the cluster's buckets; the address's failed attempts are looked at
        here, with the rest, since no process alone knows them (so an address that used
        them up is refused with a right token as with a wrong one). With `counted`, as
        `admit_beyond`: only what the request costs beyond that."""
        assert self.shared is not None
        asks: list[Ask] = []
        policies: list[TokenBuckets] = []
        for number, policy, subject in (
            (FAILED_AUTH, self.failed_auth, address),
            (KEY, self.keys, key_id),
            (WORKSPACE, self.workspaces, workspace_id),
        ):
            if not policy.enabled:
                continue
            if number == FAILED_AUTH:  # only looked at, never spent here
                if counted:  # (looked at already, when the request was counted)
                    continue
                spend = 0
            elif counted:
                spend = policy.cost_beyond(requests, counted)
                if spend < 1:
                    continue
            else:
                spend = policy.cost(requests)
            asks.append((number, spend, str(subject)))
            policies.append(policy)
        if not asks:
            return
        try:
            verdict = await self.shared.ask(asks)
        except SharedLimitsDown:
            if counted:
                self.admit_beyond(key_id, workspace_id, requests, counted)
            else:
                self.check_address(address)
                self.admit(key_id, workspace_id, requests)
            return
        if verdict is not None:
            position, tokens = verdict
            refusing = policies[position]
            if refusing is self.failed_auth:
                self.refused_addresses.set_level(address, tokens, time.monotonic())
                raise refusing.refusal(tokens)
            # A retry spends what it was counted as again: the wait is for the whole.
            raise refusing.refusal(tokens, requests if counted else asks[position][1])

    async def failed_shared(self, address: str | None) -> None:
        """`failed` on the cluster's bucket of the address; the 429 if it is used up."""
        assert self.shared is not None
        if not self.failed_auth.enabled:
            return
        try:
            verdict = await self.shared.ask([(FAILED_AUTH, 1, str(address))])
        except SharedLimitsDown:
            self.failed(address)
            return
        if verdict is not None:
            self.refused_addresses.set_level(address, verdict[1], time.monotonic())
            raise self.failed_auth.refusal(verdict[1])

    async def admit_report(self, address: str | None) -> None:
        """Spend one secret-scanning report of the address (of the cluster's bucket when
        limits are shared), or raise the 429."""
        reports = self.reports
        if not reports.enabled:
            return
        if self.shared is not None:
            try:
                verdict = await self.shared.ask([(REPORTS, 1, str(address))])
            except SharedLimitsDown:
                pass  # this process's bucket decides meanwhile
            else:
                if verdict is not None:
                    raise reports.refusal(verdict[1])
                return
        if not reports.take(address):
            raise reports.refused(address)

    def shared_policies(self) -> list[Policy]:
        """The policies as SharedBuckets numbers them (FAILED_AUTH, KEY, WORKSPACE, REPORTS)."""
        return [
            Policy(buckets.name, buckets.rate, buckets.burst)
            for buckets in (self.failed_auth, self.keys, self.workspaces, self.reports)
        ]

    def admit(self, key_id: Hashable, workspace_id: Hashable, requests: int = 1) -> None:
        """Spend `requests` of the key's and of its workspace's, or raise the 429."""
        now = time.monotonic()
        if self.keys.enabled and not self.keys.take(key_id, requests, now):
            raise self.keys.refused(key_id, requests)
        if self.workspaces.enabled and not self.workspaces.take(workspace_id, requests, now):
            # Not charged to the key: it would run dry on requests it never made, and be
            # refused on its own once the workspace refilled (Redis's script agrees).
            if self.keys.enabled:
                self.keys.give_back(key_id, requests, now)
            raise self.workspaces.refused(workspace_id, requests)

    def admit_beyond(
        self, key_id: Hashable, workspace_id: Hashable, requests: int, counted: int
    ) -> None:
        """`admit` for a request already admitted as `counted` that turned out to cost
        `requests` (an upload's part URLs): each bucket is charged the difference, so that
        the request costs no more in all than the bucket holds."""
        now = time.monotonic()
        keys, workspaces = self.keys, self.workspaces
        key_spend = keys.cost_beyond(requests, counted) if keys.enabled else 0
        # Refused, the wait is for the whole request: a retry spends what it was counted
        # as again before this.
        if key_spend > 0 and not keys.take(key_id, key_spend, now):
            raise keys.refused(key_id, requests)
        workspace_spend = workspaces.cost_beyond(requests, counted) if workspaces.enabled else 0
        if workspace_spend > 0 and not workspaces.take(workspace_id, workspace_spend, now):
            if key_spend > 0:
                keys.give_back(key_id, key_spend, now)
            raise workspaces.refused(workspace_id, requests)

    def check_address(self, address: str | None) -> None:
        """An address that has used up its failed attempts is refused before its token is
        even read: otherwise a guesser would learn which guess was right."""
        if self.failed_auth.enabled and not self.failed_auth.has_token(address):
            raise self.failed_auth.refused(address)

    def check_refused_address(self, address: str | None) -> None:
        """`check_address` with shared limits: by what Redis said when it refused the
        address (`refused_addresses`), with no round trip."""
        if not self.refused_addresses.has_token(address):
            raise self.refused_addresses.refused(address)

    def failed(self, address: str | None) -> None:
        if self.failed_auth.enabled:
            self.failed_auth.take(address)


RATE_LIMITS = web.AppKey("rate_limits", RateLimits)


async def shared_limits_context(app: web.Application) -> AsyncIterator[None]:
    """With RATE_LIMIT_BACKEND=redis, the limits' buckets in Redis for the app's life."""
    settings = app[SETTINGS]
    if settings.rate_limit_backend != "redis":
        yield
        return
    assert settings.redis_url is not None  # (Settings checks it)
    limits = app[RATE_LIMITS]
    shared = SharedBuckets.connect(
        settings.redis_url,
        limits.shared_policies(),
        settings.redis_timeout_seconds,
        SHARED_RETRY_SECONDS,
    )
    limits.shared = shared
    try:
        yield
    finally:
        app[RATE_LIMITS].shared = None
        with contextlib.suppress(Exception):
            await shared.close()
