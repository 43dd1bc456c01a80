"""Route handlers: thin, each deciding only what its route needs."""

from __future__ import annotations

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
    request: web.Request, raw_id: str, workspace_id: uuid.UUID
) -> tuple[str, AttachmentTarget | None]:
    """The caller's attachment (and its canonical id): fetched with the key, cached, or
    looked up now. An id that is not a UUID is the same 404 as a missing one, no query."""
    prefetched = request.get(PREFETCHED, MISSING)
    if prefetched is not MISSING:
        return raw_id.lower(), prefetched
    caches = request.app[CACHES]
    if caches.live:
        cached = caches.attachments.get(raw_id)
        # Cached for another workspace's caller: that says nothing about this one.
        if cached is not MISSING and cached[0] == workspace_id:
            return raw_id, cached[1]
    attachment_id = canonical_uuid(raw_id)
    if attachment_id is None:
        raise Problem("not_found")
    canonical = str(attachment_id)
    generation = caches.generation
    row = await find_attachment(request.app[DATABASE], attachment_id, workspace_id)
    target = AttachmentTarget.from_row(row) if row is not None else None
    if caches.live and caches.generation == generation:
        caches.attachments.put(canonical, (workspace_id, target))
    return canonical, target


async def presigned_url(
    request: web.Request, attachment_id: str, target: AttachmentTarget
) -> PresignedUrl:
    """A URL signed for this method: a fresh one, or one signed within the reuse window
    (its true expiry travels with it)."""
    caches = request.app[CACHES]
    metrics = request.app[METRICS]
    cache_key = (attachment_id, request.method)
    if caches.live:
        reused = caches.urls.get(cache_key)
        if reused is not MISSING:
            metrics.count_presign(request.method, "reused")
            return reused  # type: ignore[no-any-return]
    generation = caches.generation
    presigned = await request.app[STORAGE].presign(request.method, target)
    metrics.count_presign(request.method, "signed")
    if caches.live and caches.generation == generation:
        caches.urls.put(cache_key, presigned)
    return presigned


async def download(request: web.Request) -> web.Response:
    """307 to a presigned URL for the caller's attachment, signed for this method."""
    raw_id = request.match_info["id"]
    attachment_id, target = await attachment_target(
        request, raw_id, request[PRINCIPAL].workspace_id
    )
    if target is None:
        raise Problem("not_found")
    presigned = await presigned_url(request, attachment_id, target)
    # Location is set verbatim: HTTPTemporaryRedirect would re-quote the URL through
    # yarl and break the signature (aio-libs/aiohttp#4307). The body, {"expires_at"},
    # leaves the URL out so that its signature only ever travels in the one header.
    return web.Response(
        status=307,
        headers={"Location": presigned.url, "Content-Type": "application/json"},
        body=presigned.body,
    )
