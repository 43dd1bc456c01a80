"""Problem codes, the domain errors each stands for, and how each one is rendered.

The `error`, `message` and `code` members are the public contract of the product's
reference text and never change; `problem` tells callers which rule they hit.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from ..core.errors import (
    CredentialsExpiring,
    DatabaseUnavailable,
    GatewayError,
    InvalidRequest,
    NotFound,
    StorageNotConfigured,
    StorageUnavailable,
    UnknownWorkspace,
)
from ..core.negotiation import weights

REALM = 'Bearer realm="api"'
CHALLENGE_INVALID_REQUEST = REALM + ', error="invalid_request"'
CHALLENGE_INVALID_TOKEN = REALM + ', error="invalid_token"'
CHALLENGE_INSUFFICIENT_SCOPE = REALM + ', error="insufficient_scope", scope="write"'


@dataclass(frozen=True, slots=True)
class ProblemType:
    status: int
    error: str
    message: str


_UNAVAILABLE = ProblemType(
    503, "Service Unavailable", "The service is temporarily unavailable. Please try again later"
)
_INCOMPLETE_UPLOAD = ProblemType(409, "Conflict", "The attachment's upload is not complete")
_FORBIDDEN = ProblemType(403, "Forbidden", "You don't have permission to access this resource")

PROBLEM_TYPES: Mapping[str, ProblemType] = {
    "bad_request": ProblemType(400, "Bad Request", "The request could not be understood"),
    # A query option out of range or unknown in value (`expires_in`, `redirect`...).
    "invalid_request": ProblemType(400, "Bad Request", "The request could not be understood"),
    "unauthorized": ProblemType(
        401, "Unauthorized", "Authentication required. Please provide a valid API token"
    ),
    # A secret-scanning report without its two signature headers, each given once.
    "signature_missing": ProblemType(400, "Bad Request", "The request could not be understood"),
    "forbidden": _FORBIDDEN,
    "insufficient_scope": _FORBIDDEN,
    # A secret-scanning report whose signature is not by a configured key, or not of its body.
    "signature_invalid": _FORBIDDEN,
    "not_found": ProblemType(404, "Not Found", "The requested resource was not found"),
    "method_not_allowed": ProblemType(
        405, "Method Not Allowed", "The request method is not allowed for this resource"
    ),
    # Downloading an attachment whose upload has not been confirmed (retry later).
    "upload_pending": _INCOMPLETE_UPLOAD,
    # Confirming an upload that is not in storage, or not with the size declared for it.
    "upload_incomplete": _INCOMPLETE_UPLOAD,
    # Asking for upload URLs again once the upload was confirmed: its bytes are final.
    "upload_confirmed": ProblemType(409, "Conflict", "The attachment's upload is already complete"),
    "payload_too_large": ProblemType(413, "Payload Too Large", "The request body is too large"),
    "rate_limited": ProblemType(
        429, "Too Many Requests", "Too many requests. Please retry after the time given"
    ),
    "internal_error": ProblemType(
        500, "Internal Server Error", "An unexpected error occurred. Please try again later"
    ),
    "storage_not_configured": _UNAVAILABLE,
    "service_unavailable": _UNAVAILABLE,
}

# Statuses aiohttp itself may raise (routing, body limits) and the problem each maps to.
_PROBLEM_FOR_STATUS = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


class Problem(Exception):
    """A failure with a problem code; the error middleware renders it."""

    def __init__(
        self, code: str, headers: Mapping[str, str] | None = None, reason: str | None = None
    ) -> None:
        super().__init__(code)
        self.code = code
        # Why, in a word, for metrics; never shown to the client.
        self.reason = reason or code
        self.type = PROBLEM_TYPES[code]
        self.headers = dict(headers or {})
        if self.type.status == 503 and "Retry-After" not in self.headers:
            self.headers["Retry-After"] = str(retry_after())


# What reading a request's body raises when the body does not arrive whole: a
# `Content-Encoding` that does not decompress, or the connection lost mid-body (aiohttp
# lets the handler run on and fails its next read with the transport's error, a reset or
# any other OSError). The client's doing: invalid_request, never the logged 500 of a bug.
BODY_NOT_WHOLE = (web.RequestPayloadError, OSError)


def unauthorized(challenge: str, reason: str) -> Problem:
    return Problem("unauthorized", {"WWW-Authenticate": challenge}, reason)


def retry_after(base: int = 5) -> int:
    """Seconds to wait, with jitter so that clients refused together do not return together."""
    return base + random.randint(0, base)  # noqa: S311 - jitter, not a secret


def problem_for_error(error: GatewayError) -> Problem:
    """The problem a domain error is answered with (`reason` for the metrics only)."""
    if isinstance(error, InvalidRequest):
        return Problem("invalid_request", reason=error.reason)
    if isinstance(error, UnknownWorkspace):
        # The key's workspace is gone: to the caller, as if the key had never been.
        return unauthorized(CHALLENGE_INVALID_TOKEN, "unknown_token")
    for kind, code in _PROBLEM_FOR_ERROR:
        if isinstance(error, kind):
            return Problem(code)
    return Problem("internal_error")


# In order: a subclass before its base.
_PROBLEM_FOR_ERROR: tuple[tuple[type[GatewayError], str], ...] = (
    (NotFound, "not_found"),
    (StorageNotConfigured, "storage_not_configured"),
    (CredentialsExpiring, "service_unavailable"),
    (StorageUnavailable, "service_unavailable"),
    (DatabaseUnavailable, "service_unavailable"),
)


def problem_for_http_exception(exc: web.HTTPException) -> Problem:
    code = _PROBLEM_FOR_STATUS.get(exc.status)
    if code is None:
        code = "bad_request" if 400 <= exc.status < 500 else "internal_error"
    headers = {}
    if isinstance(exc, web.HTTPMethodNotAllowed):
        headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
    return Problem(code, headers)


# RFC 9457 `type` of each problem: a URN, stable and never dereferenced.
PROBLEM_TYPE_PREFIX = "urn:attachments-gateway:problem:"


def render(problem: Problem, request_id: str, details: bool = False) -> web.Response:
    """The contract's body; with `details` (the client accepts application/problem+json)
    the RFC 9457 members too, after the contract's, and that media type."""
    body: dict[str, object] = {
        "error": problem.type.error,
        "message": problem.type.message,
        "code": problem.type.status,
        "problem": problem.code,
        "request_id": request_id,
    }
    if details:
        body |= {
            "type": PROBLEM_TYPE_PREFIX + problem.code,
            "title": problem.type.error,
            "status": problem.type.status,
            "detail": problem.type.message,
            # The occurrence, by its request id: never the path, which may hold anything.
            "instance": "urn:attachments-gateway:request:" + request_id,
        }
    return web.Response(
        status=problem.type.status,
        body=json.dumps(body).encode(),
        content_type="application/problem+json" if details else "application/json",
        headers=problem.headers,
    )


def wants_problem_details(accept: str | None) -> bool:
    """`Accept` names application/problem+json with a weight above 0 (`q=0` refuses it)."""
    if accept is None or "problem+json" not in accept.lower():  # most clients: no parsing
        return False
    return weights(accept).get("application/problem+json", 0.0) > 0
