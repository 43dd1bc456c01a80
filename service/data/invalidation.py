"""Cross-instance cache invalidation: one dedicated connection LISTENs for row changes.

A pooled connection would lose its listener when recycled (asyncpg#283), so this one is
our own. While it is down, the caches are flushed and bypassed; when it is back, they
are flushed again, since notifications sent meanwhile are lost. A periodic ping notices
a silently dead TCP connection instead of waiting for the kernel's timeout (asyncpg#519).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

import asyncpg

from ..core.settings import Settings
from .caches import HotPathCaches
from .pool import UNAVAILABLE_ERRORS

log = logging.getLogger(__name__)

CHANNEL = "gateway_invalidate"
APPLICATION_NAME = "attachments-gateway invalidation listener"
PING_INTERVAL = 2.0
PING_TIMEOUT = 2.0
MAX_BACKOFF = 5.0


def apply_notification(caches: HotPathCaches, payload: str) -> None:
    """A row changed somewhere (migrations' triggers send `key:<digest hex>`,
    `attachment:<id>` or `workspace:<id>`): forget what it makes stale."""
    kind, _, value = payload.partition(":")
    try:
        if kind == "key":
            caches.forget_key(bytes.fromhex(value))
        elif kind == "attachment":
            caches.forget_attachment(str(uuid.UUID(value)))
        else:  # a workspace (its entitlement) or anything unknown: forget all keys
            caches.forget_keys()
    except ValueError:
        caches.flush()


async def listen(settings: Settings, caches: HotPathCaches) -> None:
    """Keep a LISTEN connection up for as long as the app runs."""
    backoff = 0.1
    while True:
        try:
            conn = await asyncpg.connect(
                settings.database_url,
                timeout=settings.db_connect_timeout,
                server_settings={"application_name": APPLICATION_NAME},
            )
        except UNAVAILABLE_ERRORS as exc:
            log.warning("invalidation listener cannot connect: %s", type(exc).__name__)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
            continue
        backoff = 0.1
        await _listen_on(conn, caches)
        log.info("caches off until the invalidation listener reconnects")


async def _listen_on(conn: asyncpg.Connection, caches: HotPathCaches) -> None:
    """Serve one connection until it is lost; the caches are on only meanwhile."""
    lost = asyncio.Event()

    def on_lost(_conn: object) -> None:
        caches.live = False
        caches.flush()
        lost.set()

    conn.add_termination_listener(on_lost)
    try:
        await conn.add_listener(CHANNEL, lambda *args: apply_notification(caches, args[3]))
        caches.flush()  # whatever changed while nobody listened
        caches.live = True
        log.info("invalidation listener connected; caches on")
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), PING_INTERVAL)
            if not lost.is_set():
                await conn.fetchval("SELECT 1", timeout=PING_TIMEOUT)
    except UNAVAILABLE_ERRORS as exc:
        log.warning("invalidation listener lost: %s", type(exc).__name__)
    finally:
        on_lost(conn)
        conn.terminate()
