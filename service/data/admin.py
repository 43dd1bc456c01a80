"""Operator actions on workspaces, keys and attachments (used by the CLI and tests)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from ..core.errors import KeyNotRotatable
from ..core.tokens import digest, display_prefix, generate_token
from .api_keys import KEY_IS_LIVE
from .attachments import SOFT_DELETE


@dataclass(frozen=True, slots=True)
class NewKey:
    id: uuid.UUID
    token: str
    prefix: str
    scope: str
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class Rotation:
    """A key rotated: its successor (with the only copy of the token), and when the old
    key stops working."""

    successor: NewKey
    replaced_id: uuid.UUID
    overlap_ends_at: datetime


async def create_workspace(
    conn: asyncpg.Connection, name: str, *, api_access: bool = True
) -> uuid.UUID:
    workspace_id: uuid.UUID = await conn.fetchval(
        "INSERT INTO workspaces (name, api_access) VALUES ($1, $2) RETURNING id", name, api_access
    )
    return workspace_id


async def set_api_access(conn: asyncpg.Connection, workspace_id: uuid.UUID, on: bool) -> bool:
    """Whether the workspace existed."""
    status = await conn.execute(
        "UPDATE workspaces SET api_access = $2 WHERE id = $1", workspace_id, on
    )
    return bool(status == "UPDATE 1")


async def create_key(
    conn: asyncpg.Connection,
    workspace_id: uuid.UUID,
    *,
    scope: str = "read",
    name: str = "",
    expires_at: datetime | None = None,
) -> NewKey:
    """A new key; its token exists only in the returned value."""
    token = generate_token()
    key_id: uuid.UUID = await conn.fetchval(
        """
        INSERT INTO api_keys (workspace_id, name, display_prefix, token_digest, scope, expires_at)
        VALUES ($1, $2, $3, $4, $5, $6) RETURNING id
        """,
        workspace_id,
        name,
        display_prefix(token),
        digest(token),
        scope,
        expires_at,
    )
    return NewKey(key_id, token, display_prefix(token), scope, expires_at)


async def revoke_key(conn: asyncpg.Connection, key_id: uuid.UUID) -> bool:
    """Whether a live key was revoked (revoking twice keeps the first time)."""
    status = await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", key_id
    )
    return bool(status == "UPDATE 1")


async def rotate_key(conn: asyncpg.Connection, key_id: uuid.UUID, overlap: timedelta) -> Rotation:
    """A successor with the old key's workspace, scope and name; the old key keeps working
    for `overlap` at most (a rotation never extends a key's life). One transaction, with
    the old key's row locked: of two rotations at once, the second finds it rotated."""
    async with conn.transaction():
        old = await conn.fetchrow(
            """
            SELECT id, workspace_id, name, scope, created_at, expires_at, revoked_at,
                   replaced_by, now() AS now
            FROM api_keys WHERE id = $1 FOR UPDATE
            """,
            key_id,
        )
        _refuse_unrotatable(key_id, old)
        # The successor gets the lifetime the old key was given, from now: a key made to
        # expire is replaced by one made to expire, never by one that lives for ever.
        lifetime = old["expires_at"] - old["created_at"] if old["expires_at"] else None
        successor = await create_key(
            conn,
            old["workspace_id"],
            scope=old["scope"],
            name=old["name"],
            expires_at=old["now"] + lifetime if lifetime is not None else None,
        )
        # least() ignores a NULL: a key without an expiry gets the overlap's end.
        overlap_ends_at: datetime = await conn.fetchval(
            """
            UPDATE api_keys SET expires_at = least(expires_at, now() + $2), replaced_by = $3
            WHERE id = $1 RETURNING expires_at
            """,
            key_id,
            overlap,
            successor.id,
        )
    return Rotation(successor, key_id, overlap_ends_at)


def _refuse_unrotatable(key_id: uuid.UUID, old: asyncpg.Record | None) -> None:
    if old is None:
        raise KeyNotRotatable(f"no key {key_id}")
    if old["revoked_at"] is not None:
        raise KeyNotRotatable(f"key {key_id} is revoked: create a new key instead")
    if old["replaced_by"] is not None:
        raise KeyNotRotatable(
            f"key {key_id} was already rotated: its successor is {old['replaced_by']}"
        )
    if old["expires_at"] is not None and old["expires_at"] <= old["now"]:
        raise KeyNotRotatable(f"key {key_id} has expired: create a new key instead")


async def register_attachment(
    conn: asyncpg.Connection,
    workspace_id: uuid.UUID,
    *,
    bucket: str,
    object_key: str,
    filename: str,
    content_type: str = "application/octet-stream",
    size_bytes: int | None = None,
    attachment_id: uuid.UUID | None = None,
    sha256: bytes | None = None,
) -> uuid.UUID:
    """Register an object as an attachment; `attachment_id` lets an upload name its key
    first, and `sha256` is the digest the storage checked on the way up."""
    registered: uuid.UUID = await conn.fetchval(
        """
        INSERT INTO attachments (id, workspace_id, bucket, object_key, filename, content_type,
                                 size_bytes, sha256)
        VALUES (coalesce($1, gen_random_uuid()), $2, $3, $4, $5, $6, $7, $8) RETURNING id
        """,
        attachment_id,
        workspace_id,
        bucket,
        object_key,
        filename,
        content_type,
        size_bytes,
        sha256,
    )
    return registered


async def delete_attachment(conn: asyncpg.Connection, attachment_id: uuid.UUID) -> bool:
    """Soft delete; whether a live attachment was deleted."""
    return await conn.fetchval(SOFT_DELETE, attachment_id, None) is not None


async def list_workspaces(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT id, name, api_access, created_at FROM workspaces ORDER BY created_at, id"
        )
    )


async def workspace_exists(conn: asyncpg.Connection, workspace_id: uuid.UUID) -> bool:
    return bool(
        await conn.fetchval("SELECT EXISTS (SELECT 1 FROM workspaces WHERE id = $1)", workspace_id)
    )


async def list_keys(conn: asyncpg.Connection, workspace_id: uuid.UUID) -> list[asyncpg.Record]:
    """The workspace's keys, without anything secret (the digest stays in the database)."""
    return list(
        await conn.fetch(
            """
            SELECT k.id, k.name, k.display_prefix AS prefix, k.scope, k.created_at,
                   k.expires_at, k.revoked_at, k.last_used_at, k.replaced_by,
                   predecessor.id AS rotated_from
            FROM api_keys k
            LEFT JOIN api_keys predecessor ON predecessor.replaced_by = k.id
            WHERE k.workspace_id = $1 ORDER BY k.created_at, k.id
            """,
            workspace_id,
        )
    )


async def audit_entries(
    conn: asyncpg.Connection,
    workspace_id: uuid.UUID,
    since: datetime,
    attachment_id: uuid.UUID | None,
    limit: int,
) -> list[asyncpg.Record]:
    """The workspace's recorded downloads and refusals, newest first."""
    return list(
        await conn.fetch(
            """
            SELECT at, key_id, key_prefix, attachment_id, method, outcome, status,
                   host(client_address) AS client_address, user_agent, expires_at
            FROM download_audit
            WHERE workspace_id = $1 AND at >= $2 AND ($3::uuid IS NULL OR attachment_id = $3)
            ORDER BY at DESC
            LIMIT $4
            """,
            workspace_id,
            since,
            attachment_id,
            limit,
        )
    )


async def key_is_live(conn: asyncpg.Connection, token: str) -> bool:
    return bool(await conn.fetchval(KEY_IS_LIVE, digest(token)))


async def live_attachment(
    conn: asyncpg.Connection, attachment_id: uuid.UUID, workspace_id: uuid.UUID
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """
        SELECT id, bucket, object_key, filename, content_type, size_bytes FROM attachments
        WHERE id = $1 AND workspace_id = $2 AND deleted_at IS NULL
        """,
        attachment_id,
        workspace_id,
    )
