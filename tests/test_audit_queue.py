"""The audit queue's columns against a plain list of what was appended: whatever the order
of appends, writes (forget) and compactions, every row still reads back its own facts."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from service.core.principal import Principal
from service.data.audit.queue import ID_LENGTH, NO_EXPIRY, NOT_AN_ID, AuditQueue

KEYS = [Principal(uuid.uuid4(), uuid.uuid4(), "read", f"ixk_{i}", True, None) for i in range(3)]
IDS = [str(uuid.uuid4()), str(uuid.uuid4()).upper(), "not-an-id", "é" * 36, "x" * 37, ""]


def seen_downloads() -> st.SearchStrategy[tuple]:
    return st.tuples(
        st.integers(0, 2**62),
        st.sampled_from(KEYS),
        st.sampled_from(IDS),
        st.sampled_from(["GET", "HEAD"]),
        st.sampled_from(["issued", "not_found"]),
        st.sampled_from([307, 404]),
        st.sampled_from([None, "127.0.0.1", "::1"]),
        st.sampled_from([None, "curl/8", "a" * 256]),
        st.one_of(st.none(), st.integers(0, 2**62)),  # the URL's expiry, µs since 1970
    )


operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.lists(seen_downloads(), max_size=30)),
        st.tuples(st.just("forget"), st.integers(0, 40)),
        st.tuples(st.just("compact"), st.none()),
    ),
    max_size=25,
)


def read_back(queue: AuditQueue) -> list[tuple]:
    rows = []
    for row in range(len(queue)):
        principal, *facts = queue.known[queue.facts[row]]
        raw_id = bytes(queue.ids[row * ID_LENGTH : (row + 1) * ID_LENGTH])
        rows.append((queue.times[row], principal, raw_id, *facts, queue.expiries[row]))
    return rows


def as_queued(seen: tuple) -> tuple:
    seen_ns, principal, raw_id, *facts, expires_at_us = seen
    encoded = raw_id.encode()
    raw_id = encoded if len(encoded) == 36 else NOT_AN_ID
    expiry = NO_EXPIRY if expires_at_us is None else expires_at_us
    return (seen_ns, principal, raw_id, *facts, expiry)


@settings(max_examples=300)
@given(operations)
def test_rows_keep_their_facts_through_writes_and_compactions(steps):
    queue, model = AuditQueue(), []
    for operation, argument in steps:
        if operation == "append":
            for seen in argument:
                queue.append(*seen)
            model += [as_queued(seen) for seen in argument]
        elif operation == "forget":
            rows = min(argument, len(model))
            queue.forget(rows)
            del model[:rows]
        else:
            queue.compact()
            assert len(queue.known) <= len(queue)  # the table never outgrows the rows
        assert read_back(queue) == model
    # Equal facts are one entry, also after renumbering.
    assert len({(id(p), *rest) for p, *rest in queue.known}) == len(queue.known)


def test_downloads_with_the_same_facts_share_one_entry():
    queue = AuditQueue()
    for index in range(1000):
        # Every URL has its own expiry: a column, not a fact that splits the entries.
        expires_at_us = 1_800_000_000_000_000 + index
        queue.append(
            index, KEYS[index % 2], IDS[0], "GET", "issued", 307, "::1", "curl/8", expires_at_us
        )
    assert (len(queue), len(queue.known)) == (1000, 2)
    assert len(queue.ids) == 36 * 1000  # the ids as bytes, no object per row
    queue.forget(1000)
    queue.compact()
    assert (len(queue), queue.known) == (0, [])
