"""Bearer authentication and authorization: who is calling, and may they call at all.

The middleware decides, in the contract's order: 401 (no or bad credentials),
403 `forbidden` (workspace without API access), 429 (the key's or workspace's limit),
403 `insufficient_scope` (read key, unsafe method). Each of those is one named step;
what a caller may see is then decided per route, by tenant. Downloads are recorded in
the audit trail from the moment the caller is known, refused or not.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import NamedTuple

from aiohttp import web

from ..core.attachment import AttachmentTarget
from ..core.errors import GatewayError
from ..core.ids import canonical_uuid
from ..core.options import MAX_LINKS_PER_REQUEST
from ..core.principal import Principal
from ..core.tokens import PREFIX, parse_token, token_digest
from ..data.api_keys import find_key, find_key_and_attachment
from ..data.caches import MISSING, Miss
from .audit import ISSUED_UNTIL, record_download
from .caches import CACHES
from .config import Handler
from .database import DATABASE
from .forwarded import CLIENT_ADDRESS, find_client_address
from .limits import RATE_LIMITS
from .problems import (
    CHALLENGE_INSUFFICIENT_SCOPE,
    CHALLENGE_INVALID_REQUEST,
    CHALLENGE_INVALID_TOKEN,
    REALM,
    Problem,
    problem_for_error,
    unauthorized,
)
from .usage import KEY_USAGE

DOWNLOAD_ROUTE = "download"
DOWNLOAD_LINKS_ROUTE = "download_links"

# Paths answered without an API key; every other path needs one (deny by default).
PUBLIC_PATHS = web.AppKey("public_paths", frozenset[str])
PRINCIPAL = web.RequestKey("principal", Principal)


class Prefetched(NamedTuple):
    """The download's attachment, when authentication already fetched it in the same
    query, and the caches' generation before that query (see `presigned_url`)."""

    target: AttachmentTarget | None
    read_at: int


PREFETCHED = web.RequestKey("prefetched", Prefetched)

# Refusals that mean "this token is wrong": what a guesser collects.
GUESSES = frozenset({"malformed_token", "unknown_token"})


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    # The path as the router matches it (`%2F` stays encoded): by `request.path`,
    # `/api/v1%2Fopenapi.json` passed as public, then matched no route, a 404 without a key.
    if request.rel_url.path_safe in request.app[PUBLIC_PATHS]:
        return await handler(request)
    principal = request[PRINCIPAL] = await identify(request)
    # From here on the caller is known: downloads are audited, refused or not.
    audited = is_download(request)
    try:
        entitle(principal)
        await limit(request, principal)
        request.app[KEY_USAGE].touch(principal.key_id)
        scope(request, principal)
        response = await handler(request)
    except Problem as refusal:
        if audited:
            record_download(request, principal, refusal.code, refusal.type.status)
        raise
    except GatewayError as error:
        if not audited:
            raise
        # Raised straight from the call: a local holding it would be held by its own
        # traceback, and keep the request alive until the collector ran.
        raise recorded_failure(request, principal, error) from error
    if audited:
        issued_until = request.get(ISSUED_UNTIL)
        if issued_until is not None:  # (None: a HEAD of the JSON link, which sends no URL)
            record_download(request, principal, "issued", response.status, issued_until)
    return response


def recorded_failure(request: web.Request, principal: Principal, error: GatewayError) -> Problem:
    """The problem a domain error on a download is answered with, in the audit trail."""
    failure = problem_for_error(error)
    record_download(request, principal, failure.code, failure.type.status)
    return failure


async def identify(request: web.Request) -> Principal:
    """The caller's live key. An address that keeps sending wrong tokens is refused before
    its token is even read: otherwise a guesser would learn which guess was right."""
    address = find_client_address(request)
    limits = request.app[RATE_LIMITS]
    if limits.shared is None:
        if limits.failed_auth.active:  # someone failed lately
            limits.check_address(address)
    # Shared limits look at the address in `limit`, in the same round trip as the rest;
    # one that Redis refused lately is refused here at once.
    elif limits.refused_addresses.active:
        limits.check_refused_address(address)
    try:
        return await authenticate(request)
    except Problem as problem:
        if problem.reason in GUESSES:
            if limits.shared is None:
                limits.failed(address)
            else:
                await limits.failed_shared(address)
        raise


def entitle(principal: Principal) -> None:
    """The key's workspace has API access."""
    if not principal.api_access:
        raise Problem("forbidden", reason="no_api_access")


async def limit(request: web.Request, principal: Principal) -> None:
    """The request's cost to the key's and to its workspace's rate limits (the cluster's,
    when they are shared, with the address's failed attempts)."""
    limits = request.app[RATE_LIMITS]
    requests = requests_in(request)
    if limits.shared is None:
        limits.admit(principal.key_id, principal.workspace_id, requests)
    else:
        await limits.admit_shared(
            principal.key_id, principal.workspace_id, request[CLIENT_ADDRESS], requests
        )


async def spend(request: web.Request, requests: int) -> None:
    """Charge a request counted as one (`limit`) for the `requests` it turned out to
    cost once read, or raise the 429. An upload's part URLs count one each (at most a
    bucket's burst in all), as download links do: signing 10,000 of them takes the
    process a third of a second, which one token a request would let a key repeat."""
    if requests <= 1:
        return
    principal = request[PRINCIPAL]
    limits = request.app[RATE_LIMITS]
    if limits.shared is None:
        limits.admit_beyond(principal.key_id, principal.workspace_id, requests, counted=1)
    else:
        await limits.admit_shared(
            principal.key_id, principal.workspace_id, request[CLIENT_ADDRESS], requests, 1
        )


def requests_in(request: web.Request) -> int:
    """What a request counts for: one, or a request for download links one per id (it
    saves the caller round trips, not budget); one too when it names too many to answer."""
    if request.match_info.route.name != DOWNLOAD_LINKS_ROUTE:
        return 1
    ids = len(request.query.getall("id", ()))
    return ids if 1 <= ids <= MAX_LINKS_PER_REQUEST else 1


def scope(request: web.Request, principal: Principal) -> None:
    """A read key may only read."""
    if not principal.may(request.method):
        raise Problem("insufficient_scope", {"WWW-Authenticate": CHALLENGE_INSUFFICIENT_SCOPE})


async def authenticate(request: web.Request) -> Principal:
    refuse_token_in_query(request)
    token = bearer_token(request)
    # Only well-formed tokens are ever cached, so a hit on the digest of the raw token
    # spares the checksum; a miss checks the format before any query.
    caches = request.app[CACHES]
    cached: Principal | Miss | None = (
        caches.keys.get(token_digest(token)) if caches.live else MISSING
    )
    principal: Principal | None
    if cached is not MISSING:
        principal = cached
    else:
        digest = parse_token(token)
        if digest is None:
            # Malformed: refused offline, with the same answer as an unknown key.
            raise unauthorized(CHALLENGE_INVALID_TOKEN, "malformed_token")
        principal = await lookup_principal(request, digest)
    if principal is None or principal.expired(time.time()):
        raise unauthorized(CHALLENGE_INVALID_TOKEN, "unknown_token")
    return principal


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
        request[PREFETCHED] = Prefetched(target, generation)
        if caches.may_store_attachment(generation, str(attachment_id)):
            caches.remember_attachment(str(attachment_id), row["workspace_id"], target)
    if caches.may_store_key(generation, digest):
        caches.keys.put(digest, principal)  # None too: unknown tokens cost no query
    return principal


# Query parameters that carry credentials by convention (RFC 6750 §2.3 names the first).
CREDENTIAL_PARAMETERS = ("access_token", "api_key")


def refuse_token_in_query(request: web.Request) -> None:
    """Credentials in a URL end up in logs, proxies and browser history (RFC 6750 §5.3):
    such a request is refused outright, even alongside a valid header."""
    if not request.query_string:
        return
    query = request.query
    # A token as a name too: `?ixk_...` alone is a name with an empty value.
    if any(name in query for name in CREDENTIAL_PARAMETERS) or any(
        name.startswith(PREFIX) or value.startswith(PREFIX) for name, value in query.items()
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
