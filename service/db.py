"""The connection pool and the request-path queries.

Every request-path query goes through `Database.fetchrow`, which bounds both the
wait for a connection and the query itself, and turns "the database is not there
right now" into a 503 instead of a hang or a 500.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp import web

from .keys import BACKGROUND_DATABASE, DATABASE, SETTINGS
from .problems import Problem
from .shutdown import seconds_left

log = logging.getLogger(__name__)

# Failures that mean "unavailable" rather than "our bug": connection refused or
# lost, timeouts, the server shutting down or out of connections.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,  # includes ConnectionDoesNotExistError
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.InsufficientResourcesError,  # class 53, e.g. too many connections
    asyncpg.OperatorInterventionError,  # class 57: shutdown, cannot connect now, query canceled
    asyncpg.InternalClientError,  # a connection left mid-error by a server going away
)

BACKGROUND_POOL_SIZE = 2
POOL_CLOSE_SECONDS = 5.0
POOL_CLOSE_MINIMUM = 0.5

KEY_BY_DIGEST = """
    SELECT k.id, k.workspace_id, k.scope, k.display_prefix, k.expires_at, w.api_access
    FROM api_keys k
    JOIN workspaces w ON w.id = k.workspace_id
    WHERE k.token_digest = $1
      AND k.revoked_at IS NULL
      AND (k.expires_at IS NULL OR k.expires_at > now())
"""

# The cold path of a download in one round trip: the key, its workspace's entitlement,
# and the attachment if (and only if) it is live and belongs to that same workspace.
KEY_AND_ATTACHMENT = """
    SELECT k.id, k.workspace_id, k.scope, k.display_prefix, k.expires_at, w.api_access,
           a.id AS attachment_id, a.bucket, a.object_key, a.filename, a.content_type,
           a.size_bytes, a.upload_pending
    FROM api_keys k
    JOIN workspaces w ON w.id = k.workspace_id
    LEFT JOIN attachments a
           ON a.id = $2 AND a.workspace_id = k.workspace_id AND a.deleted_at IS NULL
    WHERE k.token_digest = $1
      AND k.revoked_at IS NULL
      AND (k.expires_at IS NULL OR k.expires_at > now())
"""


@dataclass(frozen=True, slots=True)
class Database:
    pool: asyncpg.Pool
    acquire_timeout: float

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        rows = await self.fetch(query, *args)
        return rows[0] if rows else None

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        try:
            async with self.pool.acquire(timeout=self.acquire_timeout) as conn:
                try:
                    return await conn.fetch(query, *args)  # type: ignore[no-any-return]
                except asyncpg.InternalClientError:
                    # A connection the server ended with an error (a restart's FATAL
                    # "terminating connection") can come back from the pool before asyncpg
                    # has seen its socket close: it then refuses every query. Drop it.
                    conn.terminate()
                    raise
        except UNAVAILABLE_ERRORS as exc:
            raise unavailable(exc) from exc


def unavailable(exc: BaseException) -> Problem:
    log.warning("database unavailable: %s", type(exc).__name__)
    return Problem("service_unavailable")


async def find_key(db: Database, token_digest: bytes) -> asyncpg.Record | None:
    """The live (not revoked, not expired) key with this digest, with its workspace's flag."""
    return await db.fetchrow(KEY_BY_DIGEST, token_digest)


async def find_key_and_attachment(
    db: Database, token_digest: bytes, attachment_id: uuid.UUID
) -> asyncpg.Record | None:
    """`find_key`, plus the columns of the attachment when the key's workspace owns it."""
    return await db.fetchrow(KEY_AND_ATTACHMENT, token_digest, attachment_id)


async def reset_after_use(conn: asyncpg.Connection) -> None:
    """asyncpg's default reset costs a round trip on every release (UNLISTEN, RESET ALL...).
    The request path only runs single statements, which leave no transaction, cursor,
    LISTEN or setting behind; anything else gets the full reset."""
    if conn.is_in_transaction():
        await conn.reset()


async def database_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # min_size=0 by default, so the service starts (and answers 401/404/503) even
    # while the database is down; connections are made on first use and kept.
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
        timeout=settings.db_connect_timeout,
        command_timeout=settings.db_statement_timeout,
        reset=reset_after_use,
    )
    app[DATABASE] = Database(pool, settings.db_acquire_timeout)
    # Background writes (key usage, the audit trail, its partitions) get connections of
    # their own: they must never take one a download is waiting for.
    background = await asyncpg.create_pool(
        settings.database_url,
        min_size=0,
        max_size=BACKGROUND_POOL_SIZE,
        timeout=settings.db_connect_timeout,
        command_timeout=30,
    )
    app[BACKGROUND_DATABASE] = Database(background, settings.db_acquire_timeout)
    yield
    for closing in (pool, background):
        budget = seconds_left(app, POOL_CLOSE_SECONDS)
        if budget < POOL_CLOSE_MINIMUM:  # no time for goodbyes: drop the connections
            closing.terminate()
            continue
        try:
            await asyncio.wait_for(closing.close(), budget)
        except TimeoutError:
            log.warning("database pool did not close in time; terminating it")
            closing.terminate()
