"""What a download request may ask for beyond the plain redirect.

`?redirect=false` (or an `Accept` naming `application/json` and no `*/*`): a 200 JSON
body with the URL instead of a 307, for clients that must not forward credentials across
hosts. `?expires_in=SECONDS`: a shorter or longer URL lifetime, within the configured
maximum. `?disposition=inline|attachment`: inline only for types a browser shows without
running anything. A request without these gets exactly the core contract's answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .errors import InvalidRequest
from .negotiation import weights

# Ids one request for download links may name: 100 canonical ids ("id=<36>&" each) fit
# well inside aiohttp's 8,190-byte request line.
MAX_LINKS_PER_REQUEST = 100

# Shown inline only when asked for, and only these: they render without scripts.
# (SVG is an image that can run scripts; HTML and friends are obviously out.)
INLINE_TYPES = frozenset({"application/pdf", "text/plain"})
INLINE_FAMILIES = ("image/", "audio/", "video/")
NOT_INLINE = frozenset({"image/svg+xml"})


@dataclass(frozen=True, slots=True)
class DownloadOptions:
    as_json: bool = False
    expires_in: int | None = None  # None: PRESIGN_EXPIRES_SECONDS
    inline: bool = False  # asked for; granted only for INLINE_TYPES

    @property
    def cache_variant(self) -> tuple[int, bool]:
        return (self.expires_in or 0, self.inline)


PLAIN = DownloadOptions()


def parse_download_options(
    query: Mapping[str, str] | None, accept: str | None, max_expires: int
) -> DownloadOptions:
    """The options of a query (None: no query string) and an Accept header."""
    if query is None and accept is None:
        return PLAIN  # the hot path: nothing to parse
    as_json = wants_json(accept)
    expires_in = None
    inline = False
    if query is not None:
        query = single_options(query)
        redirect = query.get("redirect")
        if redirect is not None:
            if redirect not in ("true", "false"):
                raise InvalidRequest("redirect")
            as_json = redirect == "false"
        raw = query.get("expires_in")
        if raw is not None:
            if not (raw.isascii() and raw.isdigit() and len(raw) <= 7):
                raise InvalidRequest("expires_in")
            expires_in = int(raw)
            if not 1 <= expires_in <= max_expires:
                raise InvalidRequest("expires_in")
        disposition = query.get("disposition")
        if disposition is not None:
            if disposition not in ("inline", "attachment"):
                raise InvalidRequest("disposition")
            inline = disposition == "inline"
    if not as_json and expires_in is None and not inline:
        return PLAIN
    return DownloadOptions(as_json, expires_in, inline)


OPTION_NAMES = frozenset({"redirect", "expires_in", "disposition"})


def single_options(query: Mapping[str, str]) -> dict[str, str]:
    """The options of `query`, each given once: a name given twice (`?redirect=false&
    redirect=true`) is refused, where taking either value would guess what was meant.
    (A query's `items()` holds every pair, repeated names included.)"""
    options: dict[str, str] = {}
    for name, value in query.items():
        if name in OPTION_NAMES:
            if name in options:
                raise InvalidRequest(name)
            options[name] = value
    return options


def wants_json(accept: str | None) -> bool:
    """`Accept` admits application/json (in any case, weight above 0) and not `*/*` (a
    browser's Accept always has it)."""
    if not accept:
        return False
    accept = accept.lower()
    if "json" not in accept:  # curl's and most clients' `*/*`: nothing to parse
        return False
    ranges = weights(accept)
    return ranges.get("application/json", 0.0) > 0 and ranges.get("*/*", 0.0) <= 0


def may_be_inline(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type in NOT_INLINE:
        return False
    return media_type in INLINE_TYPES or media_type.startswith(INLINE_FAMILIES)
