"""`attachments-gateway purge`: what has been gone long enough leaves, rows and objects;
nothing else does. Run as a real process against Postgres and SeaweedFS."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from botocore.exceptions import ClientError

from service.data.admin import register_attachment
from service.data.purge import PURGE_BATCH, purge
from service.storage.client import internal_client
from tests.support.storage import BUCKET


def object_exists(seaweed, key):
    try:
        seaweed.client().head_object(Bucket=BUCKET, Key=key)
    except ClientError as exc:
        assert exc.response["Error"]["Code"] in ("404", "NoSuchKey")
        return False
    return True


async def age(conn, attachment_id, column, hours):
    await conn.execute(
        f"UPDATE attachments SET {column} = now() - make_interval(hours => $2) WHERE id = $1",
        attachment_id,
        hours,
    )


@pytest.mark.slow
async def test_purge_removes_old_deletions_and_abandoned_uploads_only(
    cli, conn, seaweed, make_tenant, make_attachment
):
    tenant = await make_tenant()
    key_of = {}

    async def attachment(name):
        key = f"purge/{uuid.uuid4()}/{name}"
        attachment_id = await make_attachment(tenant.workspace_id, key=key)
        key_of[name] = (attachment_id, key)
        return attachment_id

    old_deleted = await attachment("old-deleted")
    await age(conn, old_deleted, "deleted_at", 48)
    recent_deleted = await attachment("recent-deleted")
    await age(conn, recent_deleted, "deleted_at", 1)
    live = await attachment("live")
    await age(conn, live, "created_at", 48)
    abandoned = await attachment("abandoned-upload")
    await conn.execute("UPDATE attachments SET upload_pending = true WHERE id = $1", abandoned)
    await age(conn, abandoned, "created_at", 48)
    fresh_upload = await attachment("fresh-upload")
    await conn.execute("UPDATE attachments SET upload_pending = true WHERE id = $1", fresh_upload)
    # A deleted row whose object a live row also names: the row goes, the object stays.
    shared = await attachment("shared")
    await register_attachment(
        conn, tenant.workspace_id, bucket=BUCKET, object_key=key_of["shared"][1], filename="s"
    )
    await age(conn, shared, "deleted_at", 48)

    dry = json.loads(cli("purge", "--older-than", "1d", "--dry-run", "--json").stdout)
    assert dry["would_purge"] >= 3  # other tests' rows may be old enough too
    assert all(object_exists(seaweed, key) for _, key in key_of.values())

    report = json.loads(cli("purge", "--older-than", "1d", "--json").stdout)
    assert report["purged"] >= 3 and report["objects_deleted"] >= 2
    assert report["shared_objects_kept"] >= 1

    rows = {
        row["id"]
        for row in await conn.fetch(
            "SELECT id FROM attachments WHERE id = ANY($1)", [i for i, _ in key_of.values()]
        )
    }
    gone = {"old-deleted", "abandoned-upload", "shared"}
    for name, (attachment_id, key) in key_of.items():
        assert (attachment_id in rows) == (name not in gone), name
        assert object_exists(seaweed, key) == (name not in {"old-deleted", "abandoned-upload"}), (
            name
        )

    # Nothing left older than a day: a second run purges nothing.
    again = json.loads(cli("purge", "--older-than", "1d", "--json").stdout)
    assert again == {"purged": 0, "objects_deleted": 0, "shared_objects_kept": 0}


async def test_when_storage_fails_the_batch_stays_for_the_next_run(
    cli, conn, seaweed, make_tenant, make_attachment
):
    tenant = await make_tenant()
    key = f"purge/{uuid.uuid4()}"
    attachment_id = await make_attachment(tenant.workspace_id, key=key)
    await age(conn, attachment_id, "deleted_at", 24 * 400)  # older than any other test's rows
    # S3 refuses the request (a wrong secret): the rows of the batch are not deleted.
    result = cli(
        "purge", "--older-than", "300d", expect=1, env={"AWS_SECRET_ACCESS_KEY": "wrong" * 8}
    )
    assert "nothing of that batch purged" in result.stderr
    assert await conn.fetchval("SELECT count(*) FROM attachments WHERE id = $1", attachment_id) == 1
    assert object_exists(seaweed, key)
    report = json.loads(cli("purge", "--older-than", "300d", "--json").stdout)
    assert report["purged"] == 1 and report["objects_deleted"] == 1
    assert not object_exists(seaweed, key)


@pytest.mark.slow
def test_purge_needs_an_age(cli):
    for value in ("soon", "7", "-1d", "2026-01-01"):
        assert "--older-than" in cli("purge", "--older-than", value, expect=2).stderr


@pytest.mark.slow
def test_purge_never_takes_an_upload_whose_url_still_works(cli):
    """An upload's URL works for 15 minutes: a row purged sooner could get its object
    after the purge, and nothing would ever name (or remove) that object."""
    for value in ("0m", "14m"):
        result = cli("purge", "--older-than", value, "--dry-run", expect=2)
        assert "at least 15m" in result.stderr
    cli("purge", "--older-than", "15m", "--dry-run")


class PausedAfterItsFirstBatch:
    """A purge's connection that, once its first batch's rows are deleted, waits until the
    other purge's are too: the moment when each still sees the other's rows."""

    def __init__(self, conn, both_took_a_batch: asyncio.Barrier):
        self.conn = conn
        self.both_took_a_batch = both_took_a_batch
        self.waited = False

    def transaction(self):
        return self.conn.transaction()

    async def execute(self, query, *args):
        return await self.conn.execute(query, *args)

    async def fetch(self, query, *args):
        rows = await self.conn.fetch(query, *args)
        if query is PURGE_BATCH and not self.waited:
            self.waited = True
            await self.both_took_a_batch.wait()
        return rows


async def test_two_purges_at_once_remove_an_object_two_rows_named(
    conn, database_url, settings, seaweed, make_tenant, make_attachment
):
    """Each purge took one of the two rows; both saw the other's, not yet deleted, kept the
    object, and left it named by no row."""
    tenant = await make_tenant()
    key = f"purge/{uuid.uuid4()}/named-twice"
    first = await make_attachment(tenant.workspace_id, key=key)
    second = await register_attachment(
        conn, tenant.workspace_id, bucket=BUCKET, object_key=key, filename="again"
    )
    for attachment_id in (first, second):
        await age(conn, attachment_id, "deleted_at", 24 * 800)  # older than other tests' rows
    cutoff = datetime.now(UTC) - timedelta(days=700)

    both_took_a_batch = asyncio.Barrier(2)
    connections = [await asyncpg.connect(database_url) for _ in range(2)]
    try:
        async with internal_client(settings) as s3:
            reports = await asyncio.wait_for(
                asyncio.gather(
                    *(
                        purge(PausedAfterItsFirstBatch(c, both_took_a_batch), s3, cutoff, 1)
                        for c in connections
                    )
                ),
                timeout=30,
            )
    finally:
        for c in connections:
            await c.close()

    assert sorted(report.rows for report in reports) == [1, 1]
    assert sum(report.objects for report in reports) == 1
    assert not object_exists(seaweed, key)
