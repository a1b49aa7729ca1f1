"""The relay's storage interface: what every backend must do.

The relay keeps only what store-and-forward needs: queues (random ids and
public capability keys), opaque envelopes, opaque sealed prekey blobs, the
nonces of recent signed requests, and group streams (opaque blobs numbered
per 32-byte stream id, with their log leaf's index). It never stores a name, a fingerprint or a
plaintext; the envelopes and prekey blobs are ciphertexts it cannot open.

Durability contract: when :meth:`RelayStorage.put_envelope` returns, the
envelope is committed to stable storage (for SQLite: ``synchronous=FULL``), so
a 2xx reply to a send survives ``kill -9``. Concurrent writers may share one
commit (group commit); each still returns only after its commit.

Every backend must pass ``tests/relay_conformance.py`` (run against SQLite in
``tests/test_relay_storage.py``, against PostgreSQL in
``tests/test_relay_pg_storage.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from securechan.errors import LimitReached, Reason, StorageError, VerificationFailed

__all__ = [
    "STREAM_ITEM_OVERHEAD",
    "Envelope",
    "HeldEnvelope",
    "NonceReused",
    "NonceUse",
    "PutResult",
    "QueueFull",
    "QueueRecord",
    "Quota",
    "QuotaExceeded",
    "RelayStorage",
    "StorageClosed",
    "StoredItem",
    "StreamFull",
    "StreamLimits",
    "StreamPut",
    "StreamUsage",
]

ID_SIZE = 16
KEY_SIZE = 32
STREAM_ID_SIZE = 32


class QueueFull(LimitReached):
    """The queue holds its maximum number of envelopes."""

    code = Reason.QUEUE_FULL


class QuotaExceeded(LimitReached):
    """A send would take a byte quota past its limit; ``kind`` says which:
    ``"queue"``, ``"sender"`` (all queues of the sender key), ``"storage"``
    (the relay's overall limit) or ``"disk"`` (the file system's free space
    would fall under the reserve); for a group-stream post also ``"streams"``
    (the relay holds its most streams: no new one) or ``"stream_bytes"``
    (all streams together hold their most bytes)."""

    code = Reason.QUOTA_EXCEEDED

    def __init__(self, kind: str) -> None:
        super().__init__(f"the {kind} byte quota is used up")
        self.kind = kind


@dataclass(frozen=True, slots=True, kw_only=True)
class Quota:
    """Byte limits checked by :meth:`RelayStorage.put_envelope` in the same
    transaction as the insert (``None``: no limit). ``storage_bytes`` bounds
    what the database holds overall; ``free_bytes`` is the free space the
    file system must keep after the write (the reserve for acks, deletes
    and the WAL); with ``free_share``, the reserve is the smaller of
    ``free_bytes`` and that share of the file system's size (so a small
    disk is not all reserve)."""

    queue_bytes: int | None = None
    sender_bytes: int | None = None
    storage_bytes: int | None = None
    free_bytes: int | None = None
    free_share: float | None = None

    def reserve(self, disk_size: int) -> int | None:
        """The free space to keep on a file system of ``disk_size`` bytes."""
        if self.free_bytes is None:
            return None
        if self.free_share is None:
            return self.free_bytes
        return min(self.free_bytes, int(disk_size * self.free_share))


class StreamFull(LimitReached):
    """The group stream holds its maximum number of items or bytes, for good.

    Items are never deleted (docs/RELAY.md, "Group streams")."""

    code = Reason.STREAM_FULL


STREAM_ITEM_OVERHEAD = 256
"""Bytes a stream item is charged beyond its blob in the stream byte bounds
(its row, its index entries, its log leaf), so that many tiny items cannot
pass a bound that counts blob bytes only (docs/RELAY.md, "Group streams")."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamLimits:
    """Bounds of one group-stream post (``None``: no bound). ``max_items``
    and ``max_bytes`` bound the stream (:class:`StreamFull`, for good);
    ``max_streams`` the streams the relay holds (only a post that would
    open a new stream is refused) and ``total_bytes`` the bytes of all
    streams together (:class:`QuotaExceeded` ``"streams"`` and
    ``"stream_bytes"``). Bytes are charged as the blob plus
    :data:`STREAM_ITEM_OVERHEAD` per item."""

    max_items: int
    max_bytes: int | None = None
    max_streams: int | None = None
    total_bytes: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamUsage:
    """What one stream and all streams hold (bytes charged as in
    :class:`StreamLimits`). ``streams`` and ``total_bytes`` may lag by the
    posts of the last second in other relay processes. ``used_bytes``: the
    database's size where the store has no cheaper count (PostgreSQL), for
    the relay's check before the log grows; ``None`` otherwise."""

    items: int
    bytes: int
    streams: int
    total_bytes: int
    used_bytes: int | None = None

    def refusal(self, limits: StreamLimits, size: int) -> LimitReached | None:
        """Why one more item of ``size`` blob bytes must be refused, or None."""
        charged = size + STREAM_ITEM_OVERHEAD
        if self.items >= limits.max_items:
            return StreamFull("the stream is full")
        if limits.max_bytes is not None and self.bytes + charged > limits.max_bytes:
            return StreamFull("the stream is full: its byte quota is used up")
        new = self.items == 0
        if new and limits.max_streams is not None and self.streams >= limits.max_streams:
            return QuotaExceeded("streams")
        if limits.total_bytes is not None and self.total_bytes + charged > limits.total_bytes:
            return QuotaExceeded("stream_bytes")
        return None


class StorageClosed(StorageError):
    """The storage was closed (the relay is shutting down)."""

    code = Reason.STORAGE_CLOSED


class NonceReused(VerificationFailed):
    """The request nonce given with a write was already recorded (a replay)."""

    code = Reason.NONCE_REUSED


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueRecord:
    """A one-way queue: ``rid`` receives (with ``recipient_key``), ``sid``
    sends (with ``sender_key`` once the queue is secured; anyone, rate-limited,
    while it is a public contact address)."""

    rid: bytes
    sid: bytes
    recipient_key: bytes
    sender_key: bytes | None
    contact: bool
    created: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """One stored envelope: its queue position, client message id, bytes."""

    seq: int
    msg_id: bytes
    data: bytes = field(repr=False)
    received: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HeldEnvelope:
    """An envelope with the queue that holds it (for relay-wide scans)."""

    rid: bytes
    envelope: Envelope

    @property
    def cursor(self) -> tuple[int, bytes, int]:
        """Where a scan stands after this envelope: ``(received, rid, seq)``."""
        return (self.envelope.received, self.rid, self.envelope.seq)


@dataclass(frozen=True, slots=True, kw_only=True)
class NonceUse:
    """A signed request's nonce to record with the write it authorises:
    ``nonce`` under ``key`` until ``expires``; entries expired before ``now``
    may be forgotten (:meth:`RelayStorage.use_nonce` has the same meaning)."""

    key: bytes
    nonce: bytes = field(repr=False)
    now: int
    expires: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PutResult:
    """Where a sent envelope landed; ``duplicate`` if ``msg_id`` was already
    in the queue (an idempotent resend: nothing new was stored)."""

    seq: int
    duplicate: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredItem:
    """One item of a group stream: its position (1, 2, 3... per stream),
    the opaque blob, the index of its leaf in the transparency log and
    when it was received."""

    position: int
    data: bytes = field(repr=False)
    log_index: int
    received: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamPut:
    """Where a posted stream item landed; ``duplicate`` if the same blob
    was already in the stream (a resend: nothing new was stored, and
    ``position`` and ``log_index`` are the held item's)."""

    position: int
    log_index: int
    duplicate: bool


class RelayStorage(Protocol):
    """Async storage used by the relay. All ids are 16 bytes, keys and
    stream ids 32 bytes."""

    async def create_queue(self, queue: QueueRecord) -> None:
        """Store a new queue; raise ``ValueError`` if rid or sid exists."""

    async def queue_by_rid(self, rid: bytes) -> QueueRecord | None:
        """The queue with receive id ``rid``."""

    async def queue_by_sid(self, sid: bytes) -> QueueRecord | None:
        """The queue with send id ``sid``."""

    async def set_sender_key(self, rid: bytes, sender_key: bytes) -> None:
        """Secure a queue: from now on sends must be signed by this key."""

    async def delete_queue(self, rid: bytes) -> None:
        """Delete a queue with its envelopes and prekeys."""

    async def put_envelope(
        self,
        rid: bytes,
        msg_id: bytes,
        data: bytes,
        *,
        now: int,
        max_depth: int,
        nonce: NonceUse | None = None,
        quota: Quota | None = None,
    ) -> PutResult:
        """Append durably; idempotent on ``msg_id``; raise :class:`QueueFull`
        when the queue already holds ``max_depth`` envelopes, and
        :class:`QuotaExceeded` when storing ``data`` would pass a limit of
        ``quota`` (a resend of a held envelope is still a duplicate; the
        nonce stays recorded, as for ``QueueFull``).

        With ``nonce``, the request nonce is recorded in the same transaction
        as the envelope (one commit for both): :class:`NonceReused`, and
        nothing stored, if it was recorded before. A refused send
        (``QueueFull``) still records it, as :meth:`use_nonce` would have."""

    async def fetch(
        self, rid: bytes, *, after: int, limit: int, max_bytes: int | None = None
    ) -> list[Envelope]:
        """Envelopes with ``seq > after``, oldest first, at most ``limit``;
        with ``max_bytes``, also stop before the envelope that would take the
        total of their sizes past it (the first one is always returned)."""

    async def ack(self, rid: bytes, *, up_to: int) -> int:
        """Delete envelopes with ``seq <= up_to``; return how many."""

    async def depth(self, rid: bytes) -> int:
        """How many envelopes the queue holds."""

    async def expire(self, *, older_than: int) -> int:
        """Delete envelopes received before ``older_than``; return how many."""

    async def held_since(
        self, *, received: int, after: tuple[int, bytes, int] | None, limit: int
    ) -> list[HeldEnvelope]:
        """Envelopes held in any queue, received at or after ``received``,
        ordered by ``(received, rid, seq)`` and strictly after the cursor
        ``after`` (see :attr:`HeldEnvelope.cursor`), at most ``limit``. The
        transparency log's start-up repair pages through these."""

    async def put_prekeys(
        self, rid: bytes, *, signed: bytes, one_time: list[bytes], replace_one_time: bool
    ) -> int:
        """Store the sealed signed-prekey blob and add (or replace) sealed
        one-time blobs; return how many one-time blobs are held."""

    async def claim_bundle(self, rid: bytes) -> tuple[bytes, bytes | None, int] | None:
        """The signed blob and one one-time blob (removed, so it is handed
        out once), plus how many remain; ``None`` if nothing was published."""

    async def prekey_count(self, rid: bytes) -> int:
        """How many one-time blobs remain."""

    async def use_nonce(self, key: bytes, nonce: bytes, *, now: int, expires: int) -> bool:
        """Record a request nonce; ``False`` if it was already used (a
        replayed request). Entries past ``expires`` may be forgotten."""

    async def put_stream_item(
        self,
        stream_id: bytes,
        data: bytes,
        *,
        log_index: int,
        now: int,
        max_items: int,
        quota: Quota | None = None,
        limits: StreamLimits | None = None,
    ) -> StreamPut:
        """Append ``data`` to the group stream ``stream_id`` (32 bytes; the
        stream exists once it has an item) at the next position, durably,
        with the index of its (already committed) log leaf. Positions are
        1, 2, 3... with no gap and no repeat, even for concurrent posts in
        several processes. Idempotent on the blob: the same bytes posted
        again to the stream answer the held item (``duplicate``), even when
        the stream is full. :class:`StreamFull` when ``max_items`` are held;
        with ``quota``, :class:`QuotaExceeded` (``"storage"`` or ``"disk"``)
        when the blob would pass the relay's overall limits; with
        ``limits`` (whose ``max_items`` replaces ``max_items``), the refusal
        of :meth:`StreamUsage.refusal`. A refused post stores nothing and
        takes no position."""

    async def fetch_stream(self, stream_id: bytes, *, after: int, limit: int) -> list[StoredItem]:
        """Items with ``position > after``, in position order, at most
        ``limit``; an unknown stream has none."""

    async def stream_length(self, stream_id: bytes) -> int:
        """How many items the stream holds (its last position; 0 if unknown)."""

    async def stream_usage(self, stream_id: bytes) -> StreamUsage:
        """What the stream and all streams hold (all 0 for a new relay)."""

    async def held_stream_item(self, stream_id: bytes, data: bytes) -> StreamPut | None:
        """The item of the stream holding exactly ``data`` (``duplicate``), or None."""

    async def close(self) -> None:
        """Finish pending writes and close."""
