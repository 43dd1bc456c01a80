"""Rules about text that arrives as JSON strings or on the command line."""

from __future__ import annotations

import re

MAX_FILENAME_CHARS = 1024  # the column's CHECK
BUCKET_CHARS = range(3, 64)  # the column's CHECK, and S3's rule for a bucket's name
BUCKET_RULE = f"{BUCKET_CHARS.start} to {BUCKET_CHARS.stop - 1} characters"
MAX_OBJECT_KEY_CHARS = 1024  # the column's CHECK (S3 allows 1,024 bytes of UTF-8)
OBJECT_KEY_RULE = f"1 to {MAX_OBJECT_KEY_CHARS:,} characters, with no path segment . or .."
# Control characters (C0, DEL, C1) have no place in a file's name.
CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def is_utf8(text: str) -> bool:
    """False for text holding lone surrogates (JSON allows "\\ud800"; UTF-8 does not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_storable_filename(filename: str) -> bool:
    """A file's name as the column takes it (a CHECK violation must never be the first to
    notice): 1 to MAX_FILENAME_CHARS characters, no control character, valid UTF-8."""
    return (
        1 <= len(filename) <= MAX_FILENAME_CHARS
        and CONTROL_CHARACTER.search(filename) is None
        and is_utf8(filename)
    )


def is_storable_bucket(bucket: str) -> bool:
    """A bucket's name as the column takes it: 3 to 63 characters. (S3 itself may refuse
    more; that is its answer to give, but a row the column refuses would be a 500.)"""
    return len(bucket) in BUCKET_CHARS


def is_reachable_object_key(key: str) -> bool:
    """An object key the column takes and a presigned URL can name. Browsers, curl and
    HTTP libraries resolve `.` and `..` segments of a URL's path before sending it (RFC
    3986 §5.2.4), so a URL for `a/../b` would ask for `b`, and fail its signature."""
    return (
        1 <= len(key) <= MAX_OBJECT_KEY_CHARS
        and is_utf8(key)
        and not any(segment in (".", "..") for segment in key.split("/"))
    )
