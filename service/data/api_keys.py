"""Looking up API keys by their token's digest: the one rule of what a live key is."""

from __future__ import annotations

import uuid

import asyncpg

from .attachments import TARGET_COLUMNS
from .pool import Database

# A key that is neither revoked nor expired, for statements that call the key `k`.
LIVE_KEY = "k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())"
# What a Principal is built from, with the workspace `w`'s entitlement.
PRINCIPAL_COLUMNS = "k.id, k.workspace_id, k.scope, k.display_prefix, k.expires_at, w.api_access"

# (The statements below are made of the constants above only, never of input.)
KEY_BY_DIGEST = f"""
    SELECT {PRINCIPAL_COLUMNS}
    FROM api_keys k
    JOIN workspaces w ON w.id = k.workspace_id
    WHERE k.token_digest = $1 AND {LIVE_KEY}
"""  # noqa: S608

# The cold path of a download in one round trip: the key, its workspace's entitlement,
# and the attachment if (and only if) it is live and belongs to that same workspace.
KEY_AND_ATTACHMENT = f"""
    SELECT {PRINCIPAL_COLUMNS}, a.id AS attachment_id, {TARGET_COLUMNS}
    FROM api_keys k
    JOIN workspaces w ON w.id = k.workspace_id
    LEFT JOIN attachments a
           ON a.id = $2 AND a.workspace_id = k.workspace_id AND a.deleted_at IS NULL
    WHERE k.token_digest = $1 AND {LIVE_KEY}
"""  # noqa: S608

# The cache refresher's: many keys in one round trip (unknown, revoked or expired ones are
# simply not among the rows).
KEYS_BY_DIGESTS = f"""
    SELECT k.token_digest, {PRINCIPAL_COLUMNS}
    FROM api_keys k
    JOIN workspaces w ON w.id = k.workspace_id
    WHERE k.token_digest = ANY($1::bytea[]) AND {LIVE_KEY}
"""  # noqa: S608

KEY_IS_LIVE = f"""
    SELECT EXISTS (SELECT 1 FROM api_keys k WHERE k.token_digest = $1 AND {LIVE_KEY})
"""  # noqa: S608


async def find_key(db: Database, token_digest: bytes) -> asyncpg.Record | None:
    """The live key with this digest, with its workspace's flag."""
    return await db.fetchrow(KEY_BY_DIGEST, token_digest)


async def find_keys(db: Database, token_digests: list[bytes]) -> dict[bytes, asyncpg.Record]:
    """The live keys among these digests, by digest."""
    rows = await db.fetch(KEYS_BY_DIGESTS, token_digests)
    return {bytes(row["token_digest"]): row for row in rows}


async def find_key_and_attachment(
    db: Database, token_digest: bytes, attachment_id: uuid.UUID
) -> asyncpg.Record | None:
    """`find_key`, plus the columns of the attachment when the key's workspace owns it."""
    return await db.fetchrow(KEY_AND_ATTACHMENT, token_digest, attachment_id)
