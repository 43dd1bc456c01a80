"""Per-process caches for the hot path: bounded (LRU), short-lived (TTL), and switched off
whenever cross-instance invalidation (Postgres LISTEN/NOTIFY) is not known to work."""

from __future__ import annotations

import enum
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final, Generic, Literal, TypeVar

from ..core.attachment import AttachmentTarget, PresignedUrl
from ..core.principal import Principal

K = TypeVar("K")
V = TypeVar("V")


class Missing(enum.Enum):
    """Not in the cache (as opposed to a cached None: known not to exist)."""

    MISSING = enum.auto()


MISSING: Final = Missing.MISSING
Miss = Literal[Missing.MISSING]


# Changes remembered by what changed (HotPathCaches.key_changes, .attachment_changes):
# only those newer than the oldest lookup under way matter, and lookups are bounded by
# DB_STATEMENT_TIMEOUT; past this many, they count as a change of everything.
CHANGES_REMEMBERED = 10_000
# Workspaces whose answers one attachment's entry holds at most: its owner's, and those of
# the latest few who asked for an id not theirs (each got "no such attachment", looked up
# once, as for a missing id).
ASKERS_PER_ATTACHMENT = 4
REFUSALS_PER_ATTACHMENT = ASKERS_PER_ATTACHMENT - 1


class TTLCache(Generic[K, V]):
    """An LRU map whose entries also expire `ttl` seconds after they were stored.

    With a `lease`, an entry is refreshed before it expires, in the background: the first
    `get` in its last `lease` seconds is still served the entry and puts its key on `due`,
    once, for a refresher to look up and `put` again (web/caches.py). No request waits for
    a refresh: at saturation a request that waits on anything waits a whole turn of the
    event loop behind every other connection, and those were the slowest percent. Nor do
    all the requests for a popular entry go to the database together when it expires (at
    1,024 connections that herd queued past the pool's acquire timeout). An entry the
    refresher did not renew is never served past its TTL.
    """

    def __init__(self, size: int, ttl: float, lease: float = 0.0) -> None:
        self.size = size
        self.ttl = ttl
        self.lease = lease
        # key -> (expires at, value, already due)
        self._entries: OrderedDict[K, tuple[float, V, bool]] = OrderedDict()
        self.due: list[K] = []
        self.hits = 0
        self.misses = 0

    def get(self, key: K) -> V | Miss:
        """The value, or MISSING."""
        entry = self._entries.get(key)
        if entry is not None:
            expires, value, due = entry
            now = time.monotonic()
            if now < expires:
                if not due and now >= expires - self.lease:
                    self._entries[key] = (expires, value, True)
                    self.due.append(key)
                self._entries.move_to_end(key)
                self.hits += 1
                return value
            del self._entries[key]
        self.misses += 1
        return MISSING

    def peek(self, key: K) -> V | Miss:
        """The value if it has not expired, without counting or reordering anything."""
        entry = self._entries.get(key)
        if entry is None or time.monotonic() >= entry[0]:
            return MISSING
        return entry[1]

    def take_due(self) -> list[K]:
        """The keys due for a refresh since the last call."""
        due, self.due = self.due, []
        return due

    def put(self, key: K, value: V) -> None:
        if self.size <= 0:
            return
        self._entries[key] = (time.monotonic() + self.ttl, value, False)
        self._entries.move_to_end(key)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def pop(self, key: K) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()
        self.due.clear()

    def __len__(self) -> int:
        return len(self._entries)


def remember_change(changes: dict[Any, int], changed: Any, generation: int) -> bool:
    """Note that `changed` changed at `generation`; False when CHANGES_REMEMBERED are
    already noted: they are forgotten, and the caller counts it a change of them all (so
    that nothing looked up before it stores its answer)."""
    if len(changes) >= CHANGES_REMEMBERED:
        changes.clear()
        return False
    changes[changed] = generation
    return True


@dataclass(slots=True)
class HotPathCaches:
    """What one process remembers between requests.

    `live` is true only while the invalidation listener is connected: a cache that
    cannot hear about revocations is bypassed (and was flushed when the listener
    dropped), so a revoked key never outlives the listener's outage by more than the
    time it takes to notice it.
    """

    keys: TTLCache[bytes, Principal | None]  # token digest -> key, or None: no such live key
    # Attachments by canonical id text (as in the URL: no parsing on a hit), each with the
    # answer for every workspace that asked lately: id -> ((workspace id as an int, target
    # as a tuple or None, until when that None holds), ...), plain tuples of strings and
    # numbers (see `remember_attachment`), the latest asker first.
    attachments: TTLCache[str, tuple[tuple[int, tuple[Any, ...] | None, float], ...]]
    # (attachment id, method, *variant) -> PresignedUrl as a plain tuple
    urls: TTLCache[tuple[Any, ...], tuple[Any, ...]]
    live: bool = False
    # Bumped by every invalidation: a lookup records it before it reads, and stores its
    # answer for a key or an attachment only if that one has not changed since (it might
    # be stale). Each change is remembered by what changed, so that one row's change
    # leaves other lookups under way free to store theirs: a busy cluster's every upload
    # notifies twice, and a single counter kept the caches from filling (and their
    # entries from being renewed) exactly when they were needed most.
    generation: int = 0
    flushes: int = field(default=0)
    # The generation of each key's and attachment's last change, and of the last change
    # of them all (a flush, a workspace's entitlement, or these maps overflowing).
    key_changes: dict[bytes, int] = field(default_factory=dict)
    attachment_changes: dict[str, int] = field(default_factory=dict)
    all_keys_changed: int = 0
    all_attachments_changed: int = 0

    def may_store_key(self, generation: int, token_digest: bytes) -> bool:
        """Whether a key looked up at `generation` may be cached: the caches are on, and
        no invalidation of it (or of all keys) came while it was being looked up."""
        if generation == self.generation:  # (nothing changed at all: the usual case)
            return self.live
        changed = max(self.all_keys_changed, self.key_changes.get(token_digest, 0))
        return self.live and changed <= generation

    def may_store_attachment(self, generation: int, attachment_id: str) -> bool:
        """`may_store_key` for an attachment (and the URLs signed from what was read)."""
        if generation == self.generation:
            return self.live
        changed = max(self.all_attachments_changed, self.attachment_changes.get(attachment_id, 0))
        return self.live and changed <= generation

    def flush(self) -> None:
        self.keys.clear()
        self.attachments.clear()
        self.urls.clear()
        self.generation += 1
        self.all_keys_changed = self.all_attachments_changed = self.generation
        self.key_changes.clear()
        self.attachment_changes.clear()
        self.flushes += 1

    # Cached values are kept as exact tuples of atoms, which the garbage collector stops
    # tracking (it never untracks NamedTuples, dataclasses or UUIDs): kept as objects, a
    # full cache makes every full collection walk them all, a pause of the whole loop.

    def attachment(
        self, attachment_id: str, workspace_id: uuid.UUID
    ) -> AttachmentTarget | Miss | None:
        """The cached target, None (known: no such live attachment here), or MISSING."""
        cached = self.attachments.get(attachment_id)
        if cached is MISSING:
            return MISSING
        workspace = workspace_id.int
        for asker, plain, refused_until in cached:
            if asker == workspace:
                if plain is not None:
                    return AttachmentTarget._make(plain)
                return None if time.monotonic() < refused_until else MISSING
        # Cached for another workspace's callers only: that says nothing about this one.
        return MISSING

    def remember_attachment(
        self, attachment_id: str, workspace_id: uuid.UUID, target: AttachmentTarget | None
    ) -> None:
        """Store one workspace's answer beside the others' (one entry per id), never in
        their place. Answers that displaced each other would let a caller asking again for
        another tenant's id find its own answer gone whenever the owner had downloaded that
        id meanwhile: timing its own requests, it would learn that the id exists and is in
        use.

        For the same reason a None ("no such attachment here") lives its own TTL from when
        it was looked up, as a missing id's does: the entry's renewals, which the owner's
        downloads bring about, do not lengthen it (`renew_attachments` leaves it be), and
        the owner's changes do not end it (`forget_attachment`)."""
        workspace = workspace_id.int
        now = time.monotonic()
        if target is None:
            answer: tuple[int, tuple[Any, ...] | None, float] = (
                workspace,
                None,
                now + self.attachments.ttl,
            )
        else:
            answer = (workspace, tuple(target), 0.0)
        cached = self.attachments.peek(attachment_id)
        if cached is MISSING:
            self.attachments.put(attachment_id, (answer,))
            return
        # (A None past its end is dropped here, not kept to crowd out live answers.)
        others = [
            kept
            for kept in cached
            if kept[0] != workspace and (kept[1] is not None or kept[2] > now)
        ]
        refusals = [kept for kept in others if kept[1] is None]
        if target is None and len(refusals) >= REFUSALS_PER_ATTACHMENT:
            # The oldest "no such attachment" goes, never the owner's answer (or askers
            # from a few workspaces could evict it as one would have); and whether the
            # owner's is cached plays no part, or the askers could time the owner by it.
            others.remove(refusals[-1])
        self.attachments.put(attachment_id, (answer, *others))

    def url(
        self, attachment_id: str, method: str, variant: tuple[Any, ...] = ()
    ) -> PresignedUrl | Miss:
        """A PresignedUrl still within its reuse window, or MISSING.

        `variant` is empty for a plain download (whose entries `forget_attachment` drops);
        with options it holds them and the target itself, so that a changed attachment
        can never match an older URL."""
        cached = self.urls.get((attachment_id, method, *variant))
        return cached if cached is MISSING else PresignedUrl._make(cached)

    def remember_url(
        self,
        attachment_id: str,
        method: str,
        presigned: PresignedUrl,
        variant: tuple[Any, ...] = (),
    ) -> None:
        self.urls.put((attachment_id, method, *variant), tuple(presigned))

    def forget_attachment(self, attachment_id: str) -> None:
        """The attachment changed: drop it and its plain URLs, and let no lookup under way
        store what it read before the change.

        Its None answers stay, each until its own end: a change cannot make them wrong (an
        attachment never moves to another workspace, nobody can ask for its id before its
        row exists, and a deleted one never comes back), and dropping them would let their
        askers time the owner's changes."""
        self.generation += 1
        if not remember_change(self.attachment_changes, attachment_id, self.generation):
            self.all_attachments_changed = self.generation
        cached = self.attachments.peek(attachment_id)
        self.attachments.pop(attachment_id)
        if cached is not MISSING:
            refusals = tuple(kept for kept in cached if kept[1] is None)
            if refusals:
                self.attachments.put(attachment_id, refusals)
        for method in ("GET", "HEAD"):
            self.urls.pop((attachment_id, method))

    def forget_key(self, token_digest: bytes) -> None:
        self.generation += 1
        if not remember_change(self.key_changes, token_digest, self.generation):
            self.all_keys_changed = self.generation
        self.keys.pop(token_digest)

    def forget_keys(self) -> None:
        """Every key: a workspace's entitlement changed, and keys are cached by digest."""
        self.generation += 1
        self.all_keys_changed = self.generation
        self.key_changes.clear()
        self.keys.clear()
