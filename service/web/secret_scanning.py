"""POST /api/v1/secret-scanning/reports: GitHub reports leaked `ixk_` tokens, we revoke them.

Public (GitHub has no API key of ours) and on only when SECRET_SCANNING_PUBLIC_KEYS is
set. Checked in this order, the first failure answering: the address's report limit
(429), both signature headers (400 `signature_missing`), the body's size (413), the
signature over the exact body bytes (403 `signature_invalid`), the report's shape (400
`invalid_request`). Nothing is parsed before its signature is known good, and nothing
changes unless everything passed. The token itself is never logged nor answered.
"""

from __future__ import annotations

import logging

from aiohttp import web

from ..core.secret_scanning import (
    MAX_REPORT_BYTES,
    labelled,
    parse_report,
    signature_verifies,
)
from ..data.leaked_keys import revoke_reported_keys
from .caches import CACHES
from .config import SETTINGS
from .database import DATABASE
from .forwarded import find_client_address
from .limits import RATE_LIMITS
from .problems import BODY_NOT_WHOLE, Problem

log = logging.getLogger(__name__)

REPORTS_PATH = "/api/v1/secret-scanning/reports"
IDENTIFIER_HEADER = "Github-Public-Key-Identifier"
SIGNATURE_HEADER = "Github-Public-Key-Signature"


async def receive_report(request: web.Request) -> web.Response:
    """Revoke every one of our keys in a report GitHub signed; answer its labels."""
    address = find_client_address(request)
    await request.app[RATE_LIMITS].admit_report(address)
    identifier, signature = signature_headers(request)
    body = await capped_body(request, MAX_REPORT_BYTES)
    if not signature_verifies(
        request.app[SETTINGS].secret_scanning_keys, identifier, signature, body
    ):
        raise Problem("signature_invalid")
    reported = parse_report(body)
    ours = await revoke_reported_keys(request.app[DATABASE], reported, address)
    # This process forgets them at once; the others hear of it by NOTIFY.
    caches = request.app[CACHES]
    for digest in ours:
        caches.forget_key(digest)
    log.info(
        "secret-scanning report: %d tokens, %d of them our keys, now revoked",
        len(reported),
        len(ours),
    )
    return web.json_response(labelled(reported, {digest.hex() for digest in ours}))


def signature_headers(request: web.Request) -> tuple[str, str]:
    """The key identifier and the signature, each sent exactly once and not empty."""
    values = []
    for name in (IDENTIFIER_HEADER, SIGNATURE_HEADER):
        given = request.headers.getall(name, [])
        if len(given) != 1 or not given[0].strip():
            raise Problem("signature_missing")
        values.append(given[0].strip())
    return values[0], values[1]


async def capped_body(request: web.Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed `limit` bytes
    (by its Content-Length, or while a chunked body arrives)."""
    if request.content_length is not None and request.content_length > limit:
        raise Problem("payload_too_large")
    chunks = []
    size = 0
    try:
        async for chunk in request.content.iter_chunked(16 * 1024):
            size += len(chunk)
            if size > limit:
                raise Problem("payload_too_large")
            chunks.append(chunk)
    except BODY_NOT_WHOLE:
        raise Problem("invalid_request") from None
    return b"".join(chunks)
