"""What can go wrong below the web layer, in the domain's words.

`data` and `storage` raise only these (and the web layer's error middleware is the one
place that turns them into problem codes, statuses and Retry-After). Each names what
happened, never how a client is told.
"""

from __future__ import annotations


class GatewayError(Exception):
    """The base of every domain error."""


class DatabaseUnavailable(GatewayError):
    """The database cannot be reached or used right now (try again later)."""


class StorageNotConfigured(GatewayError):
    """No S3 endpoint or region, or no credentials: the message says which."""


class StorageUnavailable(GatewayError):
    """Object storage cannot be reached, or refused a call it should have taken."""


class CredentialsExpiring(StorageUnavailable):
    """The signing credentials end too soon for any useful URL, and could not be refreshed."""


class NotFound(GatewayError):
    """No such live attachment for this caller: missing, deleted or another tenant's."""


class UnknownWorkspace(GatewayError):
    """The caller's workspace went away while the request was under way."""


class KeyNotRotatable(GatewayError):
    """The key cannot be rotated (unknown, revoked, expired, or rotated already): the
    message says which, in the operator's words."""


class InvalidRequest(GatewayError):
    """An option or body member out of range or unknown in value; `reason` names which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ObjectTooLarge(GatewayError):
    """A file larger than S3 stores in one object (5 TiB)."""
