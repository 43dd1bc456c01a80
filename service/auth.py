"""Bearer authentication: who is calling, and may they call `/api/v1` at all.

The middleware decides, in the contract's order: 401 (no or bad credentials),
403 `forbidden` (workspace without API access), 403 `insufficient_scope` (read key,
unsafe method). What a caller may see is then decided per route, by tenant.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from .db import find_key
from .keys import DATABASE, PRINCIPAL, PUBLIC_PATHS
from .problems import (
    CHALLENGE_INSUFFICIENT_SCOPE,
    CHALLENGE_INVALID_REQUEST,
    CHALLENGE_INVALID_TOKEN,
    REALM,
    Problem,
    unauthorized,
)
from .tokens import parse_token

READ_METHODS = frozenset({"GET", "HEAD"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: uuid.UUID
    workspace_id: uuid.UUID
    scope: str
    key_prefix: str


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


async def authenticate(request: web.Request) -> Principal:
    token = bearer_token(request)
    digest = parse_token(token)
    if digest is None:
        # Malformed: refused offline, with the same answer as an unknown key.
        raise unauthorized(CHALLENGE_INVALID_TOKEN, "malformed_token")
    row = await find_key(request.app[DATABASE], digest)
    if row is None:
        raise unauthorized(CHALLENGE_INVALID_TOKEN, "unknown_token")
    if not row["api_access"]:
        raise Problem("forbidden", reason="no_api_access")
    return Principal(row["id"], row["workspace_id"], row["scope"], row["display_prefix"])


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in request.app[PUBLIC_PATHS]:
        return await handler(request)
    principal = await authenticate(request)
    request[PRINCIPAL] = principal
    if request.method not in READ_METHODS and principal.scope != "write":
        raise Problem("insufficient_scope", {"WWW-Authenticate": CHALLENGE_INSUFFICIENT_SCOPE})
    return await handler(request)
