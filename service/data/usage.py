"""`api_keys.last_used_at`, current to the minute, without a write per request.

The request path only notes "key K was used in minute M" in a dict (once per key and
minute); a background task writes what it noted every USAGE_FLUSH_SECONDS in one
UPDATE, and once more at shutdown. A failed write never fails a request: the minutes
are kept and written with the next flush (and a newer minute replaces an older one).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from ..core.errors import DatabaseUnavailable
from .pool import Database

log = logging.getLogger(__name__)

FLUSH_SECONDS = 20.0
FINAL_FLUSH_SECONDS = 2.0
# At exit, keys another transaction holds are tried again this often, this many times.
BUSY_RETRY_SECONDS = 0.1
BUSY_RETRIES = 5

# A key another transaction holds (being revoked or renamed) is skipped, not waited for,
# and written by the next flush; the statement answers those keys. So a flush never waits
# on a row lock: two replicas' flushes, or a flush and a leak report's revoke, cannot
# deadlock, and the last flush at shutdown is held up only by a slow database.
RECORD_LAST_USE = """
    WITH used AS (
        SELECT * FROM unnest($1::uuid[], $2::bigint[]) AS u (id, minute)
    ), locked AS (
        SELECT k.id, used.minute
        FROM api_keys k JOIN used ON used.id = k.id
        FOR NO KEY UPDATE OF k SKIP LOCKED
    ), written AS (
        UPDATE api_keys k SET last_used_at = to_timestamp(locked.minute * 60)
        FROM locked
        WHERE k.id = locked.id
          AND (k.last_used_at IS NULL OR k.last_used_at < to_timestamp(locked.minute * 60))
    )
    SELECT used.id FROM used
    WHERE used.id NOT IN (SELECT id FROM locked)
      AND EXISTS (SELECT 1 FROM api_keys k WHERE k.id = used.id)
"""


class KeyUsage:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._pending: dict[uuid.UUID, int] = {}  # key id -> minute (epoch // 60) to write
        self._noted: dict[uuid.UUID, int] = {}  # the minute last noted, per key

    def touch(self, key_id: uuid.UUID) -> None:
        """The hot path: a clock read and a dict lookup, a dict write once a minute."""
        minute = int(time.time()) // 60
        if self._noted.get(key_id) != minute:
            self._noted[key_id] = minute
            self._pending[key_id] = minute

    async def flush(self, db: Database | None = None) -> bool:
        """Write what was noted (through `db` if given); False (and nothing lost) if the
        database said no."""
        if not self._pending:
            return True
        batch, self._pending = self._pending, {}
        current = int(time.time()) // 60
        # Forget keys not used this minute: their next use writes again.
        self._noted = {k: m for k, m in self._noted.items() if m == current}
        try:
            busy = await (db or self._db).fetch(RECORD_LAST_USE, list(batch), list(batch.values()))
        except DatabaseUnavailable:
            self._keep(batch)
            log.warning("could not record key usage; will retry")
            return False
        except BaseException:
            # Cancelled (the shutdown stops this flush to run the final one): that one
            # writes the batch.
            self._keep(batch)
            raise
        self._keep({row["id"]: batch[row["id"]] for row in busy})
        return True

    async def flush_at_exit(self, db: Database | None = None) -> bool:
        """The last flush: keys another transaction held are tried again a few times,
        since no later flush will; what is left is logged. (Bounded by its caller too.)"""
        for attempt in range(1 + BUSY_RETRIES):
            if attempt:
                await asyncio.sleep(BUSY_RETRY_SECONDS)
            if not await self.flush(db):
                return False
            if not self._pending:
                return True
        log.warning(
            "key usage: %d keys held by other transactions, not written", len(self._pending)
        )
        return False

    def _keep(self, batch: dict[uuid.UUID, int]) -> None:
        for key_id, minute in batch.items():  # the newest minute of each key
            self._pending[key_id] = max(minute, self._pending.get(key_id, 0))

    async def flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            await self.flush()
