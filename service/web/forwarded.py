"""The client's address, worked out once a request: the TCP peer, or, behind a trusted
proxy, the address that proxy says it forwarded for."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network

from aiohttp import web

from .config import SETTINGS

# None for a peer without an address (a Unix socket).
CLIENT_ADDRESS: web.RequestKey[str | None] = web.RequestKey("client_address")


def find_client_address(request: web.Request) -> str | None:
    """Store and return the client's address (CLIENT_ADDRESS): the TCP peer, or, when that
    peer is one of TRUSTED_PROXIES, the nearest address in X-Forwarded-For that is not
    one (appended by proxies left to right)."""
    address = request[CLIENT_ADDRESS] = _client_address(
        request, request.app[SETTINGS].trusted_proxy_networks
    )
    return address


def _client_address(
    request: web.Request, trusted: Sequence[IPv4Network | IPv6Network]
) -> str | None:
    peer = request.remote
    if not trusted or peer is None or not _is_trusted(peer, trusted):
        return peer
    # Several header lines are one list, in order (RFC 9110 §5.3): a proxy may add its
    # own line (HAProxy's `option forwardfor` does) after one its client forged.
    hops = ",".join(request.headers.getall("X-Forwarded-For", ()))
    for hop in reversed(hops.split(",")):
        hop = hop.strip()
        try:
            address = ipaddress.ip_address(hop)
        except ValueError:
            break  # garbage: trust nothing further left
        # A scope (`fe80::1%anything`) is free text after the address: garbage too, or a
        # client could name a new bucket with each, or smuggle separators into the
        # shared limits' batch.
        if getattr(address, "scope_id", None) is not None:
            break
        if not _is_trusted(hop, trusted):
            return hop
    return peer


def _is_trusted(address: str, trusted: Sequence[IPv4Network | IPv6Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)
