"""Attachment lookups batched per event-loop iteration.

On a cold cache every download needs its attachment row. One query per request costs
a pool connection and a database round trip each, and the pool can finish at most one
query per connection per loop iteration: under 1,024 busy connections an iteration
takes tens of milliseconds, so a 32-connection pool completed a few hundred queries a
second and requests waited past the acquire timeout. Here the lookups asked for during
one iteration go out together, as one query, in the next.
"""

from __future__ import annotations

import asyncio
import uuid

from ..core.attachment import AttachmentTarget
from .attachments import TARGET_COLUMNS
from .pool import Database

# Each (id, workspace) pair matches only a live attachment of that same workspace, so a
# batch mixing tenants cannot hand one tenant's row to another's request.
LIVE_ATTACHMENTS_OF_WORKSPACES = f"""
    SELECT a.id, a.workspace_id, {TARGET_COLUMNS}
    FROM unnest($1::uuid[], $2::uuid[]) AS wanted(id, workspace_id)
    JOIN attachments a
      ON a.id = wanted.id AND a.workspace_id = wanted.workspace_id AND a.deleted_at IS NULL
"""  # noqa: S608 - made of constants only

# Bounds one query's size; a fuller iteration simply sends several.
MAX_BATCH = 256

Wanted = tuple[uuid.UUID, uuid.UUID]  # (attachment id, workspace id)


class AttachmentLookups:
    def __init__(self, db: Database) -> None:
        self._db = db
        # One future per waiting request (a cancelled request cancels only its own).
        self._waiting: dict[Wanted, list[asyncio.Future[AttachmentTarget | None]]] = {}
        self._flush_scheduled = False
        self._running: set[asyncio.Task[None]] = set()

    async def find(
        self, attachment_id: uuid.UUID, workspace_id: uuid.UUID
    ) -> AttachmentTarget | None:
        """The attachment if it exists, is not deleted and belongs to this workspace."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[AttachmentTarget | None] = loop.create_future()
        self._waiting.setdefault((attachment_id, workspace_id), []).append(future)
        if len(self._waiting) >= MAX_BATCH:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await future

    async def find_many(self, wanted: list[Wanted]) -> dict[Wanted, AttachmentTarget]:
        """Those of `wanted` that exist, are not deleted and belong to their workspace, in
        one query and without a future each: for the cache refresher, not for requests."""
        ids = [attachment_id for attachment_id, _ in wanted]
        workspaces = [workspace_id for _, workspace_id in wanted]
        rows = await self._db.fetch(LIVE_ATTACHMENTS_OF_WORKSPACES, ids, workspaces)
        return {(row["id"], row["workspace_id"]): AttachmentTarget.from_row(row) for row in rows}

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._waiting:
            return
        batch, self._waiting = self._waiting, {}
        task = asyncio.get_running_loop().create_task(self._look_up(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _look_up(
        self, batch: dict[Wanted, list[asyncio.Future[AttachmentTarget | None]]]
    ) -> None:
        ids = [attachment_id for attachment_id, _ in batch]
        workspaces = [workspace_id for _, workspace_id in batch]
        try:
            rows = await self._db.fetch(LIVE_ATTACHMENTS_OF_WORKSPACES, ids, workspaces)
        except asyncio.CancelledError:
            for future in _pending(batch):
                future.cancel()
            raise
        except Exception as exc:  # DatabaseUnavailable, mostly: for every waiter
            for future in _pending(batch):
                future.set_exception(exc)
            return
        found = {(row["id"], row["workspace_id"]): AttachmentTarget.from_row(row) for row in rows}
        for wanted, futures in batch.items():
            target = found.get(wanted)
            for future in futures:
                if not future.done():
                    future.set_result(target)


def _pending(
    batch: dict[Wanted, list[asyncio.Future[AttachmentTarget | None]]],
) -> list[asyncio.Future[AttachmentTarget | None]]:
    return [future for futures in batch.values() for future in futures if not future.done()]
