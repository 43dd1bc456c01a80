"""The app's hot-path caches, and the listener that keeps them honest across instances."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from ..core.settings import Settings
from ..data.caches import HotPathCaches, TTLCache
from ..data.invalidation import listen
from .config import SETTINGS

# How long before its TTL ends a key or attachment entry is refreshed by one request
# while the others keep using it (see TTLCache). Invalidations still remove it at once.
REFRESH_LEASE = 2.0

CACHES = web.AppKey("caches", HotPathCaches)


def create_caches(settings: Settings) -> HotPathCaches:
    """Off until the invalidation listener is connected (`invalidation_context`)."""
    return HotPathCaches(
        keys=TTLCache(settings.key_cache_size, settings.cache_ttl_seconds, REFRESH_LEASE),
        attachments=TTLCache(
            settings.attachment_cache_size, settings.cache_ttl_seconds, REFRESH_LEASE
        ),
        # No lease: a URL past its reuse window must not be handed out again.
        urls=TTLCache(settings.url_cache_size, settings.url_reuse_window),
    )


async def invalidation_context(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(listen(app[SETTINGS], app[CACHES]))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
