"""The audit trail's queue: downloads seen and not yet written, kept in columns.

A download adds a few bytes to four flat arrays (its time, its URL's expiry, its id as
text, the index of its facts) and keeps no object of its own alive until the flush. What
repeats from one download to the next (the key, method, outcome, status, client address
and user agent) is one entry in a table of facts, shared by every row that has them and
emptied once they are written; the writer encodes each distinct fact once per batch.

The expiry is a column, not a fact: every URL has its own, so as a fact nearly every
download would be a new entry. Why this shape, measured: docs/performance.md.
"""

from __future__ import annotations

from array import array
from typing import Any

from ...core.principal import Principal

# The path's id as its 36 characters of canonical text; anything else (a canonical id has
# exactly 36 ASCII characters) as 36 bytes that no id matches, written as NULL.
ID_LENGTH = 36
NOT_AN_ID = b"?" * ID_LENGTH
# A download that handed out no URL (a refusal): array("q")'s least value, which no
# expiry (microseconds since 1970) comes near.
NO_EXPIRY = -(2**63)

# principal, method, outcome, status, client address, user agent
Facts = tuple[Principal, str, str, int, str | None, str | None]


class AuditQueue:
    """Rows in order of arrival; the writer reads the oldest and then forgets them."""

    def __init__(self) -> None:
        self.times = array("q")  # time.time_ns() of each download
        self.expiries = array("q")  # its URL's expiry in µs since 1970, or NO_EXPIRY
        self.ids = bytearray()  # ID_LENGTH bytes a row
        self.facts = array("I")  # each row's index into `known`
        self.known: list[Facts] = []
        # The same facts as keys to their index; the principal by identity (hashing a
        # dataclass hashes its fields), which is safe while `known` keeps it alive.
        self._index: dict[tuple[Any, ...], int] = {}

    def __len__(self) -> int:
        return len(self.times)

    def append(
        self,
        seen_ns: int,
        principal: Principal,
        raw_id: str,
        method: str,
        outcome: str,
        status: int,
        address: str | None,
        user_agent: str | None,
        expires_at_us: int | None,
    ) -> None:
        key = (id(principal), method, outcome, status, address, user_agent)
        index = self._index.get(key)
        if index is None:
            index = self._index[key] = len(self.known)
            self.known.append((principal, method, outcome, status, address, user_agent))
        self.times.append(seen_ns)
        self.expiries.append(NO_EXPIRY if expires_at_us is None else expires_at_us)
        self.facts.append(index)
        # (isascii is a flag lookup: a 36-character ASCII id is 36 bytes, anything else none.)
        self.ids += raw_id.encode() if len(raw_id) == ID_LENGTH and raw_id.isascii() else NOT_AN_ID

    def forget(self, rows: int) -> None:
        """The oldest rows are written (or given up): they go; their facts stay until
        `compact`, since the rows after them may share them."""
        del self.times[:rows]
        del self.expiries[:rows]
        del self.facts[:rows]
        del self.ids[: rows * ID_LENGTH]

    def compact(self) -> None:
        """Facts no row refers to any more go, so that the table never outgrows the rows.

        Cheap when it matters: emptied outright when every row is written (the usual
        end of a flush); renumbered, in one pass over the rows, only once it holds more
        entries than there are rows."""
        if not self.times:
            self.known.clear()
            self._index.clear()
            return
        if len(self.known) <= len(self.times):
            return
        renumbered: dict[int, int] = {}
        known: list[Facts] = []
        facts = self.facts
        for row, old in enumerate(facts):
            new = renumbered.get(old)
            if new is None:
                new = renumbered[old] = len(known)
                known.append(self.known[old])
            facts[row] = new
        self.known = known
        self._index = {(id(fact[0]), *fact[1:]): index for index, fact in enumerate(known)}
