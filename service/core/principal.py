"""Who is calling: a live API key and what it may do."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

READ_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True, slots=True)
class Principal:
    """A live key, as cached: `expires_at` (epoch seconds) is checked on every use."""

    key_id: uuid.UUID
    workspace_id: uuid.UUID
    scope: str
    key_prefix: str
    api_access: bool
    expires_at: float | None
    # The workspace id as text, made once per key: every request's log line carries it.
    workspace_text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "workspace_text", str(self.workspace_id))

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Principal:
        expires_at = row["expires_at"].timestamp() if row["expires_at"] else None
        return cls(
            row["id"],
            row["workspace_id"],
            row["scope"],
            row["display_prefix"],
            row["api_access"],
            expires_at,
        )

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def may(self, method: str) -> bool:
        """A read key may only read (GET, HEAD); a write key may do anything."""
        return method in READ_METHODS or self.scope == "write"
