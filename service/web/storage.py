"""The app's object storage: the signing client for the app's life, and its probe."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from ..storage.client import Storage, open_storage
from ..storage.objects import ReadBacks
from ..storage.probe import probing
from .config import SETTINGS

log = logging.getLogger(__name__)

STORAGE = web.AppKey("storage", Storage)
READ_BACKS = web.AppKey("read_backs", ReadBacks)


async def storage_context(app: web.Application) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        storage = await open_storage(app[SETTINGS], stack)
        if storage.unavailable_reason:
            log.warning("object storage not configured: %s", storage.unavailable_reason)
        app[STORAGE] = storage
        app[READ_BACKS] = ReadBacks()
        async with probing(storage, app[SETTINGS]):
            yield
