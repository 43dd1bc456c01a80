"""The `ixk_` API token: generate, parse offline, digest.

Layout (GitHub's token scheme): ``ixk_`` + 32 base62 random characters + 6 base62
characters of the CRC32 of the random part. The checksum lets garbage be refused
without a database round trip; the prefix makes leaked keys greppable. The CRC is
not authentication: only the SHA-256 digest lookup is.
"""

from __future__ import annotations

import hashlib
import secrets
import zlib

PREFIX = "ixk_"
RANDOM_LENGTH = 32
CHECKSUM_LENGTH = 6
TOKEN_LENGTH = len(PREFIX) + RANDOM_LENGTH + CHECKSUM_LENGTH
DISPLAY_PREFIX_LENGTH = len(PREFIX) + 8

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BASE62_BYTES = frozenset(BASE62.encode())


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, remainder = divmod(number, 62)
        digits.append(BASE62[remainder])
    return "".join(reversed(digits))


def checksum(random_part: str) -> str:
    """Six base62 characters of CRC32 over the random part (62**6 > 2**32)."""
    return _base62(zlib.crc32(random_part.encode("ascii")), CHECKSUM_LENGTH)


def generate_token() -> str:
    random_part = "".join(secrets.choice(BASE62) for _ in range(RANDOM_LENGTH))
    return PREFIX + random_part + checksum(random_part)


def parse_token(candidate: str) -> bytes | None:
    """The token's digest if it is well formed, else None. Never raises.

    aiohttp hands header values over as str decoded with surrogateescape, so a
    hostile value may hold any code point: check the length and alphabet before
    anything that could raise on it.
    """
    if len(candidate) != TOKEN_LENGTH or not candidate.startswith(PREFIX):
        return None
    raw = candidate.encode("ascii", "replace")
    body = raw[len(PREFIX) :]
    if not _BASE62_BYTES.issuperset(body):
        return None
    random_part = body[:RANDOM_LENGTH].decode("ascii")
    if checksum(random_part) != body[RANDOM_LENGTH:].decode("ascii"):
        return None
    return digest(raw)


def token_digest(candidate: str) -> bytes:
    """SHA-256 of whatever the client sent, for cache lookups; never raises."""
    return hashlib.sha256(candidate.encode("utf-8", "surrogateescape")).digest()


def digest(token: bytes | str) -> bytes:
    """SHA-256 of the whole token: the only form in which a token is stored."""
    if isinstance(token, str):
        token = token.encode("ascii")
    return hashlib.sha256(token).digest()


def display_prefix(token: str) -> str:
    """The part of a token that is safe to show and log (`ixk_` + 8 characters)."""
    return token[:DISPLAY_PREFIX_LENGTH]
