"""The connection pools, and the one bounded way the request path queries.

Every request-path query goes through `Database.fetch`, which bounds both the wait for a
connection and the query itself, and turns "the database is not there right now" into
`DatabaseUnavailable` (a 503 to the client) instead of a hang or a 500.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import asyncpg

from ..core.errors import DatabaseUnavailable
from ..core.settings import Settings

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

# What Database.fetch lets through to its caller, who expects it.
PASSED_ON = (asyncpg.IntegrityConstraintViolationError,)

BACKGROUND_POOL_SIZE = 2


@dataclass(frozen=True, slots=True)
class Database:
    pool: asyncpg.Pool
    acquire_timeout: float

    @property
    def saturated(self) -> bool:
        """Every connection the pool may hold is open and in use: a wait for one that timed
        out was overload, not a database out of reach."""
        pool = self.pool
        idle: int = pool.get_idle_size()
        return idle == 0 and bool(pool.get_size() >= pool.get_max_size())

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
        except PASSED_ON:
            raise  # the caller's to decide (a foreign key naming a row that went away)
        except asyncpg.PostgresError as exc:
            # Anything else the server or the pooler in front of it refuses (a prepared
            # statement PgBouncer lost, say) leaves the database unusable to this request:
            # a 503, never a 500. Its class names the cause in the log.
            raise unavailable(exc, "database error") from exc


def unavailable(exc: BaseException, what: str = "database unavailable") -> DatabaseUnavailable:
    """The domain error for `exc`, logged by its class only (its text may hold data)."""
    log.warning("%s: %s", what, type(exc).__name__)
    return DatabaseUnavailable(type(exc).__name__)


async def reset_after_use(conn: asyncpg.Connection) -> None:
    """asyncpg's default reset costs a round trip on every release (UNLISTEN, RESET ALL...).
    The request path only runs single statements, which leave no transaction, cursor,
    LISTEN or setting behind; anything else gets the full reset."""
    if conn.is_in_transaction():
        await conn.reset()


async def connect(settings: Settings, *, direct: bool = False) -> asyncpg.Connection:
    """One connection outside the pools (the CLI's): through DATABASE_URL as the pools
    connect, or `direct`ly to Postgres (DATABASE_DIRECT_URL) for a session of its own."""
    if direct:
        return await asyncpg.connect(
            settings.direct_database_url, timeout=settings.db_connect_timeout
        )
    return await asyncpg.connect(
        settings.database_url,
        timeout=settings.db_connect_timeout,
        statement_cache_size=settings.db_statement_cache_size,
    )


async def open_request_pool(settings: Settings) -> Database:
    """The request path's pool. min_size=0 by default, so the service starts (and answers
    401/404/503) even while the database is down; connections are made on first use."""
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
        timeout=settings.db_connect_timeout,
        command_timeout=settings.db_statement_timeout,
        statement_cache_size=settings.db_statement_cache_size,
        reset=reset_after_use,
    )
    return Database(pool, settings.db_acquire_timeout)


async def open_background_pool(settings: Settings) -> Database:
    """Background writes (key usage, the audit trail, its partitions) get connections of
    their own: they must never take one a download is waiting for."""
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=0,
        max_size=BACKGROUND_POOL_SIZE,
        timeout=settings.db_connect_timeout,
        command_timeout=30,
        statement_cache_size=settings.db_statement_cache_size,
    )
    return Database(pool, settings.db_acquire_timeout)


async def close_pool(pool: asyncpg.Pool, budget: float, minimum: float) -> None:
    """Close politely within `budget` seconds; below `minimum`, or past it, terminate."""
    if budget < minimum:  # no time for goodbyes: drop the connections
        pool.terminate()
        return
    try:
        await asyncio.wait_for(pool.close(), budget)
    except TimeoutError:
        log.warning("database pool did not close in time; terminating it")
        pool.terminate()
