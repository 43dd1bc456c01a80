"""The download route: 307 to a presigned URL for the caller's attachment, or the URL as JSON."""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp import web

from ..core.attachment import AttachmentTarget, PresignedUrl
from ..core.ids import canonical_uuid
from ..core.options import PLAIN, DownloadOptions, parse_download_options
from ..core.settings import reusable_for
from ..data.caches import MISSING, Missing
from .audit import ISSUED_UNTIL
from .auth import PREFETCHED, PRINCIPAL
from .caches import CACHES
from .config import SETTINGS
from .database import ATTACHMENT_LOOKUPS
from .metrics import METRICS
from .problems import Problem
from .storage import STORAGE

# When a client downloading an attachment whose upload is not yet confirmed should retry.
UPLOAD_PENDING_RETRY_SECONDS = 5


async def attachment_target(
    request: web.Request, raw_id: str, workspace_id: uuid.UUID
) -> tuple[str, AttachmentTarget | None, int]:
    """The caller's attachment (and its canonical id): fetched with the key, cached, or
    looked up now; and the caches' generation it was read at, for `presigned_url`. An id
    that is not a UUID is the same 404 as a missing one, no query."""
    caches = request.app[CACHES]
    if caches.live:
        cached = caches.attachment(raw_id, workspace_id)
        if not isinstance(cached, Missing):  # (mypy narrows a NamedTuple union no other way)
            return raw_id, cached, caches.generation
    # Asked second: authentication caches what it prefetched, so this is mostly a hit
    # above, and a request that prefetched nothing (every warm one) would pay a KeyError
    # inside `Request.get`. The cached entry is as fresh: a change to it drops it.
    prefetched = request.get(PREFETCHED, MISSING)
    if prefetched is not MISSING:
        return raw_id.lower(), prefetched.target, prefetched.read_at
    attachment_id = canonical_uuid(raw_id)
    if attachment_id is None:
        raise Problem("not_found")
    canonical = str(attachment_id)
    generation = caches.generation
    target = await request.app[ATTACHMENT_LOOKUPS].find(attachment_id, workspace_id)
    if caches.may_store_attachment(generation, canonical):
        caches.remember_attachment(canonical, workspace_id, target)
    return canonical, target, generation


async def presigned_url(
    request: web.Request,
    attachment_id: str,
    target: AttachmentTarget,
    read_at: int,
    options: DownloadOptions = PLAIN,
    method: str | None = None,
) -> PresignedUrl:
    """A URL signed for this method (the request's unless given) and these options: a
    fresh one, or one signed within the reuse window (its true expiry travels with it).

    `read_at` is the caches' generation when `target` was read: a URL signed for a target
    that changed since is this request's answer, but is never kept for the next one (a
    plain URL's cache key does not hold the target, so nothing else would tell it apart)."""
    method = method or request.method
    storage = request.app[STORAGE]
    if not storage.reachable:  # a URL, new or reused, would lead nowhere
        raise Problem("service_unavailable")
    caches = request.app[CACHES]
    counts = request.app[METRICS].counts
    variant = () if options is PLAIN else (*options.cache_variant, tuple(target))
    if caches.live:
        reused = caches.url(attachment_id, method, variant)
        if reused is not MISSING:
            counts.count_presign(method, "reused")
            return reused
    presigned = await storage.presign(method, target, options)
    if presigned.shortened:  # never reused: it would fall short of the promised lifetime
        counts.count_presign(method, "shortened")
        return presigned
    counts.count_presign(method, "signed")
    # (The default lifetime was judged once: the window is 0 where it falls short.)
    reusable = options.expires_in is None or reusable_for(options.expires_in, caches.urls.ttl)
    if reusable and caches.may_store_attachment(read_at, attachment_id):
        caches.remember_url(attachment_id, method, presigned, variant)
    return presigned


async def download(request: web.Request) -> web.Response:
    """307 to a presigned URL for the caller's attachment, signed for this method; or,
    asked for, 200 with the URL in JSON (see core/options.py)."""
    options = parse_download_options(
        request.query if request.query_string else None,
        request.headers.get("Accept"),
        request.app[SETTINGS].presign_max_expires_seconds,
    )
    raw_id = request.match_info["id"]
    attachment_id, target, read_at = await attachment_target(
        request, raw_id, request[PRINCIPAL].workspace_id
    )
    if target is None:
        raise Problem("not_found")
    if target.pending:
        raise Problem("upload_pending", {"Retry-After": str(UPLOAD_PENDING_RETRY_SECONDS)})
    presigned = await presigned_url(request, attachment_id, target, read_at, options)
    # A JSON link's URL travels in the body, which the answer to a HEAD leaves out: then
    # none is issued.
    if not options.as_json or request.method != "HEAD":
        request[ISSUED_UNTIL] = presigned.expires_at_us
    if options.as_json:
        return link_response(request.method, target, presigned)
    # Location is set verbatim: HTTPTemporaryRedirect would re-quote the URL through
    # yarl and break the signature (aio-libs/aiohttp#4307). The body, {"expires_at"},
    # leaves the URL out so that its signature only ever travels in the one header.
    return web.Response(
        status=307,
        headers={
            "Location": presigned.url,
            "Content-Type": "application/json",
            # For clients that follow redirects and never see the body.
            "X-Expires-At": presigned.expires_text,
        },
        body=presigned.body,
    )


def link_json(method: str, target: AttachmentTarget, presigned: PresignedUrl) -> dict[str, Any]:
    """The URL as data: asked for explicitly, so it may be in a body (never in logs)."""
    link = {
        "url": presigned.url,
        "method": method,
        "expires_at": presigned.expires_text,
        "filename": target.filename,
        "content_type": target.content_type,
        "size_bytes": target.size_bytes,
    }
    if target.digest is not None:
        link["digest"] = target.digest
    return link


def link_response(method: str, target: AttachmentTarget, presigned: PresignedUrl) -> web.Response:
    return web.Response(
        body=json.dumps(link_json(method, target, presigned)).encode(),
        content_type="application/json",
        headers={"X-Expires-At": presigned.expires_text},
    )
