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

RECORD_LAST_USE = """
    UPDATE api_keys k SET last_used_at = to_timestamp(used.minute * 60)
    FROM unnest($1::uuid[], $2::bigint[]) AS used(id, minute)
    WHERE k.id = used.id
      AND (k.last_used_at IS NULL OR k.last_used_at < to_timestamp(used.minute * 60))
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

    async def flush(self) -> bool:
        """Write what was noted; False (and nothing lost) if the database said no."""
        if not self._pending:
            return True
        batch, self._pending = self._pending, {}
        current = int(time.time()) // 60
        # Forget keys not used this minute: their next use writes again.
        self._noted = {k: m for k, m in self._noted.items() if m == current}
        try:
            # In one order in every process: two replicas' flushes locking the same keys
            # in opposite orders would deadlock, and one of them would fail.
            ids = sorted(batch)
            await self._db.fetch(RECORD_LAST_USE, ids, [batch[key_id] for key_id in ids])
        except DatabaseUnavailable:
            self._keep(batch)
            log.warning("could not record key usage; will retry")
            return False
        except BaseException:
            # Cancelled (the shutdown stops this flush to run the final one): that one
            # writes the batch.
            self._keep(batch)
            raise
        return True

    def _keep(self, batch: dict[uuid.UUID, int]) -> None:
        for key_id, minute in batch.items():  # the newest minute of each key
            self._pending[key_id] = max(minute, self._pending.get(key_id, 0))

    async def flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            await self.flush()
