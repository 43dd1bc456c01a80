"""The app's key-usage recorder (`api_keys.last_used_at`), flushed in the background."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from ..data.pool import open_background_pool
from ..data.usage import FINAL_FLUSH_SECONDS, KeyUsage
from .config import SETTINGS
from .database import BACKGROUND_DATABASE
from .shutdown import finish_or_abort, stop_tasks

KEY_USAGE = web.AppKey("key_usage", KeyUsage)


async def key_usage_context(app: web.Application) -> AsyncIterator[None]:
    usage = app[KEY_USAGE] = KeyUsage(app[BACKGROUND_DATABASE])
    task = asyncio.create_task(usage.flush_forever())
    yield
    database = app[BACKGROUND_DATABASE]
    await stop_tasks(app, [task], database.pool.terminate)
    own = None
    if database.pool.is_closing():
        # The audit trail's last write (first: its rows are the record), given up on,
        # terminated the pool both use. This one is small, and what held the trail's up
        # (a lock on its table, say) may not hold it: it gets a pool of its own.
        database = own = await open_background_pool(app[SETTINGS])
    try:
        # Bounded: shutdown must not wait long on a slow database for a nicety.
        await finish_or_abort(
            app, usage.flush_at_exit(database), database.pool.terminate, FINAL_FLUSH_SECONDS, 0.5
        )
    finally:
        if own is not None:
            own.pool.terminate()  # (nothing of its is in flight any more)
