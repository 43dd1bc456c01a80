"""The audit trail's rows in Postgres' binary COPY format, encoded here rather than by asyncpg.

Every download is a row, so the writer's cost per row is a cost per download. Most of a
row repeats within a batch (the key's ids and prefix, the method, the outcome, the
client's address and user agent): the queue keeps each combination of them once
(queue.py), and each is encoded once per batch; the rest of a row is two integer packs
(its time, its URL's expiry) and its id, and the ids of a chunk of rows are checked and
decoded in one pass of C each. What that saves: docs/performance.md.

The format (PostgreSQL documentation, "COPY", "Binary Format"): a signature, flags and an
extension length; per row a 16-bit field count and, per field, a 32-bit length (-1 for
NULL) and the value in the type's binary send format; a 16-bit -1 at the end. The values:
timestamptz is microseconds since 2000-01-01 UTC as a 64-bit integer, uuid its 16 bytes,
text its UTF-8 bytes, smallint 16 bits; inet is the family, prefix bits, an is-cidr flag,
the address's length and its bytes (Postgres' network.c, `inet_send`), written from the
address string with `socket.inet_pton` (asyncpg's own inet encoder parses every address
with the `ipaddress` module, which costs more than the rest of the row).
tests/test_audit_copy.py proves the rows equal to what asyncpg writes for the same facts.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
from binascii import unhexlify
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from ...core.ids import CANONICAL_UUID, canonical_uuid
from .queue import ID_LENGTH, NO_EXPIRY, AuditQueue, Facts

USER_AGENT_LENGTH = 256
# Rows encoded between two turns of the event loop: a 10,000-row COPY must not hold the
# loop for its whole encoding, past the p99 of a download.
ROWS_PER_TURN = 1000
# The gateway's own check (core/ids.py) on a chunk of the queue's ids at once: it keeps
# each in ID_LENGTH bytes, so the chunk matches only if every id in it does.
ALL_CANONICAL_UUIDS = re.compile(b"(?:" + CANONICAL_UUID.pattern.encode() + b")*")

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)  # no flags, no extension
TRAILER = struct.pack("!h", -1)
NULL = struct.pack("!i", -1)
FIELDS = 11  # download_audit's COLUMNS
POSTGRES_EPOCH_US = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000

_LENGTH = struct.Struct("!i")
_ROW_START = struct.Struct("!hiq")  # field count, then `at`: length 8 and its microseconds
_STATUS = struct.Struct("!ih")  # length 2, smallint
_TIMESTAMP = struct.Struct("!iq")  # length 8, microseconds since 2000
_UUID_LENGTH = _LENGTH.pack(16)
# inet's header: Postgres' own family numbers (PGSQL_AF_INET, PGSQL_AF_INET6), not the
# socket module's; host addresses only (all bits, not cidr).
_IPV4 = struct.pack("!BBBB", 2, 32, 0, 4)
_IPV6 = struct.pack("!BBBB", 3, 128, 0, 16)


def encode_inet(address: str) -> bytes:
    """One host address ("192.0.2.1", "2001:db8::1", "fe80::1%eth0") in `inet`'s binary form."""
    if ":" not in address:
        return _IPV4 + socket.inet_pton(socket.AF_INET, address)
    # A zone ("%eth0") is not part of an inet value; `ipaddress` would drop it too.
    return _IPV6 + socket.inet_pton(socket.AF_INET6, address.partition("%")[0])


def printable(user_agent: str | None) -> str | None:
    """At most USER_AGENT_LENGTH characters, each control or format character as "?"."""
    if user_agent is None:
        return None
    user_agent = user_agent[:USER_AGENT_LENGTH]
    if user_agent.isprintable():  # nearly always: one C call instead of a loop per character
        return user_agent
    return "".join(c if c.isprintable() else "?" for c in user_agent)


def _value(data: bytes) -> bytes:
    return _LENGTH.pack(len(data)) + data


def _text(value: str | None) -> bytes:
    # "replace": a lone surrogate cannot be UTF-8; an exception here would stop the writer.
    return NULL if value is None else _value(value.encode(errors="replace"))


def _address(value: str | None) -> bytes:
    if not value:
        return NULL  # no address (a Unix socket): NULL
    try:
        return _value(encode_inet(value))
    except (OSError, ValueError):
        # Not an IP address: NULL, rather than a COPY that fails (OSError reads as "database
        # unavailable", and the batch would be retried forever at the head of the queue).
        return NULL


def _user_agent(value: str | None) -> bytes:
    return _text(printable(value))


async def copy_data(queue: AuditQueue, rows: int) -> AsyncIterator[bytes]:
    """The queue's oldest `rows` as a binary COPY stream, in chunks of ROWS_PER_TURN rows
    with a turn of the event loop between them (the queue may grow meanwhile; only the
    writer removes rows from it, after the COPY)."""
    # Each distinct fact of the batch encoded once, as the bytes before the row's id (the
    # principal) and after it (method to user agent).
    encoded: dict[int, tuple[bytes, bytes]] = {}
    fields = _FieldCache()
    times, expiries, facts, known = queue.times, queue.expiries, queue.facts, queue.known
    yield SIGNATURE
    for first in range(0, rows, ROWS_PER_TURN):
        last = min(first + ROWS_PER_TURN, rows)
        parts: list[bytes] = []
        for row, attachment_id in enumerate(_attachment_ids(queue, first, last), first):
            fact = facts[row]
            around = encoded.get(fact)
            if around is None:
                around = encoded[fact] = fields.encode(known[fact])
            expiry = expiries[row]
            parts += (
                _ROW_START.pack(FIELDS, 8, times[row] // 1000 - POSTGRES_EPOCH_US),
                around[0],
                attachment_id,
                around[1],
                NULL if expiry == NO_EXPIRY else _TIMESTAMP.pack(8, expiry - POSTGRES_EPOCH_US),
            )
        yield b"".join(parts)
        await asyncio.sleep(0)
    yield TRAILER


def _attachment_ids(queue: AuditQueue, first: int, last: int) -> list[bytes]:
    """The rows' attachment_id fields: the id as the gateway reads ids, else NULL (it is
    still a download that was refused)."""
    chunk = bytes(queue.ids[first * ID_LENGTH : last * ID_LENGTH])
    if ALL_CANONICAL_UUIDS.fullmatch(chunk):  # nearly always: the rows in one pass of C
        binary = unhexlify(chunk.replace(b"-", b""))
        return [_UUID_LENGTH + binary[at : at + 16] for at in range(0, len(binary), 16)]
    fields = []
    for at in range(0, len(chunk), ID_LENGTH):
        # (The queue holds ASCII only: ids that are ASCII, or NOT_AN_ID.)
        attachment_id = canonical_uuid(chunk[at : at + ID_LENGTH].decode("ascii"))
        fields.append(NULL if attachment_id is None else _UUID_LENGTH + attachment_id.bytes)
    return fields


class _FieldCache:
    """Fields encoded so far in one batch, by value: facts that differ in one field (the
    status of a refusal, say) share the encoding of the others."""

    def __init__(self) -> None:
        self.principals: dict[int, bytes] = {}  # by id(): the queue keeps them alive
        self.addresses: dict[str | None, bytes] = {}
        self.agents: dict[str | None, bytes] = {}

    def encode(self, facts: Facts) -> tuple[bytes, bytes]:
        principal, method, outcome, status, address, agent = facts
        who = self.principals.get(id(principal))
        if who is None:
            who = self.principals[id(principal)] = b"".join(
                (
                    _UUID_LENGTH,
                    principal.workspace_id.bytes,
                    _UUID_LENGTH,
                    principal.key_id.bytes,
                    _text(principal.key_prefix),
                )
            )
        if address not in self.addresses:
            self.addresses[address] = _address(address)
        if agent not in self.agents:
            self.agents[agent] = _user_agent(agent)
        rest = b"".join(
            (
                _text(method),
                _text(outcome),
                _STATUS.pack(2, status),
                self.addresses[address],
                self.agents[agent],
            )
        )
        return who, rest
