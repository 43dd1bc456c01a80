"""Health routes for orchestrators: liveness, readiness, and the API document."""

from __future__ import annotations

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


class SchemaCheck:
    """The migrations this build ships that the database was not yet seen to hold.

    A pod of a new release is not ready until its migrations ran (the migrate Job may
    still be running, or may have failed): without this it would serve the new code
    against the old schema. Once all are seen, never asked again (migrations only ever
    add)."""

    def __init__(self, directory: Path) -> None:
        self.pending = shipped_migrations(directory)
        if not self.pending:
            log.warning("no migrations found in %s: /readyz does not check the schema", directory)

    async def missing(self, database: Database) -> list[str]:
        if self.pending:
            applied = await applied_versions(database)
            self.pending = {v: name for v, name in self.pending.items() if v not in applied}
        return sorted(self.pending.values())


SCHEMA_CHECK = web.AppKey("schema_check", SchemaCheck)


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and its event loop turns."""
    return web.json_response({"status": "ok"})


BUSY = "busy: every pool connection in use"


async def readyz(request: web.Request) -> web.Response:
    """Ready when the database answers and holds this build's migrations, and storage is
    configured (reachable or not); else 503 with the reasons."""
    checks = {"database": "ok", "schema": "ok", "storage": "ok"}
    database = request.app[DATABASE]
    try:
        await database.fetchrow("SELECT 1")
        missing = await request.app[SCHEMA_CHECK].missing(database)
    except DatabaseUnavailable:
        # Every connection busy answering downloads is the overload every instance shares,
        # like storage's outage below: out of rotation, its load would only move to the
        # others, and its warm downloads (no query) would stop too.
        checks["database"] = BUSY if database.saturated else "unreachable"
        # Seen whole before, it stays so (migrations only add); else it cannot be told now.
        checks["schema"] = "unknown" if request.app[SCHEMA_CHECK].pending else "ok"
    else:
        if missing:
            checks["schema"] = f"migrations not applied: {', '.join(missing)}"
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
    database_ok = checks["database"] in ("ok", BUSY) and checks["schema"] == "ok"
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
