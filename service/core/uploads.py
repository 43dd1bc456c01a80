"""What an upload through the API is made of: its declared checksum and, above one PUT,
its parts.

S3's rules for multipart uploads: every part but the last is 5 MiB to 5 GiB, at most
10,000 parts, 5 TiB in all. The plan is a pure function of the size and the preferred
part size, so `complete` recomputes it instead of storing a list of parts.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from typing import NamedTuple

from .errors import InvalidRequest

MIB = 1024 * 1024
MIN_PART_BYTES = 5 * MIB
MAX_PART_BYTES = 5 * 1024 * MIB
MAX_PARTS = 10_000
MAX_OBJECT_BYTES = 5 * 1024**4  # S3's largest object: 5 TiB

SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
# Standard base64 of 32 bytes: 43 characters and one "=" (what x-amz-checksum-sha256 holds).
SHA256_BASE64 = re.compile(r"[A-Za-z0-9+/]{43}=")


class Part(NamedTuple):
    number: int  # from 1
    size: int


def part_size_for(size: int, preferred: int) -> int:
    """The preferred part size, or the smallest whole number of MiB that keeps the upload
    within 10,000 parts."""
    needed = math.ceil(math.ceil(size / MAX_PARTS) / MIB) * MIB
    return min(max(preferred, needed, MIN_PART_BYTES), MAX_PART_BYTES)


def plan_parts(size: int, part_size: int) -> list[Part]:
    """The parts of an object of `size` bytes cut into `part_size` pieces (the last smaller)."""
    count = max(1, math.ceil(size / part_size))
    return [Part(n + 1, min(part_size, size - n * part_size)) for n in range(count)]


def parse_sha256(value: object) -> bytes:
    """The 32 bytes of a SHA-256 given as 64 hex digits or as standard base64."""
    if isinstance(value, str):
        if SHA256_HEX.fullmatch(value):
            return bytes.fromhex(value)
        if SHA256_BASE64.fullmatch(value):
            try:
                return base64.b64decode(value, validate=True)
            except binascii.Error:
                pass
    raise InvalidRequest("sha256")


def checksum_header(sha256: bytes) -> str:
    """The value of x-amz-checksum-sha256."""
    return base64.b64encode(sha256).decode()


def digest_text(sha256: bytes) -> str:
    """How the API shows a digest: "sha256:<hex>", as GitHub's release assets do."""
    return "sha256:" + sha256.hex()
