"""The two ways the gateway writes a moment: RFC 3339 text and microseconds since 1970."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def epoch_us(moment: datetime) -> int:
    """An aware datetime as whole microseconds since 1970 (exact: no float on the way)."""
    return (moment - UNIX_EPOCH) // MICROSECOND


def from_epoch_us(microseconds: int) -> datetime:
    """The inverse of `epoch_us`."""
    return UNIX_EPOCH + microseconds * MICROSECOND


def rfc3339(moment: datetime) -> str:
    """UTC, whole seconds, `Z`: the form of every time in the API's bodies and headers."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
