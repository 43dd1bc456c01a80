"""Bearer authentication: who is calling, and may they call `/api/v1` at all.

The middleware decides, in the contract's order: 401 (no or bad credentials),
403 `forbidden` (workspace without API access), 403 `insufficient_scope` (read key,
unsafe method). What a caller may see is then decided per route, by tenant.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .audit import client_address
from .caches import MISSING
from .db import find_key, find_key_and_attachment
from .handlers import canonical_uuid
from .keys import (
    AUDIT,
    CACHES,
    DATABASE,
    ISSUED_UNTIL,
    KEY_USAGE,
    PREFETCHED,
    PRINCIPAL,
    PUBLIC_PATHS,
    RATE_LIMITS,
)
from .problems import (
    CHALLENGE_INSUFFICIENT_SCOPE,
    CHALLENGE_INVALID_REQUEST,
    CHALLENGE_INVALID_TOKEN,
    REALM,
    Problem,
    unauthorized,
)
from .storage import AttachmentTarget
from .tokens import PREFIX, parse_token, token_digest

READ_METHODS = frozenset({"GET", "HEAD"})
DOWNLOAD_ROUTE = "download"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Principal:
    """A live key, as cached: `expires_at` (epoch seconds) is checked on every use."""

    key_id: uuid.UUID
    workspace_id: uuid.UUID
    scope: str
    key_prefix: str
    api_access: bool
    expires_at: float | None

    @classmethod
    def from_row(cls, row: Any) -> Principal:
        expires_at = row["expires_at"].timestamp() if row["expires_at"] else None
        return cls(
            row["id"],
            row["workspace_id"],
            row["scope"],
            row["display_prefix"],
            row["api_access"],
            expires_at,
        )


# Query parameters that carry credentials by convention (RFC 6750 §2.3 names the first).
CREDENTIAL_PARAMETERS = ("access_token", "api_key")


def refuse_token_in_query(request: web.Request) -> None:
    """Credentials in a URL end up in logs, proxies and browser history (RFC 6750 §5.3):
    such a request is refused outright, even alongside a valid header."""
    if not request.query_string:
        return
    query = request.query
    if any(name in query for name in CREDENTIAL_PARAMETERS) or any(
        value.startswith(PREFIX) for value in query.values()
    ):
        raise unauthorized(CHALLENGE_INVALID_REQUEST, "token_in_query")


def bearer_token(request: web.Request) -> str:
    """The single token of a well-formed `Authorization: Bearer <token>` header.

    A missing header or another scheme gets the bare challenge (RFC 6750 §3.1: no
    error code when no credentials were offered); a header we cannot read as one
    bearer credential gets `invalid_request`.
    """
    values = request.headers.getall("Authorization", [])
    if not values:
        raise unauthorized(REALM, "missing_credentials")
    if len(values) > 1:
        raise unauthorized(CHALLENGE_INVALID_REQUEST, "malformed_header")
    scheme, _, credentials = values[0].strip(" \t").partition(" ")
    if not scheme:
        raise unauthorized(CHALLENGE_INVALID_REQUEST, "malformed_header")
    if scheme.lower() != "bearer":
        raise unauthorized(REALM, "other_scheme")
    token = credentials.strip(" ")
    if not token or " " in token or "\t" in token:
        raise unauthorized(CHALLENGE_INVALID_REQUEST, "malformed_header")
    return token


# The download route's path, also when the method is not one of its own (then aiohttp's
# match has no route name; a DELETE with a read key is still a refusal worth recording).
DOWNLOAD_PATH = re.compile(r"/api/v1/attachments/[^/]+/download")


def is_download(request: web.Request) -> bool:
    return (
        request.match_info.route.name == DOWNLOAD_ROUTE
        or DOWNLOAD_PATH.fullmatch(request.path) is not None
    )


def download_id(request: web.Request) -> uuid.UUID | None:
    """The attachment id of a download request, if it is a canonical UUID."""
    if request.match_info.route.name != DOWNLOAD_ROUTE:
        return None
    return canonical_uuid(request.match_info["id"])


async def lookup_principal(request: web.Request, digest: bytes) -> Principal | None:
    """The key from the database (with the download's attachment in the same query when
    there is one, handed to the handler through PREFETCHED), remembered in the cache."""
    caches = request.app[CACHES]
    generation = caches.generation
    attachment_id = download_id(request)
    if attachment_id is None:
        row = await find_key(request.app[DATABASE], digest)
    else:
        row = await find_key_and_attachment(request.app[DATABASE], digest, attachment_id)
    principal = Principal.from_row(row) if row is not None else None
    if row is not None and attachment_id is not None:
        target = AttachmentTarget.from_row(row) if row["attachment_id"] else None
        request[PREFETCHED] = target
        if caches.live and caches.generation == generation:
            caches.remember_attachment(str(attachment_id), row["workspace_id"], target)
    if caches.live and caches.generation == generation:
        caches.keys.put(digest, principal)  # None too: unknown tokens cost no query
    return principal


async def authenticate(request: web.Request) -> Principal:
    refuse_token_in_query(request)
    token = bearer_token(request)
    # Only well-formed tokens are ever cached, so a hit on the digest of the raw token
    # spares the checksum; a miss checks the format before any query.
    caches = request.app[CACHES]
    cached = caches.keys.get(token_digest(token)) if caches.live else MISSING
    principal: Principal | None
    if cached is not MISSING:
        principal = cached
    else:
        digest = parse_token(token)
        if digest is None:
            # Malformed: refused offline, with the same answer as an unknown key.
            raise unauthorized(CHALLENGE_INVALID_TOKEN, "malformed_token")
        principal = await lookup_principal(request, digest)
    if principal is None or (
        principal.expires_at is not None and principal.expires_at <= time.time()
    ):
        raise unauthorized(CHALLENGE_INVALID_TOKEN, "unknown_token")
    return principal


# Refusals that mean "this token is wrong": what a guesser collects.
GUESSES = frozenset({"malformed_token", "unknown_token"})


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in request.app[PUBLIC_PATHS]:
        return await handler(request)
    limits = request.app[RATE_LIMITS]
    if limits.failed_auth.active:  # someone has failed lately: look at who is asking
        limits.check_address(client_address(request))
    try:
        principal = await authenticate(request)
    except Problem as problem:
        if problem.reason in GUESSES:
            limits.failed(client_address(request))
        raise
    request[PRINCIPAL] = principal
    # From here on the caller is known: downloads are audited, refused or not.
    trail = request.app.get(AUDIT) if is_download(request) else None
    try:
        if not principal.api_access:
            raise Problem("forbidden", reason="no_api_access")
        limits.admit(principal.key_id, principal.workspace_id)
        request.app[KEY_USAGE].touch(principal.key_id)
        if request.method not in READ_METHODS and principal.scope != "write":
            raise Problem("insufficient_scope", {"WWW-Authenticate": CHALLENGE_INSUFFICIENT_SCOPE})
        response = await handler(request)
    except Problem as problem:
        if trail is not None:
            trail.record(request, principal, problem.code, problem.type.status, None)
        raise
    if trail is not None:
        trail.record(request, principal, "issued", response.status, request.get(ISSUED_UNTIL))
    return response
