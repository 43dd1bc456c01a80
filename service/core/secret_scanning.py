"""GitHub's secret-scanning reports: who signed them, what they say, and the answer.

GitHub POSTs a JSON array of `{token, type, url, source}` when it finds one of our tokens
in public code, and signs the exact body bytes with ECDSA (P-256, SHA-256):
`Github-Public-Key-Identifier` names which of its public keys, and
`Github-Public-Key-Signature` holds the base64 of the DER signature. The public keys are
configured (SECRET_SCANNING_PUBLIC_KEYS), never fetched: a request must not be able to
make the gateway call anywhere. The answer GitHub expects labels each token it sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from .errors import InvalidRequest
from .text import is_utf8
from .tokens import parse_token

# A report is small: GitHub sends a match or a few per message. The cap bounds what an
# unsigned sender can make us read and hash; the item count what a signed one can make
# us look up and write.
MAX_REPORT_BYTES = 64 * 1024
MAX_REPORTED_TOKENS = 100

TRUE_POSITIVE = "true_positive"
FALSE_POSITIVE = "false_positive"

SIGNATURE_ALGORITHM = ec.ECDSA(hashes.SHA256())
KEYS_FORMAT = "must be a JSON object of key identifier to PEM public key"

PublicKeys = Mapping[str, ec.EllipticCurvePublicKey]


def load_public_keys(spec: str) -> dict[str, ec.EllipticCurvePublicKey]:
    """The keys of SECRET_SCANNING_PUBLIC_KEYS (`{"<identifier>": "<PEM>"}`), each an
    ECDSA P-256 public key; ValueError saying what is wrong, never echoing a key."""
    try:
        entries = json.loads(spec)
    except ValueError:
        raise ValueError(KEYS_FORMAT) from None
    if not isinstance(entries, dict) or not entries:
        raise ValueError(KEYS_FORMAT + ", with one key at least")
    keys = {}
    for identifier, pem in entries.items():
        if not identifier or not isinstance(pem, str):
            raise ValueError(f"key {identifier!r} must be a PEM string")
        try:
            key = load_pem_public_key(pem.encode())
        except (ValueError, UnsupportedAlgorithm):
            raise ValueError(f"key {identifier!r} is not a PEM public key") from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise ValueError(f"key {identifier!r} is not an ECDSA P-256 public key")
        keys[identifier] = key
    return keys


def signature_verifies(keys: PublicKeys, identifier: str, signature: str, body: bytes) -> bool:
    """Whether `signature` (base64 DER) is the named key's ECDSA signature of `body`.
    Never raises: header values may hold any code point (aiohttp's surrogateescape)."""
    key = keys.get(identifier)
    if key is None:
        return False
    try:
        der = base64.b64decode(signature.encode("ascii"), validate=True)
        key.verify(der, body, SIGNATURE_ALGORITHM)
    except (ValueError, InvalidSignature):  # (binascii.Error and UnicodeError are ValueErrors)
        return False
    return True


@dataclass(frozen=True, slots=True)
class ReportedToken:
    """One match of a report; `url` and `source` say where GitHub found it."""

    token: str
    type: str
    url: str | None
    source: str | None

    @property
    def token_hash(self) -> str:
        """What GitHub expects back instead of the token: the hex SHA-256 of its text. For
        one of our tokens this is the digest we store (core/tokens.py)."""
        return hashlib.sha256(self.token.encode("utf-8")).hexdigest()

    @property
    def digest(self) -> bytes | None:
        """The digest if the token is a well-formed `ixk_` token, else None (offline)."""
        return parse_token(self.token)


def parse_report(body: bytes) -> list[ReportedToken]:
    """The report's matches; InvalidRequest("report") for anything but a JSON array of
    1 to MAX_REPORTED_TOKENS objects with non-empty string `token` and `type` (and `url`
    and `source` strings if present), every string one Postgres can store."""
    try:
        items = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: `[[[[...` nested too deep
        raise InvalidRequest("report") from None
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_REPORTED_TOKENS:
        raise InvalidRequest("report")
    return [_reported_token(item) for item in items]


def _reported_token(item: Any) -> ReportedToken:
    if not isinstance(item, dict):
        raise InvalidRequest("report")
    token, kind = item.get("token"), item.get("type")
    url, source = item.get("url"), item.get("source")
    if not (isinstance(token, str) and isinstance(kind, str) and _storable(token, kind)):
        raise InvalidRequest("report")
    if not all(
        value is None or value == "" or (isinstance(value, str) and _storable(value))
        for value in (url, source)
    ):
        raise InvalidRequest("report")
    return ReportedToken(token, kind, url, source)


def _storable(*texts: str) -> bool:
    """Non-empty, UTF-8 and without NUL, every one: what Postgres text takes."""
    return all(text != "" and "\x00" not in text and is_utf8(text) for text in texts)


def labelled(reported: list[ReportedToken], ours: Collection[str]) -> list[dict[str, str]]:
    """GitHub's expected answer, one entry per match in its order: `true_positive` for a
    token whose hash is one of our keys' (`ours`: live, expired or revoked), else
    `false_positive`. Never the token itself."""
    return [
        {
            "token_hash": match.token_hash,
            "token_type": match.type,
            "label": TRUE_POSITIVE if match.token_hash in ours else FALSE_POSITIVE,
        }
        for match in reported
    ]
