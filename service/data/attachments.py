"""The attachments resource's statements: every one names the caller's workspace, so that
another tenant's attachment is the same `NotFound` as a missing one."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from ..core.attachment import AttachmentTarget
from ..core.errors import NotFound, UnknownWorkspace
from .pool import Database

# What the API shows of an attachment.
COLUMNS = "id, filename, content_type, size_bytes, created_at, upload_pending, sha256"
# What an AttachmentTarget is built from, of the attachment `a`.
TARGET_COLUMNS = (
    "a.bucket, a.object_key, a.filename, a.content_type, a.size_bytes, a.upload_pending, a.sha256"
)

# (The statements below are made of the constants above only, never of input.)
SHOW = f"""
    SELECT {COLUMNS} FROM attachments
    WHERE id = $1 AND workspace_id = $2 AND deleted_at IS NULL
"""  # noqa: S608

# Newest first; ties (one transaction's rows share created_at) broken by id. Both orders
# are those of attachments_workspace_created_idx, so every page is an index range scan:
# on a later page, `created_at <= $2` is what starts it at the cursor (the OR alone would
# leave the index only the workspace, and each page reads every row before its cursor).
FIRST_PAGE = f"""
    SELECT {COLUMNS} FROM attachments
    WHERE workspace_id = $1 AND deleted_at IS NULL
    ORDER BY created_at DESC, id
    LIMIT $2
"""  # noqa: S608
NEXT_PAGE = f"""
    SELECT {COLUMNS} FROM attachments
    WHERE workspace_id = $1 AND deleted_at IS NULL
      AND created_at <= $2 AND (created_at < $2 OR (created_at = $2 AND id > $3))
    ORDER BY created_at DESC, id
    LIMIT $4
"""  # noqa: S608

CREATE = f"""
    INSERT INTO attachments (id, workspace_id, bucket, object_key, filename, content_type,
                             size_bytes, upload_pending, sha256, multipart_upload_id,
                             part_size_bytes)
    VALUES ($1, $2, $3, $4, $5, $6, $7, true, $8, $9, $10)
    RETURNING {COLUMNS}
"""  # noqa: S608

UPLOAD_OF = f"""
    SELECT {COLUMNS}, bucket, object_key, multipart_upload_id, part_size_bytes
    FROM attachments
    WHERE id = $1 AND workspace_id = $2 AND deleted_at IS NULL
"""  # noqa: S608
# The multipart upload is done with once its object is there: purge has nothing to abort.
CONFIRM = f"""
    UPDATE attachments SET upload_pending = false, size_bytes = $3, multipart_upload_id = NULL
    WHERE id = $1 AND workspace_id = $2 AND deleted_at IS NULL AND upload_pending
    RETURNING {COLUMNS}
"""  # noqa: S608

# A name or type left NULL stays as it is. Not while the upload is pending: its PUT URL
# has the declared type signed into it.
UPDATE = f"""
    UPDATE attachments
    SET filename = coalesce($3, filename), content_type = coalesce($4, content_type)
    WHERE id = $1 AND workspace_id = $2 AND deleted_at IS NULL AND NOT upload_pending
    RETURNING {COLUMNS}
"""  # noqa: S608

# Many of one workspace's attachments at once (the batch of download links).
TARGETS = f"""
    SELECT a.id, {TARGET_COLUMNS} FROM attachments a
    WHERE a.id = ANY($1::uuid[]) AND a.workspace_id = $2 AND a.deleted_at IS NULL
"""  # noqa: S608

# The one soft delete: by the API within the caller's workspace, by the operator's CLI
# in any ($2 NULL). `attachments-gateway purge` removes the row and object later.
SOFT_DELETE = """
    UPDATE attachments SET deleted_at = now()
    WHERE id = $1 AND ($2::uuid IS NULL OR workspace_id = $2) AND deleted_at IS NULL
    RETURNING id
"""


async def show(db: Database, attachment_id: uuid.UUID, workspace_id: uuid.UUID) -> asyncpg.Record:
    row = await db.fetchrow(SHOW, attachment_id, workspace_id)
    if row is None:
        raise NotFound
    return row


async def page(
    db: Database,
    workspace_id: uuid.UUID,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
) -> list[asyncpg.Record]:
    """Up to `limit` attachments, newest first, after the (created_at, id) of `after`."""
    if after is None:
        return await db.fetch(FIRST_PAGE, workspace_id, limit)
    return await db.fetch(NEXT_PAGE, workspace_id, *after, limit)


@dataclass(frozen=True, slots=True)
class NewUpload:
    """An attachment about to be uploaded through the API."""

    attachment_id: uuid.UUID
    workspace_id: uuid.UUID
    bucket: str
    object_key: str
    filename: str
    content_type: str
    size: int
    sha256: bytes | None = None
    multipart_upload_id: str | None = None
    part_size: int | None = None


async def create(db: Database, new: NewUpload) -> asyncpg.Record:
    """A new attachment, its upload pending."""
    try:
        row = await db.fetchrow(
            CREATE,
            new.attachment_id,
            new.workspace_id,
            new.bucket,
            new.object_key,
            new.filename,
            new.content_type,
            new.size,
            new.sha256,
            new.multipart_upload_id,
            new.part_size,
        )
    except asyncpg.ForeignKeyViolationError:  # the workspace went away since the key was read
        raise UnknownWorkspace from None
    assert row is not None  # INSERT ... RETURNING
    return row


async def upload_of(
    db: Database, attachment_id: uuid.UUID, workspace_id: uuid.UUID
) -> asyncpg.Record:
    """The attachment with where its object is stored."""
    row = await db.fetchrow(UPLOAD_OF, attachment_id, workspace_id)
    if row is None:
        raise NotFound
    return row


async def confirm(
    db: Database, attachment_id: uuid.UUID, workspace_id: uuid.UUID, size: int
) -> asyncpg.Record:
    """Mark the upload done with its stored size. A concurrent confirmation or deletion
    wins: then this answers with what it left."""
    row = await db.fetchrow(CONFIRM, attachment_id, workspace_id, size)
    if row is None:
        return await show(db, attachment_id, workspace_id)
    return row


async def update(
    db: Database,
    attachment_id: uuid.UUID,
    workspace_id: uuid.UUID,
    filename: str | None,
    content_type: str | None,
) -> asyncpg.Record | None:
    """The attachment with its new filename and/or content type; None (and unchanged)
    while its upload is pending; NotFound if it is not the workspace's or is deleted."""
    for _ in range(2):  # once more if the upload was confirmed in between
        row = await db.fetchrow(UPDATE, attachment_id, workspace_id, filename, content_type)
        if row is not None:
            return row
        if (await show(db, attachment_id, workspace_id))["upload_pending"]:
            return None
    raise AssertionError("an available attachment refused its update twice")


async def targets(
    db: Database, attachment_ids: list[uuid.UUID], workspace_id: uuid.UUID
) -> dict[uuid.UUID, AttachmentTarget]:
    """Those of the attachments that are the workspace's and not deleted, in one query."""
    rows = await db.fetch(TARGETS, attachment_ids, workspace_id)
    return {row["id"]: AttachmentTarget.from_row(row) for row in rows}


async def soft_delete(db: Database, attachment_id: uuid.UUID, workspace_id: uuid.UUID) -> None:
    if await db.fetchrow(SOFT_DELETE, attachment_id, workspace_id) is None:
        raise NotFound
