"""Route handlers: thin, each deciding only what its route needs."""

from __future__ import annotations

import json
import re
import uuid

from aiohttp import web

from .db import find_attachment
from .keys import DATABASE, METRICS, PRINCIPAL, STORAGE
from .problems import Problem

# Canonical 8-4-4-4-12 hex only: uuid.UUID() would also take braces, "urn:uuid:"
# and bare hex, and every alias of an id would be one more way to probe.
_UUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


def parse_attachment_id(raw: str) -> uuid.UUID:
    """The id as a UUID, or the same 404 as a missing attachment (no query is made)."""
    if not _UUID.match(raw):
        raise Problem("not_found")
    return uuid.UUID(raw)


async def download(request: web.Request) -> web.Response:
    """307 to a presigned URL for the caller's attachment, signed for this method."""
    attachment_id = parse_attachment_id(request.match_info["id"])
    principal = request[PRINCIPAL]
    row = await find_attachment(request.app[DATABASE], attachment_id, principal.workspace_id)
    if row is None:
        raise Problem("not_found")
    presigned = await request.app[STORAGE].presign(
        request.method, row["bucket"], row["object_key"], row["filename"], row["content_type"]
    )
    request.app[METRICS].presigns.labels(request.method).inc()
    expires_at = presigned.expires_at.isoformat().replace("+00:00", "Z")
    # Location is set verbatim: HTTPTemporaryRedirect would re-quote the URL through
    # yarl and break the signature (aio-libs/aiohttp#4307). The body leaves the URL
    # out so that its signature only ever travels in the one header.
    return web.Response(
        status=307,
        headers={"Location": presigned.url},
        body=json.dumps({"expires_at": expires_at}).encode(),
        content_type="application/json",
    )
