"""The app's hot-path caches, and the listener that keeps them honest across instances."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from ..core.settings import Settings
from ..data.caches import HotPathCaches, TTLCache
from ..data.invalidation import ListenerStatus, listen
from .config import SETTINGS
from .database import DATABASE

# How long before its TTL ends a key or attachment entry is refreshed by one request
# while the others keep using it (see TTLCache). Invalidations still remove it at once.
REFRESH_LEASE = 2.0

CACHES = web.AppKey("caches", HotPathCaches)
LISTENER_STATUS = web.AppKey("listener_status", ListenerStatus)


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
