"""Media types (RFC 9110 §8.3.1): the one check of what may be an attachment's Content-Type."""

from __future__ import annotations

import re

_TCHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
# Always used with fullmatch, so no newline gets through.
_MEDIA_TYPE = re.compile(rf'{_TCHARS}/{_TCHARS}( *; *{_TCHARS}=("[ !#-\[\]-~]*"|{_TCHARS}))* *')
# The longest Content-Type stored (the column's CHECK) or echoed by S3.
MAX_MEDIA_TYPE_CHARS = 255
DEFAULT_CONTENT_TYPE = "application/octet-stream"


def is_media_type(value: str) -> bool:
    """A well-formed media type, parameters included, of at most MAX_MEDIA_TYPE_CHARS."""
    return len(value) <= MAX_MEDIA_TYPE_CHARS and _MEDIA_TYPE.fullmatch(value) is not None


def safe_content_type(value: str | None) -> str:
    """The stored type if it is a well-formed media type, else octet-stream."""
    if value and is_media_type(value):
        return value
    return DEFAULT_CONTENT_TYPE
