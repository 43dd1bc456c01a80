"""Token buckets kept in Redis, so that every replica spends from the same ones.

Each request asks for its buckets at once (a key's and its workspace's, or an address's
failed attempts), and requests go to Redis together: one EVALSHA of one Lua script for a
whole batch, atomic, on Redis' own clock (`TIME`), so replicas' clocks never matter. One
batch is in flight at a time; the requests that arrive meanwhile make the next one, so
the busier the process, the more requests share a round trip. A request is admitted only
if every one of its buckets has a token, and then spends from all of them (or from none).

When Redis does not answer within the timeout, the batch's callers hear `SharedLimitsDown`
and fall back to their local buckets; no other request waits on Redis until a retry
interval has passed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

log = logging.getLogger(__name__)

# A bucket: its tokens and when they were counted, in a hash that expires once it would be
# full again (a full bucket forgotten is the same as a full bucket remembered).
KEY_PREFIX = "attachments-gateway:bucket:"

# ARGV[1]: the policies, "<name>,<rate per second>,<burst>;" each. ARGV[2]: the key prefix.
# ARGV[3...]: one request each, its asks as "<policy index>:<tokens to spend>:<subject>|..."
# (0 to spend: only look whether the bucket holds a token).
# Returns one string, a word per request: "0" (admitted), or "<ask index>:<level>" of its
# first bucket without a token. (Strings in, a string out: what costs the client least to
# encode and parse. The buckets' names are made here, so this is for one Redis, not a
# Redis Cluster.)
SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local policies = {}
for name, rate, burst in string.gmatch(ARGV[1], '([^,;]+),([^,;]+),([^,;]+);') do
  policies[#policies + 1] = {ARGV[2] .. name .. ':', tonumber(rate), tonumber(burst)}
end
local out = {}
for r = 3, #ARGV do
  local asks, refused = {}, '0'
  for index, spend, subject in string.gmatch(ARGV[r], '(%d+):(%d+):([^|]*)') do
    local policy = policies[tonumber(index)]
    local key = policy[1] .. subject
    local stored = redis.call('HMGET', key, 'tokens', 'at')
    local tokens = policy[3]
    if stored[1] then
      tokens = math.min(policy[3], tonumber(stored[1]) + (now - tonumber(stored[2])) * policy[2])
    end
    local cost = tonumber(spend)
    asks[#asks + 1] = {key, tokens, cost, policy}
    if refused == '0' and tokens < math.max(cost, 1) then
      refused = #asks - 1 .. ':' .. string.format('%.6f', tokens)
    end
  end
  if refused == '0' then
    for _, ask in ipairs(asks) do
      if ask[3] > 0 then
        local policy = ask[4]
        redis.call('HSET', ask[1], 'tokens', string.format('%.6f', ask[2] - ask[3]),
                   'at', string.format('%.6f', now))
        redis.call('PEXPIRE', ask[1], math.ceil(policy[3] / policy[2] * 1000) + 1000)
      end
    end
  end
  out[#out + 1] = refused
end
return table.concat(out, ' ')
"""


@dataclass(frozen=True, slots=True)
class Policy:
    """A kind of bucket: its name in Redis, refill rate per second and size."""

    name: str
    rate: float
    burst: int


class SharedLimitsDown(Exception):
    """Redis did not answer in time (or at all): use the local buckets."""


# One bucket a request needs: the index of its policy, how many tokens to spend (0: only
# look whether it holds one), and whose bucket it is (a key id, a workspace id, an address).
Ask = tuple[int, int, str]

# The answer to one request: None when admitted, else (position of the refusing bucket in
# its asks, that bucket's level in tokens).
Verdict = tuple[int, float] | None


class SharedBuckets:
    """The batching client of the buckets' script; one per process."""

    @classmethod
    def connect(
        cls, url: str, policies: Sequence[Policy], timeout: float, retry_after: float
    ) -> SharedBuckets:
        """A client of the Redis at `url` (it connects on first use)."""
        redis = Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        return cls(redis, policies, timeout, retry_after)

    def __init__(
        self, redis: Redis, policies: Sequence[Policy], timeout: float, retry_after: float
    ) -> None:
        self._redis = redis
        # Lua indexes from 1.
        self._policies = "".join(f"{p.name},{p.rate!r},{p.burst};" for p in policies)
        self._timeout = timeout
        self._retry_after = retry_after
        self._sha: str | None = None
        self._waiting: list[tuple[str, asyncio.Future[Verdict]]] = []
        # A flush is scheduled or a batch in flight: new requests wait for the next batch.
        self._busy = False
        self._running: set[asyncio.Task[None]] = set()
        # While Redis is down: the monotonic time before which nobody asks it again.
        self._down_until = 0.0
        self.fallbacks = 0

    @property
    def up(self) -> bool:
        return time.monotonic() >= self._down_until

    async def ask(self, asks: Sequence[Ask]) -> Verdict:
        """The verdict on one request's buckets, or SharedLimitsDown. Policies are
        numbered from 1, in the order given to the constructor."""
        if not self.up:
            self.fallbacks += 1
            raise SharedLimitsDown
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Verdict] = loop.create_future()
        self._waiting.append(("|".join(f"{p}:{spend:d}:{who}" for p, spend, who in asks), future))
        if not self._busy:
            self._busy = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        batch, self._waiting = self._waiting, []
        if not batch:
            self._busy = False
            return
        if not self.up:
            # The batch before found Redis down: those who waited for it fall back now,
            # rather than after a timeout of their own.
            self._fall_back(batch)
            self._busy = False
            return
        task = asyncio.get_running_loop().create_task(self._evaluate(batch))
        self._running.add(task)
        task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if task.cancelled():  # the app is stopping: nobody is left to answer
            for _, future in self._waiting:
                future.cancel()
            self._waiting, self._busy = [], False
            return
        self._flush()  # what arrived meanwhile, at once

    async def _evaluate(self, batch: list[tuple[str, asyncio.Future[Verdict]]]) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                reply = await self._run([self._policies, KEY_PREFIX, *(asks for asks, _ in batch)])
        except (RedisError, OSError, TimeoutError) as exc:
            self._went_down(exc)
            self._fall_back(batch)
            return
        for word, (_, future) in zip(reply.split(), batch, strict=True):
            if future.done():
                continue
            if word == b"0":
                future.set_result(None)
            else:
                position, _, level = word.partition(b":")
                future.set_result((int(position), float(level)))

    def _fall_back(self, batch: list[tuple[str, asyncio.Future[Verdict]]]) -> None:
        """Each request of `batch` is decided by its process's own buckets."""
        for _, future in batch:
            if not future.done():
                future.set_exception(SharedLimitsDown())
        self.fallbacks += len(batch)

    async def _run(self, args: list[str]) -> bytes:
        if self._sha is None:
            self._sha = await self._redis.script_load(SCRIPT)
        try:
            reply = await self._redis.evalsha(self._sha, 0, *args)
        except NoScriptError:  # Redis restarted and forgot it
            self._sha = await self._redis.script_load(SCRIPT)
            reply = await self._redis.evalsha(self._sha, 0, *args)
        if self._down_until:
            self._down_until = 0.0
            log.info("shared rate limits: Redis answers again; limits are cluster-wide")
        return bytes(reply)

    def _went_down(self, exc: BaseException) -> None:
        if self._down_until == 0.0:
            log.warning(
                "shared rate limits: Redis did not answer (%s); local limits for now",
                type(exc).__name__,
            )
        self._down_until = time.monotonic() + self._retry_after

    async def close(self) -> None:
        await self._redis.aclose()
