"""Health routes for orchestrators: liveness, readiness, and the API document."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from aiohttp import web

from ..core.errors import DatabaseUnavailable
from ..data.migrations import applied_versions, shipped_migrations
from ..data.pool import Database
from .caches import LISTENER_STATUS
from .config import Handler
from .database import DATABASE
from .problems import retry_after
from .storage import STORAGE

log = logging.getLogger(__name__)

OPENAPI_DOCUMENT = Path(__file__).resolve().parent.parent / "openapi.json"


BUSY = "busy: every pool connection in use"


class DatabaseCheck:
    """The database's part of readiness: it answers, and holds this build's migrations.

    A pod of a new release is not ready until its migrations ran (the migrate Job may
    still be running, or may have failed): without this it would serve the new code
    against the old schema. Once all are seen, the schema is never asked again
    (migrations only ever add).

    /readyz is public and unlimited, so its queries run one at a time: probes that come
    while one is under way share its answer, and a flood of them costs the pool that
    downloads use one connection, never all of them."""

    def __init__(self, directory: Path) -> None:
        self.pending = shipped_migrations(directory)
        if not self.pending:
            log.warning("no migrations found in %s: /readyz does not check the schema", directory)
        self._under_way: asyncio.Future[tuple[str, str]] | None = None

    async def states(self, database: Database) -> tuple[str, str]:
        """The database's state and the schema's, as /readyz names them."""
        if self._under_way is None or self._under_way.done():
            self._under_way = asyncio.ensure_future(self._ask(database))
        # Shielded: a probe that goes away must not cancel the others' answer.
        return await asyncio.shield(self._under_way)

    async def _ask(self, database: Database) -> tuple[str, str]:
        try:
            await database.fetchrow("SELECT 1")
            if self.pending:
                applied = await applied_versions(database)
                self.pending = {v: name for v, name in self.pending.items() if v not in applied}
        except DatabaseUnavailable:
            # Every connection busy answering downloads is the overload every instance
            # shares, like storage's outage: out of rotation, its load would only move to
            # the others, and its warm downloads (no query) would stop too.
            state = BUSY if database.saturated else "unreachable"
            # Seen whole before, it stays so (migrations only add); else it cannot be told.
            return state, "unknown" if self.pending else "ok"
        if self.pending:
            return "ok", f"migrations not applied: {', '.join(sorted(self.pending.values()))}"
        return "ok", "ok"


DATABASE_CHECK = web.AppKey("database_check", DatabaseCheck)


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and its event loop turns."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the database answers and holds this build's migrations, and storage is
    configured (reachable or not); else 503 with the reasons."""
    database, schema = await request.app[DATABASE_CHECK].states(request.app[DATABASE])
    checks = {"database": database, "schema": schema, "storage": "ok"}
    listener = request.app.get(LISTENER_STATUS)
    if listener is not None and listener.undelivered:
        # The caches are off, so answers stay right, only slower: still ready.
        checks["invalidation"] = "notifications not delivered: caches off"
    storage = request.app[STORAGE]
    if storage.unavailable_reason:
        checks["storage"] = storage.unavailable_reason
    elif not storage.reachable:
        checks["storage"] = "unreachable"
    # Unreachable storage alone is still ready: every instance shares that outage and
    # answers downloads 503 itself, and taking them all out of the load balancer would
    # only swap that answer for a connection error. Without its database it is not.
    # Busy is ready only where the schema was already seen whole: it cannot be asked now.
    database_ok = database in ("ok", BUSY) and schema == "ok"
    if database_ok and checks["storage"] in ("ok", "unreachable"):
        return web.json_response({"status": "ready", "checks": checks})
    return web.json_response(
        {"status": "not_ready", "checks": checks},
        status=503,
        headers={"Retry-After": str(retry_after())},
    )


def openapi_handler() -> Handler:
    """Serve the document read once at start-up."""
    body = json.dumps(json.loads(OPENAPI_DOCUMENT.read_text())).encode()

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    return openapi
