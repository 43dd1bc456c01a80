"""Keys reported leaked: revoked at once, and each report recorded (migration 0008).

Revoking is what `attachments-gateway key revoke` does, setting `revoked_at`: the
api_keys trigger (migration 0002) then NOTIFYs every replica, whose caches forget the key.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from ..core.secret_scanning import ReportedToken
from .pool import Database

# One statement, so that a key is never revoked without its record or recorded without
# being revoked. The matched keys are locked: of two reports of one key at once, one
# revokes it and the other finds it revoked. (Data-modifying CTEs run whether or not the
# final SELECT reads them.)
REVOKE_REPORTED = """
    WITH reported AS (
        SELECT * FROM unnest($1::bytea[], $2::text[], $3::text[], $4::text[])
                 AS r (digest, token_type, url, source)
    ), matched AS (
        SELECT k.id, k.workspace_id, k.display_prefix, k.token_digest, k.revoked_at
        FROM api_keys k
        WHERE k.token_digest IN (SELECT digest FROM reported)
        ORDER BY k.id  -- locked in one order: two reports of the same keys never deadlock
        FOR UPDATE
    ), revoked AS (
        UPDATE api_keys k SET revoked_at = now()
        FROM matched m
        WHERE k.id = m.id AND m.revoked_at IS NULL
    ), recorded AS (
        INSERT INTO leaked_key_reports
            (key_id, workspace_id, key_prefix, revoked, token_type, url, source, client_address)
        SELECT m.id, m.workspace_id, m.display_prefix, m.revoked_at IS NULL,
               r.token_type, r.url, r.source, $5
        FROM reported r JOIN matched m ON m.token_digest = r.digest
    )
    SELECT token_digest FROM matched
"""


async def revoke_reported_keys(
    db: Database, reported: Sequence[ReportedToken], address: str | None
) -> set[bytes]:
    """Revoke every key whose token the report holds, recording where each was found;
    the digests of the reported tokens that are our keys (revoked now or before).
    Tokens that are not well-formed `ixk_` tokens never reach the database."""
    ours = [(match, digest) for match in reported if (digest := match.digest) is not None]
    if not ours:
        return set()
    rows = await db.fetch(
        REVOKE_REPORTED,
        [digest for _, digest in ours],
        [match.type for match, _ in ours],
        [match.url for match, _ in ours],
        [match.source for match, _ in ours],
        _inet(address),
    )
    return {bytes(row["token_digest"]) for row in rows}


def _inet(address: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address as the inet column takes it; None for what is none (a Unix socket, or
    an IPv6 zone Postgres cannot store)."""
    try:
        return ipaddress.ip_address(address) if address is not None else None
    except ValueError:
        return None
