"""`attachments-gateway purge --older-than AGE`: remove what is gone for good.

Two kinds of rows go, with their objects: attachments soft-deleted (DELETE on the API,
or `attachment delete`) more than AGE ago, and uploads created more than AGE ago and
never confirmed (a multipart one's parts aborted too). Nothing is lost on the way:
- a batch's rows are deleted and their objects removed in one transaction, so when S3
  fails the rows come back (rollback) and the next run tries again;
- the rows are locked while their objects are removed, so an upload confirmed at that
  moment waits, then finds its row gone (404), never a row without its object;
- an object another row still names (`attachment register` can point two rows at one
  key) is left in place; two purges that each take one of those rows look at the object
  in turn (a lock per object), so the second sees the first's deletion and removes it.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from botocore.exceptions import BotoCoreError, ClientError

from ..core.errors import StorageUnavailable

BATCH_SIZE = 100

# SKIP LOCKED: two purges running at once share the work instead of waiting on each other.
PURGE_BATCH = """
    DELETE FROM attachments
    WHERE id IN (
        SELECT id FROM attachments
        WHERE deleted_at < $1
           OR (upload_pending AND deleted_at IS NULL AND created_at < $1)
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    )
    RETURNING bucket, object_key, multipart_upload_id
"""

COUNT_PURGEABLE = """
    SELECT count(*) FROM attachments
    WHERE deleted_at < $1 OR (upload_pending AND deleted_at IS NULL AND created_at < $1)
"""

# Of the objects the batch's rows named, those no remaining row names.
UNSHARED_OBJECTS = """
    SELECT DISTINCT gone.bucket, gone.object_key
    FROM unnest($1::text[], $2::text[]) AS gone(bucket, object_key)
    WHERE NOT EXISTS (
        SELECT 1 FROM attachments a
        WHERE a.bucket = gone.bucket AND a.object_key = gone.object_key
    )
"""


# Held to the batch's commit. Without it, two purges that had each deleted one of two
# rows naming an object both still saw the other's row, kept the object, and left it
# named by nothing. Taken in one order by every purge, so none waits on another in a cycle.
LOCK_OBJECTS = "SELECT pg_advisory_xact_lock(lock_id) FROM unnest($1::bigint[]) AS lock_id"


def object_lock_ids(objects: Iterable[tuple[str, str]]) -> list[int]:
    """The objects' advisory lock ids, sorted (a bucket name holds no `/`)."""
    return sorted(
        {
            int.from_bytes(
                hashlib.blake2b(f"{bucket}/{key}".encode(), digest_size=8).digest(),
                "big",
                signed=True,
            )
            for bucket, key in objects
        }
    )


async def abort_upload(s3: Any, bucket: str, key: str, upload_id: str) -> None:
    """Drop a multipart upload's parts; one S3 no longer knows is gone already."""
    try:
        await s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
            raise


@dataclass
class PurgeReport:
    rows: int = 0
    objects: int = 0
    shared_objects_kept: int = 0


async def count_purgeable(conn: asyncpg.Connection, cutoff: datetime) -> int:
    return int(await conn.fetchval(COUNT_PURGEABLE, cutoff))


async def purge(
    conn: asyncpg.Connection, s3: Any, cutoff: datetime, batch_size: int = BATCH_SIZE
) -> PurgeReport:
    """Purge in batches until nothing older than `cutoff` is left. An S3 failure rolls
    the current batch back and is raised as StorageUnavailable (earlier batches stay
    purged)."""
    report = PurgeReport()
    while True:
        async with conn.transaction():
            rows = await conn.fetch(PURGE_BATCH, cutoff, batch_size)
            if not rows:
                return report
            buckets = [row["bucket"] for row in rows]
            keys = [row["object_key"] for row in rows]
            await conn.execute(LOCK_OBJECTS, object_lock_ids(zip(buckets, keys, strict=True)))
            unshared = await conn.fetch(UNSHARED_OBJECTS, buckets, keys)
            # S3's DeleteObject succeeds for a key that is already gone, and an upload S3
            # no longer knows counts as aborted: reruns are safe.
            try:
                await asyncio.gather(
                    *(
                        abort_upload(
                            s3, row["bucket"], row["object_key"], row["multipart_upload_id"]
                        )
                        for row in rows
                        if row["multipart_upload_id"] is not None
                    )
                )
                await asyncio.gather(
                    *(
                        s3.delete_object(Bucket=row["bucket"], Key=row["object_key"])
                        for row in unshared
                    )
                )
            except (BotoCoreError, ClientError) as exc:
                raise StorageUnavailable(
                    f"removing objects failed, nothing of that batch purged: {exc}"
                ) from None
        report.rows += len(rows)
        report.objects += len(unshared)
        report.shared_objects_kept += len(set(zip(buckets, keys, strict=True))) - len(unshared)
