"""The naive build: what a straightforward implementation of the endpoint does.

One query for the key, one for the attachment, aiobotocore's generate_presigned_url per
request; no caches. Correct (same statuses as the gateway for the bench's requests),
just not fast.
"""

from __future__ import annotations

import hashlib
import os
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from aiohttp import web

from service.core.disposition import content_disposition
from service.core.media_types import safe_content_type
from service.server.processes import run_app

POOL = web.AppKey("pool", asyncpg.Pool)
S3: web.AppKey[Any] = web.AppKey("s3")


async def download(request: web.Request) -> web.Response:
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("bearer "):
        raise web.HTTPUnauthorized()
    digest = hashlib.sha256(header[7:].strip().encode()).digest()
    pool = request.app[POOL]
    key = await pool.fetchrow(
        "SELECT k.workspace_id, w.api_access FROM api_keys k JOIN workspaces w"
        " ON w.id = k.workspace_id WHERE k.token_digest = $1 AND k.revoked_at IS NULL",
        digest,
    )
    if key is None:
        raise web.HTTPUnauthorized()
    if not key["api_access"]:
        raise web.HTTPForbidden()
    try:
        attachment_id = uuid.UUID(request.match_info["id"])
    except ValueError:
        raise web.HTTPNotFound() from None
    row = await pool.fetchrow(
        "SELECT bucket, object_key, filename, content_type FROM attachments"
        " WHERE id = $1 AND workspace_id = $2 AND deleted_at IS NULL",
        attachment_id,
        key["workspace_id"],
    )
    if row is None:
        raise web.HTTPNotFound()
    url = await request.app[S3].generate_presigned_url(
        "get_object",
        Params={
            "Bucket": row["bucket"],
            "Key": row["object_key"],
            "ResponseContentDisposition": content_disposition(row["filename"]),
            "ResponseContentType": safe_content_type(row["content_type"]),
        },
        ExpiresIn=900,
    )
    return web.Response(status=307, headers={"Location": url}, body=b"{}")


async def resources(app: web.Application) -> AsyncIterator[None]:
    app[POOL] = await asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=1, max_size=10)
    config = AioConfig(signature_version="s3v4", s3={"addressing_style": "path"})
    async with get_session().create_client(
        "s3",
        region_name=os.environ["S3_REGION"],
        endpoint_url=os.environ["S3_ENDPOINT_URL"],
        config=config,
    ) as client:
        app[S3] = client
        yield
    await app[POOL].close()


def main() -> None:
    app = web.Application()
    app.cleanup_ctx.append(resources)
    app.router.add_get("/api/v1/attachments/{id}/download", download)
    run_app(app, "127.0.0.1", int(sys.argv[1]), shutdown_timeout=1, access_log=False)


if __name__ == "__main__":
    main()
