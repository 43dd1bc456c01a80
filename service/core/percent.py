"""Percent-encoding (RFC 3986 §2.1): `urllib.parse.quote`'s output, in C rather than per byte.

`quote` encodes text to UTF-8 and then, unless every byte is safe, calls a Python-level
function for each byte. A cold download encodes an object key, a Content-Disposition
and a content type of its own, most of them holding a space, `;` or `"`, so that loop
ran for nearly every byte (docs/performance.md). Here each byte is looked up in a table of its
encoding by `str.translate` (tests/test_percent.py holds the two equal, with
Hypothesis, for any text and the safe sets in use).
"""

from __future__ import annotations

import functools

# What `quote` never encodes (RFC 3986 unreserved characters).
ALWAYS_SAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~"


@functools.cache
def _table(safe: str) -> tuple[str, ...]:
    """Byte value -> itself or `%XX`, for the bytes 0-255 (safe characters are ASCII)."""
    kept = frozenset((ALWAYS_SAFE + safe).encode("ascii"))
    return tuple(chr(byte) if byte in kept else f"%{byte:02X}" for byte in range(256))


def percent_encode(text: str, safe: str = "/") -> str:
    """`urllib.parse.quote(text, safe=safe)`: UTF-8, uppercase hex; text that is not
    UTF-8 (a lone surrogate) raises UnicodeEncodeError as it does there."""
    table = _table(safe)
    if text.isascii():
        return text.translate(table)
    # One character per UTF-8 byte, each then looked up like an ASCII one.
    return text.encode("utf-8").decode("latin-1").translate(table)
