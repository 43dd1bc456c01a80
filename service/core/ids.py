"""Attachment ids as the API takes them: canonical UUID text only."""

from __future__ import annotations

import re
import uuid

# Canonical 8-4-4-4-12 hex only: uuid.UUID() would also take braces, "urn:uuid:"
# and bare hex, and every alias of an id would be one more way to probe. Always used
# with fullmatch: "$" also matches before a final newline, which a path can carry (%0A).
CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")


def canonical_uuid(raw: str) -> uuid.UUID | None:
    """The id `raw` names if it is canonical UUID text, else None."""
    return uuid.UUID(raw) if CANONICAL_UUID.fullmatch(raw) else None
