"""How long a presigned URL may live, given the credentials that sign it.

A URL signed with temporary credentials (an STS session, a container or instance role,
a `credential_process`) stops working when they expire, whatever its X-Amz-Expires
says. So before signing, credentials that would not outlive the URL get one chance to
refresh (botocore refreshes within 15 minutes of expiry); if they still would not, the
URL is shortened to what they have left, and its `expires_at` says so. Credentials that
are all but gone (or could not be refreshed) are `CredentialsExpiring` (a 503), never a
URL that cannot work.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from ..core.errors import CredentialsExpiring

# Kept between the credentials' end and the URL's: clocks differ a little.
MARGIN_SECONDS = 30
# Below this, a URL is not worth handing out: 503 and let the client retry.
MIN_URL_SECONDS = 30
# While credentials are short-lived, ask the chain to refresh at most this often
# (a credential_process runs a program each time).
REFRESH_INTERVAL_SECONDS = 5.0


def seconds_left(credentials: Any) -> float | None:
    """How long refreshable credentials remain valid; None for static ones.

    botocore keeps the expiry of RefreshableCredentials (and aiobotocore's subclasses) in
    `_expiry_time`, an aware datetime; it has no public accessor."""
    expiry = getattr(credentials, "_expiry_time", None)
    if expiry is None:
        return None
    return float((expiry - datetime.now(UTC)).total_seconds())


class UrlLifetime:
    """The expiry to sign with: the one asked for, or less when the credentials end first."""

    def __init__(self, credentials: Any) -> None:
        self._credentials = credentials
        self._refreshed_at = -REFRESH_INTERVAL_SECONDS
        self._first_load = asyncio.Lock()

    async def seconds(self, asked: int) -> int:
        left = seconds_left(self._credentials)
        if left is None and getattr(self._credentials, "_refresh_using", None) is not None:
            left = await self._load_deferred()
        if left is None or left >= asked + MARGIN_SECONDS:
            return asked
        if self._refresh_due():
            await self._refresh()
            left = seconds_left(self._credentials)
            assert left is not None
            if left >= asked + MARGIN_SECONDS:
                return asked
        lifetime = int(left) - MARGIN_SECONDS
        if lifetime < MIN_URL_SECONDS:
            raise CredentialsExpiring(f"credentials end in {int(left)} s")
        return lifetime

    async def _load_deferred(self) -> float | None:
        """Refreshable credentials never loaded: deferred ones (a web identity, as with
        IRSA; an assumed role; SSO) have no expiry before their first use, and read as
        static they would sign the first URLs for longer than they live. One load for all
        the requests waiting on it; after a failed one, none for REFRESH_INTERVAL_SECONDS
        (each would call STS, and fail the same way)."""
        async with self._first_load:
            left = seconds_left(self._credentials)
            if left is None:
                if not self._refresh_due():
                    raise CredentialsExpiring("credentials could not be loaded")
                await self._refresh()
                left = seconds_left(self._credentials)
        return left

    def _refresh_due(self) -> bool:
        """At most one refresh (or first load) every REFRESH_INTERVAL_SECONDS; True takes it."""
        now = time.monotonic()
        if now - self._refreshed_at < REFRESH_INTERVAL_SECONDS:
            return False
        self._refreshed_at = now
        return True

    async def _refresh(self) -> None:
        try:
            await self._credentials.get_frozen_credentials()  # refreshes if it can
        except Exception as exc:  # botocore raises RuntimeError for "still expired"
            raise CredentialsExpiring("credentials could not be refreshed") from exc
