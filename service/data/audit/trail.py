"""The download audit trail: every URL issued, and every refusal after authentication.

Requests only append to a bounded in-memory queue (queue.py: flat columns, no
object kept per request); a background task writes the queue with COPY every
AUDIT_FLUSH_SECONDS (or sooner when it fills), and once more at shutdown. When the queue
is full, records are dropped and counted (`gateway_audit_dropped_total`): a slow database
must not slow downloads. A failed write is retried with the next flush, within the same
bound; a batch that Postgres refuses for its content is dropped and counted, since it
would be refused again.

Rows go to a table partitioned by month (migration 0004). The writer creates this and
next month's partitions at start and every few hours, and drops partitions older than
AUDIT_RETENTION_DAYS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, date, datetime

import asyncpg

from ...core.principal import Principal
from ..pool import UNAVAILABLE_ERRORS
from .copy_format import USER_AGENT_LENGTH, copy_data
from .queue import AuditQueue

log = logging.getLogger(__name__)

# download_audit's columns in the order copy_format.copy_data writes each row's fields.
COLUMNS = (
    *("at", "workspace_id", "key_id", "key_prefix", "attachment_id", "method", "outcome"),
    *("status", "client_address", "user_agent", "expires_at"),
)
# Rows queued that wake the writer before AUDIT_FLUSH_SECONDS is up: Postgres spends a
# fixed few milliseconds on each COPY statement besides its rows, so fewer, larger COPYs.
BATCH_SIZE = 5000
# Rows per COPY at most. Under a saturated event loop every round trip to Postgres waits a
# whole loop iteration: one connection per flush and large COPYs keep the writer ahead of
# the request rate, where one small COPY per acquire falls behind.
COPY_ROWS = 10_000
MAINTENANCE_SECONDS = 6 * 3600
FINAL_FLUSH_SECONDS = 3.0
WRITE_ERRORS = (*UNAVAILABLE_ERRORS, asyncpg.PostgresError)
# Postgres refusing a batch for what is in it (class 22 or 23) would refuse it again:
# retried, it would stay at the head of the queue and every row after it would be dropped.
REFUSED_ROWS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)


class AuditTrail:
    """A bounded queue of downloads seen, and the writer that COPYs them as rows.

    The request path appends the facts as it has them (the time in nanoseconds, the
    principal, the path's id); the writer encodes them as COPY rows (copy_format.py: ids
    checked, user agents cleaned). The same work in one tight loop per batch costs a
    fraction of what it costs spread over requests, between which the CPU's caches hold
    other code (docs/performance.md).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        queue_size: int,
        flush_seconds: float,
    ) -> None:
        self._pool = pool
        self._queue = AuditQueue()
        self._queue_size = queue_size
        self._wake = asyncio.Event()
        # The run loop's flush and the one at shutdown must not COPY the same rows twice.
        self._flushing = asyncio.Lock()
        self.flush_seconds = flush_seconds
        self.written = 0
        self.dropped = 0

    def record(
        self,
        principal: Principal,
        raw_id: str,
        method: str,
        outcome: str,
        status: int,
        address: str | None,
        user_agent: str | None,
        expires_at_us: int | None,
    ) -> None:
        """The request path: an append, or a counted drop when the queue is full.
        `raw_id` is the id as the path has it; the writer checks it."""
        queue = self._queue
        if len(queue.times) >= self._queue_size:
            self.dropped += 1
            return
        queue.append(
            time.time_ns(),  # an integer: microseconds exact, no float rounding
            principal,
            raw_id,
            method,
            outcome,
            status,
            address,
            # Bounded here: a queued entry must not hold a whole 8 KiB header.
            user_agent[:USER_AGENT_LENGTH] if user_agent is not None else None,
            expires_at_us,
        )
        if len(queue.times) >= BATCH_SIZE:
            self._wake.set()

    def __len__(self) -> int:
        return len(self._queue)

    async def flush(self) -> None:
        """Write the rows queued when the flush began, on one connection, oldest first;
        on failure keep them for next time. Rows leave the queue only once written."""
        async with self._flushing:
            queue = self._queue
            pending = len(queue)
            rows = 0
            try:
                if pending:
                    async with self._pool.acquire(timeout=5) as conn:
                        while pending:
                            rows = min(COPY_ROWS, pending)
                            await conn.copy_to_table(
                                "download_audit",
                                source=copy_data(queue, rows),
                                columns=COLUMNS,
                                format="binary",
                                timeout=30,
                            )
                            queue.forget(rows)
                            self.written += rows
                            pending -= rows
            except REFUSED_ROWS as exc:
                queue.forget(rows)
                self.dropped += rows
                log.error("audit rows refused (SQLSTATE %s): %d dropped", exc.sqlstate, rows)
            except WRITE_ERRORS as exc:
                log.warning("audit trail not written (%s); will retry", type(exc).__name__)
            finally:
                queue.compact()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_seconds)
            self._wake.clear()
            await self.flush()


def month_start(day: date, months_ahead: int = 0) -> date:
    index = day.year * 12 + day.month - 1 + months_ahead
    return date(index // 12, index % 12 + 1, 1)


async def maintain_partitions(pool: asyncpg.Pool, retention_days: int, today: date) -> None:
    """This and next month's partitions exist; those wholly older than the retention go."""
    async with pool.acquire(timeout=10) as conn, conn.transaction():
        # One gateway at a time: concurrent CREATE ... PARTITION OF would collide.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('download_audit'))")
        for ahead in (0, 1):
            start, end = month_start(today, ahead), month_start(today, ahead + 1)
            name = f"download_audit_{start:%Y%m}"
            exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name)
            if not exists:
                # No row may arrive meanwhile: one routed to the default partition between
                # the move below and the ATTACH would fail the ATTACH (23514), again and
                # again under load; one routed before the ATTACH but written after it would
                # be refused itself. A COPY takes its lock on the parent before it routes
                # anything, so it waits here and then routes by the new partitions.
                await conn.execute("LOCK TABLE download_audit IN SHARE ROW EXCLUSIVE MODE")
                # Rows of that month already in the default partition move with it.
                await conn.execute(f"CREATE TABLE {name} (LIKE download_audit INCLUDING DEFAULTS)")
                # (`name` is made from a date above, never from input.)
                await conn.execute(
                    f"WITH moved AS (DELETE FROM download_audit_default "  # noqa: S608
                    f"WHERE at >= $1 AND at < $2 RETURNING *) "
                    f"INSERT INTO {name} SELECT * FROM moved",
                    _utc(start),
                    _utc(end),
                )
                await conn.execute(
                    f"ALTER TABLE download_audit ATTACH PARTITION {name} "
                    f"FOR VALUES FROM ('{start} 00:00+00') TO ('{end} 00:00+00')"
                )
        cutoff = today.toordinal() - retention_days
        partitions = await conn.fetch(
            """SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
               WHERE i.inhparent = 'download_audit'::regclass
                 AND c.relname ~ '^download_audit_[0-9]{6}$'"""
        )
        for (name,) in partitions:
            year, month = int(name[-6:-2]), int(name[-2:])
            if month_start(date(year, month, 1), 1).toordinal() <= cutoff:
                await conn.execute(f"DROP TABLE {name}")
        await conn.execute(
            "DELETE FROM download_audit_default WHERE at < now() - make_interval(days => $1)",
            retention_days,
        )


def _utc(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


async def maintain_forever(pool: asyncpg.Pool, retention_days: int) -> None:
    """`maintain_partitions` at start and every MAINTENANCE_SECONDS; a minute after a failure."""
    while True:
        try:
            await maintain_partitions(pool, retention_days, datetime.now(UTC).date())
        except WRITE_ERRORS as exc:
            log.warning("audit partitions not maintained (%s)", type(exc).__name__)
            await asyncio.sleep(60)
            continue
        await asyncio.sleep(MAINTENANCE_SECONDS)
