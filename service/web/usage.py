"""The app's key-usage recorder (`api_keys.last_used_at`), flushed in the background."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from ..data.usage import FINAL_FLUSH_SECONDS, KeyUsage
from .database import BACKGROUND_DATABASE
from .shutdown import finish_or_abort, stop_tasks

KEY_USAGE = web.AppKey("key_usage", KeyUsage)


async def key_usage_context(app: web.Application) -> AsyncIterator[None]:
    usage = app[KEY_USAGE] = KeyUsage(app[BACKGROUND_DATABASE])
    task = asyncio.create_task(usage.flush_forever())
    yield
    pool = app[BACKGROUND_DATABASE].pool
    await stop_tasks(app, [task], pool.terminate)
    # Bounded: shutdown must not wait long on a slow database for a nicety.
    await finish_or_abort(app, usage.flush(), pool.terminate, FINAL_FLUSH_SECONDS, 0.5)
