"""The app's hot-path caches, and the listener that keeps them honest across instances."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator

from aiohttp import web

from ..core.errors import GatewayError
from ..core.principal import Principal
from ..core.settings import Settings
from ..data.api_keys import find_key
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
# Renewed per query (attachments) or per turn of concurrent queries (keys).
ATTACHMENTS_PER_SLICE = 256
KEYS_PER_SLICE = 16

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

    In slices, handing the loop back between them: entries filled together (a warm-up,
    a flush) come due together, and renewing ten thousand in one go would stall every
    request for as long as that takes."""
    for start in range(0, len(keys), KEYS_PER_SLICE):
        digests = keys[start : start + KEYS_PER_SLICE]
        generation = caches.generation
        rows = await asyncio.gather(*(find_key(db, digest) for digest in digests))
        if caches.may_store(generation):
            for digest, row in zip(digests, rows, strict=True):
                caches.keys.put(digest, Principal.from_row(row) if row is not None else None)
    for start in range(0, len(attachments), ATTACHMENTS_PER_SLICE):
        owners = {}
        for attachment_id in attachments[start : start + ATTACHMENTS_PER_SLICE]:
            cached = caches.attachments.peek(attachment_id)
            if cached is not MISSING:
                owners[uuid.UUID(attachment_id), uuid.UUID(int=cached[0])] = attachment_id
        generation = caches.generation
        found = await lookups.find_many(list(owners))
        if caches.may_store(generation):
            for wanted, attachment_id in owners.items():
                caches.remember_attachment(attachment_id, wanted[1], found.get(wanted))
