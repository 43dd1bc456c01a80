"""Route handlers: thin, each deciding only what its route needs."""

from __future__ import annotations

import json
import re
import uuid

from aiohttp import web

from .caches import MISSING
from .db import find_attachment
from .keys import CACHES, DATABASE, METRICS, PREFETCHED, PRINCIPAL, STORAGE
from .problems import Problem
from .storage import AttachmentTarget, PresignedUrl

# Canonical 8-4-4-4-12 hex only: uuid.UUID() would also take braces, "urn:uuid:"
# and bare hex, and every alias of an id would be one more way to probe.
_UUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


def canonical_uuid(raw: str) -> uuid.UUID | None:
    return uuid.UUID(raw) if _UUID.match(raw) else None


async def attachment_target(
    request: web.Request, attachment_id: uuid.UUID, workspace_id: uuid.UUID
) -> AttachmentTarget | None:
    """The caller's attachment: fetched with the key, cached, or looked up now."""
    prefetched = request.get(PREFETCHED, MISSING)
    if prefetched is not MISSING:
        return prefetched  # type: ignore[no-any-return]
    caches = request.app[CACHES]
    if caches.live:
        cached = caches.attachments.get(attachment_id)
        # Cached for another workspace's caller: that says nothing about this one.
        if cached is not MISSING and cached[0] == workspace_id:
            return cached[1]  # type: ignore[no-any-return]
    generation = caches.generation
    row = await find_attachment(request.app[DATABASE], attachment_id, workspace_id)
    target = AttachmentTarget.from_row(row) if row is not None else None
    if caches.live and caches.generation == generation:
        caches.attachments.put(attachment_id, (workspace_id, target))
    return target


async def presigned_url(
    request: web.Request, attachment_id: uuid.UUID, target: AttachmentTarget
) -> PresignedUrl:
    """A URL signed for this method: a fresh one, or one signed within the reuse window
    (its true expiry travels with it)."""
    caches = request.app[CACHES]
    cache_key = (attachment_id, request.method)
    if caches.live:
        reused = caches.urls.get(cache_key)
        if reused is not MISSING:
            request.app[METRICS].presigns.labels(request.method, "reused").inc()
            return reused  # type: ignore[no-any-return]
    generation = caches.generation
    presigned = await request.app[STORAGE].presign(request.method, target)
    request.app[METRICS].presigns.labels(request.method, "signed").inc()
    if caches.live and caches.generation == generation:
        caches.urls.put(cache_key, presigned)
    return presigned


async def download(request: web.Request) -> web.Response:
    """307 to a presigned URL for the caller's attachment, signed for this method."""
    attachment_id = canonical_uuid(request.match_info["id"])
    if attachment_id is None:
        raise Problem("not_found")  # the same 404 as a missing attachment; no query made
    target = await attachment_target(request, attachment_id, request[PRINCIPAL].workspace_id)
    if target is None:
        raise Problem("not_found")
    presigned = await presigned_url(request, attachment_id, target)
    expires_at = presigned.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    # Location is set verbatim: HTTPTemporaryRedirect would re-quote the URL through
    # yarl and break the signature (aio-libs/aiohttp#4307). The body leaves the URL
    # out so that its signature only ever travels in the one header.
    return web.Response(
        status=307,
        headers={"Location": presigned.url},
        body=json.dumps({"expires_at": expires_at}).encode(),
        content_type="application/json",
    )
