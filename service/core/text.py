"""Rules about text that arrives as JSON strings."""

from __future__ import annotations


def is_utf8(text: str) -> bool:
    """False for text holding lone surrogates (JSON allows "\\ud800"; UTF-8 does not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
