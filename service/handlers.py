"""Route handlers: thin, each deciding only what its route needs."""

from __future__ import annotations

import re
import uuid

from aiohttp import web

from .caches import MISSING
from .keys import ATTACHMENT_LOOKUPS, CACHES, METRICS, PREFETCHED, PRINCIPAL, STORAGE
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
        cached = caches.attachment(raw_id, workspace_id)
        if cached is not MISSING:
            return raw_id, cached
    attachment_id = canonical_uuid(raw_id)
    if attachment_id is None:
        raise Problem("not_found")
    canonical = str(attachment_id)
    generation = caches.generation
    target = await request.app[ATTACHMENT_LOOKUPS].find(attachment_id, workspace_id)
    if caches.live and caches.generation == generation:
        caches.remember_attachment(canonical, workspace_id, target)
    return canonical, target


async def presigned_url(
    request: web.Request, attachment_id: str, target: AttachmentTarget
) -> PresignedUrl:
    """A URL signed for this method: a fresh one, or one signed within the reuse window
    (its true expiry travels with it)."""
    storage = request.app[STORAGE]
    if not storage.reachable:  # a URL, new or reused, would lead nowhere
        raise Problem("service_unavailable")
    caches = request.app[CACHES]
    metrics = request.app[METRICS]
    if caches.live:
        reused = caches.url(attachment_id, request.method)
        if reused is not MISSING:
            metrics.count_presign(request.method, "reused")
            return reused  # type: ignore[no-any-return]
    generation = caches.generation
    presigned = await storage.presign(request.method, target)
    if presigned.shortened:  # never reused: it would fall short of the promised lifetime
        metrics.count_presign(request.method, "shortened")
        return presigned
    metrics.count_presign(request.method, "signed")
    if caches.live and caches.generation == generation:
        caches.remember_url(attachment_id, request.method, presigned)
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
