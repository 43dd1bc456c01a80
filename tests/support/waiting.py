"""The one way the tests wait for something: poll a condition until it holds."""

from __future__ import annotations

import asyncio
import inspect
import secrets
import time
from collections.abc import Awaitable, Callable

import asyncpg

from service.data.caches import MISSING, HotPathCaches
from service.data.invalidation import CHANNEL


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, interval: float = 0.05
) -> None:
    """Call `condition` (plain or async) every `interval` seconds until it is true; fail
    if it is not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(interval)


async def changes_heard(conn: asyncpg.Connection, caches: HotPathCaches) -> None:
    """Wait until a live gateway's listener has applied every change committed so far.

    Notifications arrive in commit order: once a marker sent now has been applied, every
    change before it has been too, and none of them can overtake a lookup started after
    (which would rightly keep the lookup's answer, or a URL signed from it, out of the
    caches)."""
    marker = secrets.token_bytes(32)  # a token digest no key has
    caches.keys.put(marker, None)
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, f"key:{marker.hex()}")
    await eventually(lambda: caches.keys.peek(marker) is MISSING)
