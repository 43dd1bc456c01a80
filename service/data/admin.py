"""Operator actions on workspaces, keys and attachments (used by the CLI and tests)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

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
) -> uuid.UUID:
    """Register an object as an attachment; `attachment_id` lets an upload name its key first."""
    registered: uuid.UUID = await conn.fetchval(
        """
        INSERT INTO attachments (id, workspace_id, bucket, object_key, filename, content_type,
                                 size_bytes)
        VALUES (coalesce($1, gen_random_uuid()), $2, $3, $4, $5, $6, $7) RETURNING id
        """,
        attachment_id,
        workspace_id,
        bucket,
        object_key,
        filename,
        content_type,
        size_bytes,
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
            SELECT id, name, display_prefix AS prefix, scope, created_at, expires_at,
                   revoked_at, last_used_at
            FROM api_keys WHERE workspace_id = $1 ORDER BY created_at, id
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
