"""An attachment as a download needs it, and the URL handed out for it."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

from .disposition import content_disposition
from .media_types import safe_content_type
from .options import may_be_inline
from .times import epoch_us, rfc3339
from .uploads import digest_text


# Cached values are NamedTuples of strings: tuples holding no containers drop out of the
# garbage collector's tracking, so a cache of many entries costs a full collection nothing.
class PresignedUrl(NamedTuple):
    url: str
    # Microseconds since the Unix epoch: an integer the audit trail queues as it is.
    expires_at_us: int
    expires_text: str  # RFC 3339, UTC, whole seconds
    # The 307's JSON body, made once: a reused URL reuses its body too.
    body: bytes = b""
    # Signed for less than was asked: the credentials end sooner.
    shortened: bool = False

    @classmethod
    def of(cls, url: str, expires_at: datetime, shortened: bool = False) -> PresignedUrl:
        return cls(url, *expiry_forms(expires_at), shortened)


@functools.lru_cache(maxsize=16)
def expiry_forms(expires_at: datetime) -> tuple[int, str, bytes]:
    """An expiry as PresignedUrl holds it: microseconds, RFC 3339 text, the 307's body.
    URLs are signed at whole seconds, so the URLs of one second share these."""
    text = rfc3339(expires_at)
    return epoch_us(expires_at), text, json.dumps({"expires_at": text}).encode()


class AttachmentTarget(NamedTuple):
    """What presigning an attachment needs, computed once per lookup (and then cached)."""

    bucket: str
    key: str
    disposition: str  # response-content-disposition, as an attachment
    content_type: str  # response-content-type
    filename: str
    size_bytes: int | None
    # Created through the API and its upload not yet confirmed: downloads answer 409.
    pending: bool = False
    # "sha256:<hex>" of the bytes, when they were checked (an upload that declared it, or
    # `attachment add`, which hashed the file it sent).
    digest: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> AttachmentTarget:
        return cls(
            row["bucket"],
            row["object_key"],
            content_disposition(row["filename"]),
            safe_content_type(row["content_type"]),
            row["filename"],
            row["size_bytes"],
            row["upload_pending"],
            digest_of(row),
        )

    def response(self, inline: bool = False) -> tuple[tuple[str, str], tuple[str, str]]:
        """The S3 query parameters that set the download's headers; `inline` is granted
        only to types a browser shows without running anything."""
        disposition = self.disposition
        if inline and may_be_inline(self.content_type):
            disposition = content_disposition(self.filename, "inline")
        return (
            ("response-content-disposition", disposition),
            ("response-content-type", self.content_type),
        )


def digest_of(row: Mapping[str, Any]) -> str | None:
    """The attachment's digest as the API shows it: known once its upload was checked."""
    sha256 = row["sha256"]
    return digest_text(sha256) if sha256 is not None and not row["upload_pending"] else None
