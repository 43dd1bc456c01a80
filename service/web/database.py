"""The app's database resources: the request pool, the background pool, batched lookups."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from ..data.lookups import AttachmentLookups
from ..data.pool import Database, close_pool, open_background_pool, open_request_pool
from .config import SETTINGS
from .shutdown import seconds_left

POOL_CLOSE_SECONDS = 5.0
POOL_CLOSE_MINIMUM = 0.5

DATABASE = web.AppKey("database", Database)
BACKGROUND_DATABASE = web.AppKey("background_database", Database)
ATTACHMENT_LOOKUPS = web.AppKey("attachment_lookups", AttachmentLookups)


async def database_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    request_db = app[DATABASE] = await open_request_pool(settings)
    background_db = app[BACKGROUND_DATABASE] = await open_background_pool(settings)
    yield
    for database in (request_db, background_db):
        budget = seconds_left(app, POOL_CLOSE_SECONDS)
        await close_pool(database.pool, budget, POOL_CLOSE_MINIMUM)


async def attachment_lookups_context(app: web.Application) -> AsyncIterator[None]:
    app[ATTACHMENT_LOOKUPS] = AttachmentLookups(app[DATABASE])
    yield
