"""GET /api/v1/attachments/download-links?id=...: download URLs for many attachments at once.

A GET, not a POST: a read key may only GET or HEAD, and 100 ids fit in a request line.
The answer lists one item per id, in the order asked: the link (as a download with
`redirect=false` gives it) or the problem code that download would have answered
(`not_found`, `upload_pending`). The attachments not in the caches are read in one query
bound to the caller's workspace, so another tenant's id is the same `not_found` as a
missing one. The rate limits count one request per id (auth.py), and the audit trail
gets one row per id: the item's outcome, or, when the whole batch fails (a 503), that.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp import web

from ..core.attachment import AttachmentTarget
from ..core.errors import GatewayError, InvalidRequest
from ..core.ids import canonical_uuid
from ..core.options import MAX_LINKS_PER_REQUEST, DownloadOptions, parse_download_options
from ..core.principal import Principal
from ..data import attachments
from ..data.caches import Missing
from .audit import record_download
from .auth import PRINCIPAL
from .caches import CACHES
from .config import SETTINGS
from .database import DATABASE
from .downloads import link_json, presigned_url
from .problems import PROBLEM_TYPES, Problem, problem_for_error

# The URLs are always signed for GET: a HEAD of this route answers the same headers.
LINK_METHOD = "GET"


def requested_ids(request: web.Request) -> list[tuple[str, uuid.UUID]]:
    """The ids as asked for, each with the attachment it names. In a query, unlike a
    path, an id that is not a canonical UUID makes the request malformed."""
    raw_ids = request.query.getall("id", [])
    if not 1 <= len(raw_ids) <= MAX_LINKS_PER_REQUEST:
        raise InvalidRequest("id")
    ids = []
    for raw_id in raw_ids:
        attachment_id = canonical_uuid(raw_id)
        if attachment_id is None:
            raise InvalidRequest("id")
        ids.append((raw_id, attachment_id))
    return ids


async def attachment_targets(
    request: web.Request, ids: set[uuid.UUID], workspace_id: uuid.UUID
) -> tuple[dict[uuid.UUID, AttachmentTarget | None], int]:
    """Each attachment of `ids`, None where the workspace has no such live one: from the
    caches where they know, the rest in one query (remembered as downloads remember);
    and the caches' generation they were all read at, for `presigned_url`."""
    caches = request.app[CACHES]
    generation = caches.generation
    found: dict[uuid.UUID, AttachmentTarget | None] = {}
    if caches.live:
        for attachment_id in ids:
            cached = caches.attachment(str(attachment_id), workspace_id)
            if not isinstance(cached, Missing):
                found[attachment_id] = cached
    missing = [attachment_id for attachment_id in ids if attachment_id not in found]
    if missing:
        read = await attachments.targets(request.app[DATABASE], missing, workspace_id)
        for attachment_id in missing:
            target = found[attachment_id] = read.get(attachment_id)
            if caches.may_store_attachment(generation, str(attachment_id)):
                caches.remember_attachment(str(attachment_id), workspace_id, target)
    return found, generation


def record(
    request: web.Request,
    principal: Principal,
    raw_id: str,
    outcome: str,
    status: int,
    issued_until: int | None = None,
) -> None:
    """One audit row per id, as a download of it would have left."""
    record_download(
        request,
        principal,
        outcome,
        status,
        issued_until,
        attachment_id=raw_id,
        method=LINK_METHOD,
    )


async def download_links(request: web.Request) -> web.Response:
    """200 with `{"items": [...]}`: a link or a problem code for each id, in order."""
    ids = requested_ids(request)
    # The download's own options; `redirect` means nothing here (the answer is data).
    options = parse_download_options(
        request.query, None, request.app[SETTINGS].presign_max_expires_seconds
    )
    principal = request[PRINCIPAL]
    try:
        items, outcomes = await links_for(request, principal.workspace_id, ids, options)
    except Problem as refusal:
        refuse_batch(request, principal, ids, refusal)
        raise
    except GatewayError as error:  # (raised from the call, never held: see auth_middleware)
        raise refuse_batch(request, principal, ids, problem_for_error(error)) from error
    # Recorded only now: an id's "issued" row is a URL its caller was sent. The answer to
    # a HEAD sends no item at all, so it leaves no row.
    if request.method != "HEAD":
        for raw_id, outcome, status, issued_until in outcomes:
            record(request, principal, raw_id, outcome, status, issued_until)
    return web.Response(body=json.dumps({"items": items}).encode(), content_type="application/json")


async def links_for(
    request: web.Request,
    workspace_id: uuid.UUID,
    ids: list[tuple[str, uuid.UUID]],
    options: DownloadOptions,
) -> tuple[list[dict[str, Any]], list[tuple[str, str, int, int | None]]]:
    """Each id's item, and its audit outcome (id, outcome, status, issued until)."""
    targets, read_at = await attachment_targets(
        request, {attachment_id for _, attachment_id in ids}, workspace_id
    )
    items: list[dict[str, Any]] = []
    outcomes: list[tuple[str, str, int, int | None]] = []
    for raw_id, attachment_id in ids:
        target = targets[attachment_id]
        if target is None or target.pending:
            code = "not_found" if target is None else "upload_pending"
            outcomes.append((raw_id, code, PROBLEM_TYPES[code].status, None))
            items.append({"id": raw_id, "problem": code})
            continue
        presigned = await presigned_url(
            request, str(attachment_id), target, read_at, options, LINK_METHOD
        )
        outcomes.append((raw_id, "issued", 200, presigned.expires_at_us))
        items.append({"id": raw_id, **link_json(LINK_METHOD, target, presigned)})
    return items, outcomes


def refuse_batch(
    request: web.Request,
    principal: Principal,
    ids: list[tuple[str, uuid.UUID]],
    refusal: Problem,
) -> Problem:
    """The whole batch is answered `refusal` (a 503): each id gets the row a download
    refused so would have left, none the outcome it had reached before."""
    for raw_id, _ in ids:
        record(request, principal, raw_id, refusal.code, refusal.type.status)
    return refusal
