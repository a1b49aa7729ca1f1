"""The relay's transparency log: every accepted envelope is a leaf, every batch a checkpoint.

``docs/AUDIT.md`` ("Relay transparency log") is the normative text; this
module is its implementation on top of :class:`~securechan.audit.tree.TreeStore`.

**What is logged.** One leaf per distinct envelope the relay stores, with the
leaf data of :func:`~securechan.audit.receipt.envelope_leaf`
(``"securechan/v1/envelope" || SHA-256(envelope)``). Leaves are unique by
content: an envelope logged before (a resend, or the same bytes posted to
another queue) keeps its first leaf, so the log holds each envelope exactly
once and a duplicate's receipt is the original leaf's.

**Checkpoints.** The origin is the log's name and its key name: by default
``securechan-relay/<first 16 hex digits of SHA-256(relay public key)>``. After
each batch of appends the relay signs a C2SP checkpoint of the new size with
its Ed25519 relay key. Ed25519 is deterministic, so the checkpoint of any past
size can be signed again, byte for byte the same, when a client asks for it;
none are stored. Witness cosignatures are stored (the newest per witness) and
served with the checkpoint of the size they cosign.

**Threads and durability.** One writer thread owns the only writing
``TreeStore`` and a second connection for the leaf index (leaf hash ->
index), the cosignatures and the start-up checks; a reader thread has its
own pair for proofs and look-ups. Appends are group-committed by
:class:`~securechan.relay.tlog_writer.Appender`: the leaves of a batch,
their index rows and the time of the append in ONE transaction (one sync
with ``synchronous=FULL``), one checkpoint, every proof in one pass
(:mod:`~securechan.relay.tlog_proofs`), then the callers are answered. The
index and the tree are therefore always in step after a crash; opening the
log still mends an index written by older relays. Witness cosignatures:
:mod:`~securechan.relay.tlog_witness`.

**Repairing the gap with relay.db.** The relay's service
(:meth:`securechan.relay.service.RelayService.send`) appends to the log after
the envelope is committed to ``relay.db`` and before it answers, so a 2xx
means both are durable. A crash between the two commits leaves an envelope stored
but not logged, and not acknowledged; :meth:`RelayLog.repair`, run at start-up
before the relay listens, appends every envelope ``relay.db`` holds that was
received since :data:`REPAIR_MARGIN` seconds before the log's last append
(every held envelope on the first start of a relay that had no log). The
sender's resend of such an envelope (the client resends until it gets a 2xx)
also appends it, through the duplicate path of the send handler.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar, cast

from securechan.audit import merkle
from securechan.audit.checkpoint import Checkpoint
from securechan.audit.note import (
    VerifierKey,
    is_valid_key_name,
)
from securechan.audit.receipt import Receipt, envelope_leaf_hash
from securechan.audit.tree import TreeStore
from securechan.errors import StorageError
from securechan.primitives import Ed25519SigningKey, constant_time_equal, sha256
from securechan.relay.storage import RelayStorage, StorageClosed
from securechan.relay.tlog_proofs import inclusion_proofs
from securechan.relay.tlog_reader import LogReader as _Reader
from securechan.relay.tlog_reader import ReadThread
from securechan.relay.tlog_schema import SCHEMA, synced_transaction
from securechan.relay.tlog_witness import (
    DEFAULT_COSIGN_WINDOW,
    Cosig,
    CosignatureRefused,
    Head,
    LogSigner,
    Witnesses,
    parse_witness_keys,
)
from securechan.relay.tlog_writer import LINGER, WHAT, Appender, Task
from securechan.relay.tlog_writer import storage_error as _storage_error
from securechan.relay.writer_thread import MAX_BATCH, Closing, WriterThread
from securechan.sqlite_schema import connect, prepare_file

__all__ = [
    "DEFAULT_COSIGN_WINDOW",
    "MAX_BATCH",
    "REPAIR_MARGIN",
    "CosignatureRefused",
    "RelayLog",
    "default_origin",
    "parse_witness_keys",
]

log = logging.getLogger("securechan.relay")

T = TypeVar("T")

REPAIR_MARGIN: Final = 3600
"""Seconds before the last append from which start-up repair rescans relay.db."""
_REPAIR_PAGE: Final = 64


def default_origin(public_key: bytes) -> str:
    """``securechan-relay/<first 16 hex digits of SHA-256(public key)>``."""
    return "securechan-relay/" + sha256(public_key).hex()[:16]


def _connect_index(path: Path, *, writer: bool) -> sqlite3.Connection:
    # The writer's index connection is safe without its own sync: see the
    # module docstring. Its TreeStore (opened first) set WAL and the schema.
    return connect(
        path, read_only=not writer, synchronous="NORMAL", secure_delete=False, foreign_keys=False
    )


def _migrate(conn: sqlite3.Connection) -> None:
    # The writer's TreeStore applied SCHEMA already: this only confirms it.
    SCHEMA.apply(conn, Path("tlog.db"))


class RelayLog(Closing):
    """The relay's transparency log in one SQLite file (``DATA/tlog.db``).

    Open with :func:`~securechan.relay.writer_thread.open_in_thread`;
    finish with :meth:`close`. Methods raise
    :class:`~securechan.relay.storage.StorageClosed` after :meth:`close` and
    :class:`~securechan.errors.StorageError` when SQLite fails. One process
    writes a log file at a time.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        key: Ed25519SigningKey,
        *,
        origin: str | None = None,
        witnesses: Sequence[VerifierKey] = (),
        synchronous: str = "FULL",
        cosign_window: float = DEFAULT_COSIGN_WINDOW,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open (creating if needed) the log at ``path`` and repair its index.

        Blocking: from async code, ``await open_in_thread(RelayLog, path, key,
        ...)`` (:func:`~securechan.relay.writer_thread.open_in_thread`).
        Raises :class:`~securechan.errors.StorageError` if the file cannot be
        used, or if it holds the log of another origin or key (a log's
        identity never changes); ``ValueError`` for a bad origin or witness key.
        """
        self.path = Path(path).absolute()
        self.origin = default_origin(key.public) if origin is None else origin
        if not is_valid_key_name(self.origin):
            raise ValueError("the log origin must be a valid C2SP key name")
        self._signer = LogSigner(self.origin, key)
        self.verifier: VerifierKey = self._signer.verifier
        self.pq_verifier: VerifierKey = self._signer.pq_verifier
        self._witness = Witnesses(
            self.origin, self._signer, witnesses, window=cosign_window, clock=clock
        )
        self.witnesses: tuple[VerifierKey, ...] = self._witness.keys
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous is 'FULL' or 'NORMAL'")
        self._synchronous = synchronous
        self._clock = clock
        self._appender = Appender(self._witness, self._make_head, clock)
        # The newest head's note with its cosignatures, composed once (event loop).
        self._note: tuple[Head, dict[str, Cosig], str] | None = None
        self._watermark: int | None = None
        # The log's size when the relay last stopped cleanly (read and
        # cleared at open), and whether an append failed since (writer).
        self._clean_size: int | None = None
        try:
            prepare_file(self.path)
        except OSError as e:
            raise StorageError(f"cannot create {self.path}: {e.strerror}") from None
        self._writer: WriterThread[Task] = WriterThread(
            self._start_writer, name="relay-log-write", what=WHAT, linger=LINGER
        )
        self._reads = ReadThread(self.path, _connect_index)

    # --- public reads ------------------------------------------------------------

    @property
    def size(self) -> int:
        """The size of the newest checkpoint."""
        return self._head.size

    def checkpoint(self) -> str:
        """The newest checkpoint, signed, with every cosignature held for it."""
        return self._head_note(self._head)

    def _head_note(self, head: Head) -> str:
        """``head`` signed, with its cosignatures; composed once per head and
        set of cosignatures (both are replaced whole, never changed)."""
        cached, cosigs = self._note, self._cosigs
        if cached is not None and cached[0] is head and cached[1] is cosigs:
            return cached[2]
        note = self._witness.compose(head.text, head.size, head.signature)
        self._note = (head, cosigs, note)
        return note

    async def checkpoint_at(self, size: int) -> str:
        """The checkpoint of a past ``size`` (signed again: Ed25519 is
        deterministic) with the cosignatures held for it. ``ValueError``
        beyond the newest checkpoint."""
        head = self._head
        if size == head.size:
            return self.checkpoint()
        self._check_size(size)
        root = await self._read(lambda r: r.tree.root(size))
        text = Checkpoint(origin=self.origin, size=size, root_hash=root).to_text()
        return self._witness.compose(text, size, self._signer.sign(text))

    async def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 inclusion proof of leaf ``index`` in the tree of ``size``."""
        self._check_size(size)
        if type(index) is not int or not 0 <= index < size:
            raise ValueError("an inclusion proof needs 0 <= index < size")
        return await self._read(lambda r: r.tree.inclusion_proof(index, size))

    async def inclusion_proofs(self, indices: set[int], size: int) -> dict[int, list[bytes]]:
        """The inclusion proofs of several leaves in the tree of ``size``, in
        one read (the same paths as :meth:`inclusion_proof`; a group stream
        page's, docs/RELAY.md "Group streams")."""
        self._check_size(size)
        if any(type(i) is not int or not 0 <= i < size for i in indices):
            raise ValueError("an inclusion proof needs 0 <= index < size")
        if not indices:
            return {}
        return await self._read(lambda r: inclusion_proofs(r.tree, set(indices), size))

    async def consistency_proof(self, old: int, new: int) -> list[bytes]:
        """RFC 9162 consistency proof from ``old`` to ``new`` (empty from 0)."""
        self._check_size(new)
        if type(old) is not int or not 0 <= old <= new:
            raise ValueError("a consistency proof needs 0 <= old <= new")
        return await self._read(lambda r: r.tree.consistency_proof(old, new))

    async def nodes(self, ids: list[merkle.NodeId]) -> list[bytes]:
        """Complete subtree hashes, in one read (tlog-tiles' hash tiles:
        :mod:`securechan.relay.tlog_tiles`). The caller bounds ``ids``."""
        return await self._read(lambda r: list(r.tree.get_nodes(ids)))

    async def entry_digests(self, start: int, end: int) -> list[bytes] | None:
        """SHA-256 of the envelope of each leaf in ``[start, end)`` (tlog-tiles'
        entry bundles), or ``None`` if one is not kept (appended before
        schema version 3). The caller bounds the range."""

        return await self._read(lambda r: r.entry_digests(start, end))

    def _check_size(self, size: int) -> None:
        if type(size) is not int or not 0 <= size <= self._head.size:
            raise ValueError("the log has no checkpoint of that size")

    # --- appending -----------------------------------------------------------------

    async def append(self, envelope: bytes, *, digest: bytes | None = None) -> Receipt:
        """Log ``envelope`` (once: a logged one keeps its leaf); its receipt.

        Returns after the leaf is committed, with the checkpoint of the batch
        that committed it (or the newest one, for a leaf logged before) and
        the inclusion proof the writer computed against it. ``digest``, if
        given, must be SHA-256 of ``envelope`` as the caller computed it (the
        relay has it from the request signature's check): the leaf hash is
        then derived from it, not from the envelope again.
        """
        if not isinstance(envelope, bytes):
            raise TypeError("an envelope is bytes")
        if digest is not None and (not isinstance(digest, bytes) or len(digest) != 32):
            raise ValueError("digest is SHA-256 of the envelope")
        # Hashed by the writer: the event loop hands over the bytes and goes on.
        return self.receipt_from(await self._submit("append", envelope, digest))

    def mark_dirty(self) -> None:
        """An envelope may be stored but not logged: the next start repairs."""
        self._appender.lost = True

    async def receipt_for(self, envelope: bytes) -> Receipt | None:
        """The receipt of ``envelope`` against the newest checkpoint, or
        ``None`` if the log does not hold it (nothing is appended)."""
        return await self.receipt_for_leaf(envelope_leaf_hash(envelope))

    async def receipt_for_leaf(self, leaf: bytes) -> Receipt | None:
        """The receipt of the leaf whose RFC 6962 hash is ``leaf`` against the
        newest checkpoint, or ``None`` if the log does not hold it. This is
        how a recipient, who has the envelope but no send reply, gets its
        receipt (``GET /v1/log/proof/leaf``)."""
        index = await self._read(lambda r: r.lookup(leaf))
        head = self._head
        # The index is committed just before the tree: a row past the head is
        # a leaf whose append is still in flight (or failed).
        if index is None or index >= head.size:
            return None
        return await self._receipt(index, head)

    async def _receipt(self, index: int, head: Head) -> Receipt:
        proof = await self._read(lambda r: r.tree.inclusion_proof(index, head.size))
        return Receipt(
            leaf_index=index, checkpoint=self._head_note(head), inclusion_proof=tuple(proof)
        )

    async def repair(self, storage: RelayStorage) -> int:
        """Log the envelopes ``storage`` holds that the log may lack; how many
        were appended. Run once at start-up, before the relay listens.

        Nothing is read when the relay last stopped cleanly (:meth:`mark_clean`)
        and the log has not grown since: every stored envelope was logged, and
        start-up costs the same however much relay.db holds."""
        if self._clean_size is not None and self._clean_size == self._head.size:
            log.info("transparency log: clean stop at size %d, no repair needed", self._clean_size)
            return 0
        since = -(2**63) if self._watermark is None else self._watermark - REPAIR_MARGIN
        after: tuple[int, bytes, int] | None = None
        appended = 0
        while page := await storage.held_since(received=since, after=after, limit=_REPAIR_PAGE):
            results = await asyncio.gather(*(self._submit("append", h.envelope.data) for h in page))
            appended += sum(1 for _, _, created, _ in results if created)
            after = page[-1].cursor
        if appended:
            log.warning("transparency log: appended %d stored envelopes it lacked", appended)
        return appended

    async def mark_clean(self) -> bool:
        """Record that every envelope of relay.db is in the log, so the next
        start need not rescan relay.db; ``False`` (nothing recorded) if an
        append failed since this log was opened. Call after relay.db is closed
        (no more appends can come) and before :meth:`close`."""
        return bool(await self._submit("clean", None))

    async def add_cosignatures(self, body: bytes) -> str:
        """Store the cosignatures in a posted cosigned checkpoint; the
        checkpoint with every cosignature held for its size.

        ``body`` is this log's checkpoint as a signed note, with one or more
        tlog-cosignature lines by configured witnesses among its signatures
        (others are ignored). Raises :class:`CosignatureRefused`.
        """
        return cast(str, await self._submit("cosign", body))

    def receipt_from(self, appended: Any) -> Receipt:
        """The receipt for what an append answered (on the event loop: the
        checkpoint note is composed there, once per checkpoint)."""
        index, head, _, proof = appended
        return Receipt(leaf_index=index, checkpoint=self._head_note(head), inclusion_proof=proof)

    async def _submit(self, kind: str, arg: Any, digest: bytes | None = None) -> Any:
        try:
            return await self._writer.submit(Task(kind, arg, digest))
        except StorageClosed:
            # Not queued: an envelope stored but not logged; the next start repairs.
            self._appender.lost = self._appender.lost or kind == "append"
            raise

    async def _read(self, fn: Callable[[_Reader], T]) -> T:
        with self._writer.gate():
            done = self._reads.submit(fn)
        return await asyncio.wrap_future(done)

    @property
    def _cosigs(self) -> dict[str, Cosig]:
        return self._witness.cosigs

    @_cosigs.setter
    def _cosigs(self, value: dict[str, Cosig]) -> None:
        self._witness.cosigs = value

    @property
    def commits(self) -> int:
        """Tree commits so far (one fsync each with ``synchronous=FULL``)."""
        return self._appender.commits

    @property
    def _head(self) -> Head:
        return self._appender.head

    @_head.setter
    def _head(self, head: Head) -> None:
        self._appender.head = head

    def _make_head(self, size: int, root: bytes) -> Head:
        text = Checkpoint(origin=self.origin, size=size, root_hash=root).to_text()
        return Head(size, root, text, self._signer.sign(text))

    # --- the writer thread -------------------------------------------------------------

    def _start_writer(self) -> Appender:
        """On the writer thread: its tree and index connection, checked."""
        tree = TreeStore(self.path, synchronous=self._synchronous, schema=SCHEMA)
        index: sqlite3.Connection | None = None
        try:
            index = _connect_index(self.path, writer=True)
            self._open_index(tree, index)
        except BaseException as e:
            if index is not None:
                index.close()
            tree.close()
            raise _storage_error(e)  # noqa: B904 (its cause is e already)
        return self._appender.attach(tree, index)

    def _open_index(self, tree: TreeStore, index: sqlite3.Connection) -> None:
        _migrate(index)
        key_text = self.verifier.to_text()
        size = tree.size
        # Synced: the clean-stop mark's removal must outlive a power loss.
        with synced_transaction(index):
            row = index.execute(
                "SELECT origin, log_key, last_append FROM relay_log_meta WHERE id = 0"
            ).fetchone()
            if row is None:
                index.execute(
                    "INSERT INTO relay_log_meta (id, origin, log_key) VALUES (0, ?, ?)",
                    (self.origin, key_text),
                )
            elif (row[0], row[1]) != (self.origin, key_text):
                raise StorageError(
                    f"tlog.db holds the log {row[0]!r}, not {self.origin!r} under this key;"
                    " a log's origin and key never change"
                )
            else:
                self._watermark = row[2] if type(row[2]) is int else None
            # A clean-stop mark is good for this start only: cleared in the
            # start-up transaction, so a crash later means a full repair.
            clean = index.execute("SELECT size FROM relay_log_clean WHERE id = 0").fetchone()
            index.execute("DELETE FROM relay_log_clean")
            if clean is not None and type(clean[0]) is int and self._watermark is not None:
                self._clean_size = clean[0]
            # Rows past the tree: leaves whose tree commit never happened.
            index.execute("DELETE FROM relay_log_leaves WHERE idx >= ?", (size,))
            (top,) = index.execute("SELECT coalesce(max(idx), -1) FROM relay_log_leaves").fetchone()
            if top >= 0 and not constant_time_equal(
                index.execute("SELECT leaf FROM relay_log_leaves WHERE idx = ?", (top,)).fetchone()[
                    0
                ],
                tree.leaf_hash(top),
            ):
                raise StorageError("tlog.db: the leaf index does not match the tree")
            for start in range(top + 1, size, 1000):
                ids = [(0, i) for i in range(start, min(start + 1000, size))]
                rows = zip(tree.get_nodes(ids), (i for _, i in ids), strict=True)
                index.executemany(
                    "INSERT OR IGNORE INTO relay_log_leaves (leaf, idx) VALUES (?, ?)", rows
                )
        self._head = self._make_head(size, tree.root(size))
        self._cosigs = self._load_cosignatures(tree, index, size)

    def _load_cosignatures(
        self, tree: TreeStore, index: sqlite3.Connection, size: int
    ) -> dict[str, Cosig]:
        """Stored cosignatures that still verify (:meth:`Witnesses.load`)."""
        return self._witness.load(tree, index, size)

    # --- lifetime --------------------------------------------------------------------

    async def close(self) -> None:
        """Finish the jobs already submitted and close; a second call waits."""
        await self._writer.close(self._reads.close)
