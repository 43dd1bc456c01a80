"""The app's hot-path caches, and the listener that keeps them honest across instances."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial

from aiohttp import web

from ..core.errors import GatewayError
from ..core.principal import Principal
from ..core.settings import Settings
from ..data.api_keys import find_keys
from ..data.caches import MISSING, HotPathCaches, TTLCache
from ..data.invalidation import ListenerStatus, listen
from ..data.lookups import AttachmentLookups
from ..data.pool import Database
from .config import SETTINGS
from .database import ATTACHMENT_LOOKUPS, DATABASE

log = logging.getLogger(__name__)

# The last part of a key or attachment entry's TTL in which it is renewed in the
# background while every request keeps using it (see TTLCache); invalidations still
# remove it at once. A third: when the loop is saturated the refresher's own queries wait
# their turn too, and entries filled together (a warm-up) come due together; with 2 s of
# 30, thousands ran out before their renewal and the requests for them waited on the
# database, the slowest percent at 1,024 connections (docs/performance.md).
REFRESH_SHARE = 1 / 3
# How often the refresher looks for entries due; well inside the lease.
REFRESH_INTERVAL = 0.1
# Renewed per query. One query, not one per key: when the loop is saturated each round
# trip waits a whole turn or two, and with thousands of connections a turn takes most of a
# second, so a hundred keys renewed sixteen at a time ran out before their renewal and
# every request for them went to the database at once (docs/performance.md).
ATTACHMENTS_PER_SLICE = 256
KEYS_PER_SLICE = 256
# Slices renewed at once: at most a quarter of the pool's connections, the rest are the
# requests'.
CONCURRENT_SLICES = 8

CACHES = web.AppKey("caches", HotPathCaches)
LISTENER_STATUS = web.AppKey("listener_status", ListenerStatus)


def create_caches(settings: Settings) -> HotPathCaches:
    """Off until the invalidation listener is connected (`invalidation_context`)."""
    ttl = settings.cache_ttl_seconds
    return HotPathCaches(
        keys=TTLCache(settings.key_cache_size, ttl, ttl * REFRESH_SHARE),
        attachments=TTLCache(settings.attachment_cache_size, ttl, ttl * REFRESH_SHARE),
        # No lease: a URL past its reuse window must not be handed out again.
        urls=TTLCache(settings.url_cache_size, settings.url_reuse_window),
    )


async def invalidation_context(app: web.Application) -> AsyncIterator[None]:
    status = app[LISTENER_STATUS] = ListenerStatus()
    task = asyncio.create_task(listen(app[SETTINGS], app[CACHES], app[DATABASE], status))
    yield
    # Asked again until it stops: Python 3.11's wait_for can lose a cancellation that
    # meets its own timeout (3.12 rewrote it), and the listener waits on many of them.
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def refresh_context(app: web.Application) -> AsyncIterator[None]:
    """Renews the key and attachment entries that requests found due (TTLCache)."""
    task = asyncio.create_task(refresh_forever(app[CACHES], app[DATABASE], app[ATTACHMENT_LOOKUPS]))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def refresh_forever(caches: HotPathCaches, db: Database, lookups: AttachmentLookups) -> None:
    while True:
        await asyncio.sleep(REFRESH_INTERVAL)
        keys, attachments = caches.keys.take_due(), caches.attachments.take_due()
        if not (keys or attachments) or not caches.live:
            continue
        try:
            await refresh(caches, db, lookups, keys, attachments)
        except GatewayError as error:
            # The entries run out at their TTL, and requests then ask the database
            # themselves (and get its 503s): nothing is served stale meanwhile.
            log.debug("cache refresh failed: %s", error)


async def refresh(
    caches: HotPathCaches,
    db: Database,
    lookups: AttachmentLookups,
    keys: list[bytes],
    attachments: list[str],
) -> None:
    """Look them up again and store what was read, unless an invalidation came meanwhile.

    In slices of one query each, a few at a time: entries filled together (a warm-up, a
    flush) come due together, and renewing ten thousand in one go would stall every
    request while their rows were read; one slice after another, each waiting its turns
    of a saturated loop, outlasted the lease."""
    renewals = [
        *(
            partial(renew_keys, caches, db, keys[n : n + KEYS_PER_SLICE])
            for n in range(0, len(keys), KEYS_PER_SLICE)
        ),
        *(
            partial(renew_attachments, caches, lookups, attachments[n : n + ATTACHMENTS_PER_SLICE])
            for n in range(0, len(attachments), ATTACHMENTS_PER_SLICE)
        ),
    ]
    slots = asyncio.Semaphore(max(1, min(CONCURRENT_SLICES, db.pool.get_max_size() // 4)))

    async def in_turn(renew: Callable[[], Awaitable[None]]) -> None:
        # The coroutine is made only once it may run: cancelled while waiting (at
        # shutdown), no renewal is left never awaited.
        async with slots:
            await renew()

    # Every slice runs to its end, failed or not, before the next round of renewals.
    outcomes = await asyncio.gather(*map(in_turn, renewals), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


async def renew_keys(caches: HotPathCaches, db: Database, digests: list[bytes]) -> None:
    generation = caches.generation
    found = await find_keys(db, digests)
    for digest in digests:
        if caches.may_store_key(generation, digest):
            row = found.get(digest)
            caches.keys.put(digest, Principal.from_row(row) if row is not None else None)


async def renew_attachments(
    caches: HotPathCaches, lookups: AttachmentLookups, attachment_ids: list[str]
) -> None:
    askers = {}
    for attachment_id in attachment_ids:
        cached = caches.attachments.peek(attachment_id)
        if cached is not MISSING:
            # The targets only: a None ends when it would for a missing id (see
            # `remember_attachment`).
            for workspace, target, _ in reversed(cached):  # (stored back in the same order)
                if target is not None:
                    askers[uuid.UUID(attachment_id), uuid.UUID(int=workspace)] = attachment_id
    if not askers:
        return
    generation = caches.generation
    found = await lookups.find_many(list(askers))
    for wanted, attachment_id in askers.items():
        if caches.may_store_attachment(generation, attachment_id):
            caches.remember_attachment(attachment_id, wanted[1], found.get(wanted))
