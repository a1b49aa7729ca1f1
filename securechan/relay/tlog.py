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
``TreeStore`` and a second connection to the same file for the leaf index
(leaf hash -> index) look-ups, the cosignatures and the start-up checks; a
reader thread has its own pair for proofs and look-ups (``sqlite3`` objects
stay on the thread that made them). Appends are group-committed: the writer
takes every job waiting (up to :data:`MAX_BATCH`; see
:mod:`securechan.relay.batching`), then appends the new leaves, their index
rows and the time of the append in ONE transaction of the tree's connection
(``TreeStore.append_many_leaf_hashes(..., also=...)``; one commit, one sync
with ``synchronous=FULL``), signs one checkpoint, computes every caller's
inclusion proof against it (one pass for the batch), and only then resolves
the callers' futures. The index and the tree are therefore always in step
after a crash; opening the log still deletes index rows past the tree's size
and adds any missing ones from the tree (files written by older relays,
which committed the index separately just before the tree).

**Repairing the gap with relay.db.** The relay appends to the log after the
envelope is committed to ``relay.db`` and before it answers, so a 2xx means
both are durable. A crash between the two commits leaves an envelope stored
but not logged, and not acknowledged; :meth:`RelayLog.repair`, run at start-up
before the relay listens, appends every envelope ``relay.db`` holds that was
received since :data:`REPAIR_MARGIN` seconds before the log's last append
(every held envelope on the first start of a relay that had no log). The
sender's resend of such an envelope (the client resends until it gets a 2xx)
also appends it, through the duplicate path of the send handler.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import queue
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeVar, cast

from securechan.audit import merkle
from securechan.audit.checkpoint import Checkpoint
from securechan.audit.note import (
    MAX_TIMESTAMP,
    SIG_COSIGNATURE_V1,
    NoteSignature,
    NoteSigner,
    SignedNote,
    VerifierKey,
    is_valid_key_name,
)
from securechan.audit.receipt import ENVELOPE_LEAF_CONTEXT, Receipt, envelope_leaf_hash
from securechan.audit.tree import TreeStore
from securechan.errors import (
    BadSignature,
    MalformedInput,
    Reason,
    StorageError,
    VerificationFailed,
)
from securechan.primitives import Ed25519SigningKey, constant_time_equal, sha256
from securechan.relay.batching import take_batch
from securechan.relay.storage import RelayStorage, StorageClosed

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

MAX_BATCH: Final = 256
"""Most appends sharing one commit (and one checkpoint)."""
REPAIR_MARGIN: Final = 3600
"""Seconds before the last append from which start-up repair rescans relay.db."""
DEFAULT_COSIGN_WINDOW: Final = 300.0
"""Seconds a superseded checkpoint may still be cosigned."""
MAX_FUTURE_COSIGNATURE: Final = 300
"""A cosignature dated further ahead of the relay's clock is refused."""
_SCHEMA_VERSION: Final = 1
_REPAIR_PAGE: Final = 64
_COSIGN_HISTORY: Final = 65_536

_SCHEMA_V1: Final = (
    "CREATE TABLE relay_log_schema (version INTEGER NOT NULL)",
    "CREATE TABLE relay_log_meta (id INTEGER PRIMARY KEY CHECK (id = 0),"
    " origin TEXT NOT NULL, log_key TEXT NOT NULL, last_append INTEGER)",
    "CREATE TABLE relay_log_leaves (leaf BLOB PRIMARY KEY CHECK (length(leaf) = 32),"
    " idx INTEGER NOT NULL UNIQUE CHECK (idx >= 0)) WITHOUT ROWID",
    "CREATE TABLE relay_log_cosignatures (witness TEXT PRIMARY KEY,"
    " size INTEGER NOT NULL CHECK (size >= 0), timestamp INTEGER NOT NULL, line TEXT NOT NULL)",
)


def default_origin(public_key: bytes) -> str:
    """``securechan-relay/<first 16 hex digits of SHA-256(public key)>``."""
    return "securechan-relay/" + sha256(public_key).hex()[:16]


class CosignatureRefused(VerificationFailed):
    """A posted cosignature was not stored; ``reason`` says why.

    ``malformed`` (not a cosigned checkpoint of this log, or dated in the
    future), ``unknown_witness`` (no signature by a configured witness),
    ``bad_signature`` (a configured witness's signature fails), ``not_in_log``
    (a size or root this log never had), ``stale`` (older than the window or
    than the witness's last cosignature; ``log_size`` is the current size).
    """

    code = Reason.COSIGNATURE_REFUSED

    def __init__(self, reason: str, message: str, *, log_size: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.log_size = log_size


@dataclass(frozen=True, slots=True)
class _Head:
    """The newest checkpoint: its size, root, note text and the relay's signature."""

    size: int
    root: bytes
    text: str
    signature: NoteSignature


@dataclass(frozen=True, slots=True)
class _Cosig:
    size: int
    timestamp: int
    signature: NoteSignature


@dataclass(slots=True)
class _Job:
    kind: str  # "append" (arg: the envelope), "cosign" (arg: the posted note) or "clean"
    arg: Any
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    # Resolved with its value just before ``future``, in the same callback.
    before: tuple[asyncio.Future[Any], Any] | None = None
    # An append's leaf hash when the caller had SHA-256(envelope) already.
    leaf: bytes | None = None


def _cover(begin: int, end: int) -> list[merkle.NodeId]:
    """The perfect subtrees covering leaves ``[begin, end)``: most sibling
    ranges are one complete subtree, found without the general walk."""
    width = end - begin
    if width & (width - 1) == 0 and begin % width == 0:
        level = width.bit_length() - 1
        return [(level, begin >> level)]
    return merkle.perfect_cover(begin, end)


def _inclusion_proofs(tree: TreeStore, indices: set[int], size: int) -> dict[int, list[bytes]]:
    """RFC 9162 inclusion proofs of several leaves in the tree of ``size``.

    The same paths as :func:`securechan.audit.merkle.inclusion_proof` (a test
    compares them), computed for a whole batch at once: every node the proofs
    need is read in one query, and the hash of each sibling range is computed
    once, however many proofs share it (the leaves of one batch are
    neighbours, so above the batch's width they share every sibling).
    """
    # The path of node (level, i) upwards, memoised: a leaf's walk stops at
    # the first ancestor whose path a neighbour already computed.
    above: dict[tuple[int, int], tuple[tuple[int, int], ...]] = {}
    paths: dict[int, tuple[tuple[int, int], ...]] = {}
    ranges: set[tuple[int, int]] = set()
    for index in indices:
        walked = []
        level, node = 0, index
        while (1 << level) < size and (level, node) not in above:
            walked.append((level, node))
            level += 1
            node >>= 1
        path = above.get((level, node), ())
        for level, node in reversed(walked):
            begin = (node ^ 1) << level
            if begin < size:  # a sibling wholly past the edge adds nothing
                sibling = (begin, min(begin + (1 << level), size))
                ranges.add(sibling)
                path = (sibling, *path)
            above[(level, node)] = path
        paths[index] = path
    covers = {r: _cover(*r) for r in ranges}
    ids = list({node for cover in covers.values() for node in cover})
    nodes = dict(zip(ids, tree.get_nodes(ids), strict=True))
    hashes: dict[tuple[int, int], bytes] = {}
    for r, cover in covers.items():
        # MTH of a run of perfect subtrees, largest first: fold right to left.
        acc = nodes[cover[-1]]
        for left in reversed(cover[:-1]):
            acc = merkle.node_hash(nodes[left], acc)
        hashes[r] = acc
    return {index: [hashes[r] for r in path] for index, path in paths.items()}


def _lookup_many(index: sqlite3.Connection, leaves: set[bytes]) -> dict[bytes, int]:
    """The index of each of ``leaves`` the log holds (a few queries, not one each)."""
    wanted = list(leaves)
    found: dict[bytes, int] = {}
    for start in range(0, len(wanted), 500):  # below SQLite's bound on parameters
        chunk = wanted[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        sql = f"SELECT leaf, idx FROM relay_log_leaves WHERE leaf IN ({marks})"  # noqa: S608
        found.update((leaf, int(idx)) for leaf, idx in index.execute(sql, chunk))
    return found


def _settle(outcomes: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in outcomes:
        if future.done():  # the caller was cancelled
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def _sqlite_words(exc: sqlite3.Error) -> str:
    """SQLite's own words for a failure ("database or disk is full
    (SQLITE_FULL)", "database is locked (SQLITE_BUSY)"): names no data."""
    name = getattr(exc, "sqlite_errorname", None)
    # Without an SQLite error name the text is Python's, which may quote data.
    return f"{exc} ({name})" if name else type(exc).__name__


def _storage_error(exc: BaseException) -> BaseException:
    if isinstance(exc, sqlite3.Error):
        err = StorageError(f"the transparency log database failed: {_sqlite_words(exc)}")
        err.__cause__ = exc
        return err
    return exc


def _prepare_file(path: Path) -> None:
    """Create the file 0600 (refusing a symlink) before SQLite opens it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StorageError(f"{path} is not a regular file")
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _connect_index(path: Path, *, writer: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
    try:
        conn.execute("PRAGMA trusted_schema = OFF")
        if writer:
            # Safe without its own sync: see the module docstring.
            conn.execute("PRAGMA synchronous = NORMAL")
        else:
            conn.execute("PRAGMA query_only = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'relay_log_schema'"
        ).fetchone()
        if not exists:
            for statement in _SCHEMA_V1:
                conn.execute(statement)
            conn.execute("INSERT INTO relay_log_schema (version) VALUES (?)", (_SCHEMA_VERSION,))
        else:
            rows = conn.execute("SELECT version FROM relay_log_schema").fetchall()
            if len(rows) != 1 or type(rows[0][0]) is not int:
                raise StorageError("tlog.db: damaged relay_log_schema table")
            if rows[0][0] > _SCHEMA_VERSION:
                raise StorageError("tlog.db was written by a newer securechan relay")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class _Reader:
    """The reader thread's own TreeStore and index connection."""

    def __init__(self, path: Path) -> None:
        self.tree = TreeStore(path)
        try:
            self.index = _connect_index(path, writer=False)
        except BaseException:
            self.tree.close()
            raise

    def lookup(self, leaf: bytes) -> int | None:
        row = self.index.execute(
            "SELECT idx FROM relay_log_leaves WHERE leaf = ?", (leaf,)
        ).fetchone()
        return None if row is None else int(row[0])

    def close(self) -> None:
        self.index.close()
        self.tree.close()


class RelayLog:
    """The relay's transparency log in one SQLite file (``DATA/tlog.db``).

    Construct with :meth:`open`; finish with :meth:`close`. Methods raise
    :class:`~securechan.relay.storage.StorageClosed` after :meth:`close` and
    :class:`~securechan.errors.StorageError` when SQLite fails. One process
    writes a log file at a time.
    """

    commits: int
    """Tree commits so far (one fsync each with ``synchronous=FULL``)."""

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
        """Blocking: prefer ``await RelayLog.open(...)`` from async code."""
        self.path = Path(path).absolute()
        self.origin = default_origin(key.public) if origin is None else origin
        if not is_valid_key_name(self.origin):
            raise ValueError("the log origin must be a valid C2SP key name")
        self._signer = NoteSigner(self.origin, key)
        self.verifier: VerifierKey = self._signer.verifier
        known: dict[tuple[str, bytes], VerifierKey] = {}
        for w in witnesses:
            if not isinstance(w, VerifierKey) or w.sig_type != SIG_COSIGNATURE_V1:
                raise ValueError("witness keys are tlog-cosignature (type 0x04) verifier keys")
            if known.setdefault((w.name, w.key_id), w) != w:
                raise ValueError("two witness keys share a name and key ID")
        self.witnesses: tuple[VerifierKey, ...] = tuple(known.values())
        if not 0 <= cosign_window <= 86_400:
            raise ValueError("cosign_window is 0 to 86400 seconds")
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous is 'FULL' or 'NORMAL'")
        self._synchronous = synchronous
        self._window = float(cosign_window)
        self._clock = clock
        self.commits = 0
        self._lock = threading.Lock()
        self._closed = False
        self._shut = threading.Event()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        # (monotonic time, size before) of each batch that grew the tree, for
        # the cosignature window; touched by the writer thread only.
        self._grown: collections.deque[tuple[float, int]] = collections.deque(
            maxlen=_COSIGN_HISTORY
        )
        # Replaced whole (never mutated) by the writer, read by the event loop.
        self._head: _Head
        self._cosigs: dict[str, _Cosig] = {}
        # The newest head's note with its cosignatures, composed once (event loop).
        self._note: tuple[_Head, dict[str, _Cosig], str] | None = None
        self._watermark: int | None = None
        # The log's size when the relay last stopped cleanly (read and
        # cleared at open), and whether an append failed since (writer).
        self._clean_size: int | None = None
        self._lost = False
        try:
            _prepare_file(self.path)
        except OSError as e:
            raise StorageError(f"cannot create {self.path}: {e.strerror}") from None
        ready = threading.Event()
        failure: list[BaseException] = []
        self._writer = threading.Thread(
            target=self._writer_main, args=(ready, failure), name="relay-log-write", daemon=True
        )
        self._writer.start()
        ready.wait()
        if failure:
            self._writer.join()
            raise failure[0]
        self._reader_state = threading.local()
        self._read_pool = ThreadPoolExecutor(1, thread_name_prefix="relay-log-read")

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        key: Ed25519SigningKey,
        *,
        origin: str | None = None,
        witnesses: Sequence[VerifierKey] = (),
        synchronous: str = "FULL",
        cosign_window: float = DEFAULT_COSIGN_WINDOW,
        clock: Callable[[], float] = time.time,
    ) -> Self:
        """Open (creating if needed) the log at ``path`` and repair its index.

        Raises :class:`~securechan.errors.StorageError` if the file cannot be
        used, or if it holds the log of another origin or key (a log's
        identity never changes); ``ValueError`` for a bad origin or witness key.
        """
        return await asyncio.to_thread(
            cls,
            path,
            key,
            origin=origin,
            witnesses=witnesses,
            synchronous=synchronous,
            cosign_window=cosign_window,
            clock=clock,
        )

    # --- public reads ------------------------------------------------------------

    @property
    def size(self) -> int:
        """The size of the newest checkpoint."""
        return self._head.size

    def checkpoint(self) -> str:
        """The newest checkpoint, signed, with every cosignature held for it."""
        return self._head_note(self._head)

    def _head_note(self, head: _Head) -> str:
        """``head`` signed, with its cosignatures; composed once per head and
        set of cosignatures (both are replaced whole, never changed)."""
        cached, cosigs = self._note, self._cosigs
        if cached is not None and cached[0] is head and cached[1] is cosigs:
            return cached[2]
        note = self._compose(head.text, head.size, head.signature)
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
        return self._compose(text, size, self._signer.sign(text))

    async def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 inclusion proof of leaf ``index`` in the tree of ``size``."""
        self._check_size(size)
        if type(index) is not int or not 0 <= index < size:
            raise ValueError("an inclusion proof needs 0 <= index < size")
        return await self._read(lambda r: r.tree.inclusion_proof(index, size))

    async def consistency_proof(self, old: int, new: int) -> list[bytes]:
        """RFC 9162 consistency proof from ``old`` to ``new`` (empty from 0)."""
        self._check_size(new)
        if type(old) is not int or not 0 <= old <= new:
            raise ValueError("a consistency proof needs 0 <= old <= new")
        return await self._read(lambda r: r.tree.consistency_proof(old, new))

    def _check_size(self, size: int) -> None:
        if type(size) is not int or not 0 <= size <= self._head.size:
            raise ValueError("the log has no checkpoint of that size")

    # --- appending -----------------------------------------------------------------

    async def append(self, envelope: bytes) -> Receipt:
        """Log ``envelope`` (once: a logged one keeps its leaf); its receipt.

        Returns after the leaf is committed, with the checkpoint of the batch
        that committed it (or the newest one, for a leaf logged before) and
        the inclusion proof the writer computed against it.
        """
        if not isinstance(envelope, bytes):
            raise TypeError("an envelope is bytes")
        # Hashed by the writer: the event loop hands over the bytes and goes on.
        return self.receipt_from(await self._submit("append", envelope))

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

    async def _receipt(self, index: int, head: _Head) -> Receipt:
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

    # --- witnesses -------------------------------------------------------------------

    async def add_cosignatures(self, body: bytes) -> str:
        """Store the cosignatures in a posted cosigned checkpoint; the
        checkpoint with every cosignature held for its size.

        ``body`` is this log's checkpoint as a signed note, with one or more
        tlog-cosignature lines by configured witnesses among its signatures
        (others are ignored). Raises :class:`CosignatureRefused`.
        """
        return cast(str, await self._submit("cosign", body))

    # --- plumbing ------------------------------------------------------------------

    def append_from_thread(
        self,
        envelope: bytes,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
        *,
        before: tuple[asyncio.Future[Any], Any] | None = None,
        digest: bytes | None = None,
    ) -> None:
        """Start :meth:`append` from any thread: ``future`` (of ``loop``) gets
        the append's answer, which :meth:`receipt_from` turns into the
        receipt on the event loop, or the error. ``before``, a future of the same loop with
        its value, is resolved in the same callback just before ``future``, so
        a task that awaits one and then the other wakes once. Raises
        :class:`StorageClosed` (nothing started) after :meth:`close`.
        ``digest``, if given, must be SHA-256 of ``envelope`` as the caller
        computed it (the relay has it from the request signature's check):
        the leaf hash is then derived from it, not from the envelope again."""
        if not isinstance(envelope, bytes):
            raise TypeError("an envelope is bytes")
        leaf = None
        if digest is not None:
            if not isinstance(digest, bytes) or len(digest) != 32:
                raise ValueError("digest is SHA-256 of the envelope")
            leaf = merkle.leaf_hash(ENVELOPE_LEAF_CONTEXT + digest)
        with self._lock:
            if self._closed:
                self._lost = True
                raise StorageClosed("the transparency log is closed")
            self._jobs.put(_Job("append", envelope, loop, future, before, leaf))

    def receipt_from(self, appended: Any) -> Receipt:
        """The receipt for what an append answered (on the event loop: the
        checkpoint note is composed there, once per checkpoint)."""
        index, head, _, proof = appended
        return Receipt(leaf_index=index, checkpoint=self._head_note(head), inclusion_proof=proof)

    async def _submit(self, kind: str, arg: Any) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._lock:  # no job may enter the queue behind close()'s stop mark
            if self._closed:
                self._lost = self._lost or kind == "append"
                raise StorageClosed("the transparency log is closed")
            self._jobs.put(_Job(kind, arg, loop, future))
        return await future

    async def _read(self, fn: Callable[[_Reader], T]) -> T:
        with self._lock:
            if self._closed:
                raise StorageClosed("the transparency log is closed")
            done = self._read_pool.submit(self._run_read, fn)
        return await asyncio.wrap_future(done)

    def _run_read(self, fn: Callable[[_Reader], T]) -> T:
        reader: _Reader | None = getattr(self._reader_state, "reader", None)
        try:
            if reader is None:
                reader = self._reader_state.reader = _Reader(self.path)
            return fn(reader)
        except sqlite3.Error as e:
            raise _storage_error(e) from None

    def _close_reader(self) -> None:
        reader: _Reader | None = getattr(self._reader_state, "reader", None)
        if reader is not None:
            self._reader_state.reader = None
            reader.close()

    def _compose(self, text: str, size: int, relay_sig: NoteSignature) -> str:
        cosigs = self._cosigs
        extra = tuple(
            c.signature for w in self.witnesses if (c := cosigs.get(w.to_text())) and c.size == size
        )
        return SignedNote(text=text, signatures=(relay_sig, *extra)).to_text()

    def _make_head(self, size: int, root: bytes) -> _Head:
        text = Checkpoint(origin=self.origin, size=size, root_hash=root).to_text()
        return _Head(size, root, text, self._signer.sign(text))

    # --- the writer thread -------------------------------------------------------------

    def _writer_main(self, ready: threading.Event, failure: list[BaseException]) -> None:
        try:
            tree = TreeStore(self.path, synchronous=self._synchronous)
        except BaseException as e:
            failure.append(e)
            ready.set()
            return
        index: sqlite3.Connection | None = None
        try:
            index = _connect_index(self.path, writer=True)
            self._open_index(tree, index)
        except BaseException as e:
            if index is not None:
                index.close()
            tree.close()
            failure.append(_storage_error(e))
            ready.set()
            return
        ready.set()
        try:
            self._serve_jobs(tree, index)
        finally:
            index.close()
            tree.close()
            self._shut.set()

    def _open_index(self, tree: TreeStore, index: sqlite3.Connection) -> None:
        _migrate(index)
        key_text = self.verifier.to_text()
        size = tree.size
        # Synced: the clean-stop mark's removal must outlive a power loss.
        index.execute("PRAGMA synchronous = FULL")
        index.execute("BEGIN IMMEDIATE")
        try:
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
            index.execute(
                "CREATE TABLE IF NOT EXISTS relay_log_clean"
                " (id INTEGER PRIMARY KEY CHECK (id = 0), size INTEGER NOT NULL)"
            )
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
            index.execute("COMMIT")
        except BaseException:
            if index.in_transaction:
                index.execute("ROLLBACK")
            raise
        finally:
            index.execute("PRAGMA synchronous = NORMAL")
        self._head = self._make_head(size, tree.root(size))
        self._cosigs = self._load_cosignatures(tree, index, size)

    def _load_cosignatures(
        self, tree: TreeStore, index: sqlite3.Connection, size: int
    ) -> dict[str, _Cosig]:
        """Stored cosignatures of configured witnesses that still verify.

        One that fails would make clients reject the whole note (a known key's
        bad signature does), so a damaged row is dropped, not served.
        """
        by_text = {w.to_text(): w for w in self.witnesses}
        out: dict[str, _Cosig] = {}
        rows = index.execute(
            "SELECT witness, size, timestamp, line FROM relay_log_cosignatures"
        ).fetchall()
        for witness, at, timestamp, line in rows:
            w = by_text.get(witness)
            if w is None or type(at) is not int or not 0 <= at <= size:
                continue
            text = Checkpoint(origin=self.origin, size=at, root_hash=tree.root(at)).to_text()
            try:
                sig = NoteSignature.from_line(line)
                if w.verify(text.encode(), sig.signature) != timestamp:
                    raise BadSignature("timestamp mismatch")
            except (MalformedInput, BadSignature, ValueError):
                log.warning("transparency log: dropped a stored cosignature that fails")
                continue
            out[witness] = _Cosig(at, timestamp, sig)
        return out

    def _serve_jobs(self, tree: TreeStore, index: sqlite3.Connection) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            # No linger: appends come in bursts already (the sends of one
            # relay.db batch resume together), and a wait here would only
            # add to every send's latency.
            batch, stop = take_batch(self._jobs, job, MAX_BATCH, linger=0)
            outcomes: list[tuple[_Job, bool, Any]] = []
            appends = [j for j in batch if j.kind == "append"]
            if appends:
                outcomes += self._append_batch(tree, appends)
                self._lost = self._lost or not all(ok for _, ok, _ in outcomes)
            for j in batch:
                if j.kind == "clean":
                    try:
                        outcomes.append((j, True, self._mark_clean(index)))
                    except Exception as e:
                        outcomes.append((j, False, _storage_error(e)))
                if j.kind == "cosign":
                    try:
                        outcomes.append((j, True, self._cosign(tree, index, j.arg)))
                    except Exception as e:
                        outcomes.append((j, False, _storage_error(e)))
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]]
            by_loop = {}
            for j, ok, value in outcomes:
                settled = by_loop.setdefault(j.loop, [])
                if j.before is not None:
                    settled.append((j.before[0], True, j.before[1]))
                settled.append((j.future, ok, value))
            for loop, settled in by_loop.items():
                with contextlib.suppress(RuntimeError):  # the caller's loop is gone
                    loop.call_soon_threadsafe(_settle, settled)
            if stop:
                return

    def _append_batch(self, tree: TreeStore, jobs: list[_Job]) -> list[tuple[_Job, bool, Any]]:
        start = self._head.size
        placed: dict[bytes, tuple[int, bool]] = {}
        new: list[bytes] = []
        try:
            # Jobs carry envelopes, and the leaf hash when the caller had the digest.
            leaves = [job.leaf or envelope_leaf_hash(job.arg) for job in jobs]
            # Through the tree's connection, which writes the index rows too:
            # its page cache stays warm (a second connection's cache would be
            # dropped after every commit of the tree's).
            known = _lookup_many(tree.connection, set(leaves))
            for leaf in leaves:
                if leaf in placed:
                    continue
                if leaf in known:
                    placed[leaf] = (known[leaf], False)
                else:
                    placed[leaf] = (start + len(new), True)
                    new.append(leaf)
            if new:
                self._commit(tree, start, new)
            head = self._head
            # Each caller's receipt proves its leaf in this batch's checkpoint:
            # computed here, once per batch, not by a read per caller.
            proofs = _inclusion_proofs(tree, {i for i, _ in placed.values()}, head.size)
        except Exception as e:
            err = _storage_error(e)
            return [(job, False, err) for job in jobs]
        out: list[tuple[_Job, bool, Any]] = []
        for job, leaf in zip(jobs, leaves, strict=True):
            idx, created = placed[leaf]
            # Only the first job of a new leaf reports it as created.
            out.append((job, True, (idx, head, created, tuple(proofs[idx]))))
            if created:
                placed[leaf] = (idx, False)
        return out

    def _commit(self, tree: TreeStore, start: int, new: list[bytes]) -> None:
        """The leaves, their index rows and the append time in ONE transaction
        of the tree's connection (one commit, one sync), then the head."""
        stamp = int(self._clock())

        def index_rows(conn: sqlite3.Connection, at: int) -> None:
            if at != start:
                raise StorageError("another writer appended to the transparency log")
            conn.executemany(
                "INSERT INTO relay_log_leaves (leaf, idx) VALUES (?, ?)",
                ((leaf, start + i) for i, leaf in enumerate(new)),
            )
            conn.execute("UPDATE relay_log_meta SET last_append = ? WHERE id = 0", (stamp,))

        tree.append_many_leaf_hashes(new, also=index_rows)
        self.commits += 1
        # The root from the tree's compact range (the only writer: index_rows
        # checked the batch went where expected), not from three queries.
        size, root = tree.appended
        self._head = self._make_head(size, root)
        self._grown.append((time.monotonic(), start))

    def _mark_clean(self, index: sqlite3.Connection) -> bool:
        if self._lost:
            return False
        with index:
            index.execute(
                "INSERT OR REPLACE INTO relay_log_clean (id, size) VALUES (0, ?)",
                (self._head.size,),
            )
        return True

    def _recent_floor(self) -> int:
        """The oldest size a cosignature may still be for (writer thread)."""
        cutoff = time.monotonic() - self._window
        while self._grown and self._grown[0][0] < cutoff:
            self._grown.popleft()
        return self._grown[0][1] if self._grown else self._head.size

    def _cosign(self, tree: TreeStore, index: sqlite3.Connection, body: bytes) -> str:
        # Check and store on the writer thread: the staleness check and the
        # update are atomic (the race c2sp.org/tlog-witness warns about).
        try:
            note = SignedNote.from_text_unverified(body)
            cp = Checkpoint.from_text(note.text)
        except MalformedInput as e:
            raise CosignatureRefused("malformed", str(e)) from None
        if cp.origin != self.origin:
            raise CosignatureRefused("malformed", "the checkpoint is not of this log")
        known = {(w.name, w.key_id): w for w in self.witnesses}
        mine = [
            (known[(s.name, s.key_id)], s) for s in note.signatures if (s.name, s.key_id) in known
        ]
        if not mine:
            raise CosignatureRefused("unknown_witness", "no cosignature by a witness of this log")
        head = self._head
        if cp.size > head.size:
            raise CosignatureRefused("not_in_log", "the log never had a tree of that size")
        root = head.root if cp.size == head.size else tree.root(cp.size)
        ours = Checkpoint(origin=self.origin, size=cp.size, root_hash=root).to_text()
        if note.text != ours:
            # A validly signed checkpoint of ours with another root would mean
            # the log key signed two histories: keep a trace for the operator.
            log.error("transparency log: a witness posted a checkpoint this log never had")
            raise CosignatureRefused("not_in_log", "the log's tree of that size differs")
        message = note.text.encode()
        limit = int(self._clock()) + MAX_FUTURE_COSIGNATURE
        verified: list[tuple[VerifierKey, int, NoteSignature]] = []
        for w, sig in mine:
            try:
                timestamp = w.verify(message, sig.signature)
            except BadSignature:
                raise CosignatureRefused("bad_signature", "a cosignature does not verify") from None
            if timestamp is None or not 0 <= timestamp <= min(limit, MAX_TIMESTAMP):
                raise CosignatureRefused("malformed", "a cosignature is dated in the future")
            verified.append((w, timestamp, sig))
        floor = self._recent_floor()
        cosigs = self._cosigs
        for w, _, _ in verified:
            prev = cosigs.get(w.to_text())
            if cp.size < floor or (prev is not None and prev.size > cp.size):
                raise CosignatureRefused(
                    "stale", "a newer checkpoint must be cosigned", log_size=head.size
                )
        updated = dict(cosigs)
        rows = []
        for w, timestamp, sig in verified:
            prev = cosigs.get(w.to_text())
            if prev is not None and (prev.size, prev.timestamp) >= (cp.size, timestamp):
                continue  # keep the newer one we hold
            updated[w.to_text()] = _Cosig(cp.size, timestamp, sig)
            rows.append((w.to_text(), cp.size, timestamp, sig.to_line().removesuffix("\n")))
        if rows:
            # Durable before the answer, like a witness's own state: FULL for
            # this one commit on the (otherwise NORMAL) index connection.
            index.execute("PRAGMA synchronous = FULL")
            try:
                index.execute("BEGIN IMMEDIATE")
                try:
                    index.executemany(
                        "INSERT INTO relay_log_cosignatures (witness, size, timestamp, line)"
                        " VALUES (?, ?, ?, ?) ON CONFLICT (witness) DO UPDATE SET"
                        " size = excluded.size, timestamp = excluded.timestamp,"
                        " line = excluded.line",
                        rows,
                    )
                    index.execute("COMMIT")
                except BaseException:
                    if index.in_transaction:
                        index.execute("ROLLBACK")
                    raise
            finally:
                index.execute("PRAGMA synchronous = NORMAL")
            self._cosigs = updated
        relay_sig = head.signature if cp.size == head.size else self._signer.sign(note.text)
        return self._compose(note.text, cp.size, relay_sig)

    # --- lifetime --------------------------------------------------------------------

    async def close(self) -> None:
        """Finish the jobs already submitted and close; a second call waits."""
        with self._lock:
            first = not self._closed
            self._closed = True
        if first:
            await asyncio.to_thread(self._shutdown)
        else:
            await asyncio.to_thread(self._shut.wait)

    def _shutdown(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._read_pool.submit(self._close_reader).result()
        self._read_pool.shutdown(wait=True)
        self._jobs.put(None)
        self._writer.join()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def parse_witness_keys(lines: Sequence[str]) -> tuple[VerifierKey, ...]:
    """Witness verifier keys from text lines (``#`` comments and blanks
    skipped); ``MalformedInput`` for a line that is not a type 0x04 key."""
    keys: list[VerifierKey] = []
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key = VerifierKey.from_text(line)
        if key.sig_type != SIG_COSIGNATURE_V1:
            raise MalformedInput("a witness key is a tlog-cosignature (type 0x04) verifier key")
        if key not in keys:
            keys.append(key)
    return tuple(keys)
