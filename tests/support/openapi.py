"""The OpenAPI document (service/openapi.json) as the tests read it: its text, and its
contents loaded with duplicate keys refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DOCUMENT_PATH = Path(__file__).resolve().parents[2] / "service" / "openapi.json"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise ValueError(f"duplicate keys in {DOCUMENT_PATH.name}: {duplicates}")
    return dict(pairs)


TEXT = DOCUMENT_PATH.read_text(encoding="utf-8")
DOCUMENT: dict[str, Any] = json.loads(TEXT, object_pairs_hook=_unique_keys)
