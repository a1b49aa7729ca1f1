"""The relay's persistent, append-only Merkle tree (RFC 6962 hashing) in SQLite.

Layout: every complete subtree hash ``(level, index)`` (leaf hashes are level
0) is a row of one table, at the position where appending writes it. Appending
leaf ``n`` writes its leaf hash, then the hash of each subtree it completes,
lowest first: one per trailing 1 bit of ``n``. Counting what comes before,
leaf ``n`` sits at ``sum(n >> l for l >= 0) = 2n - popcount(n)`` and a node
``(level, index)``, completed by leaf ``m = (index + 1) * 2**level - 1``, at
``2m - popcount(m) + level``. This is the order of Go's checksum database
(``golang.org/x/mod/sumdb/tlog``, ``StoredHashIndex``); rows are only ever
added at the end of the table, which SQLite does cheaply.

Guarantees:

* Appending is O(log n): the in-memory compact range (one hash per set bit of
  the size) gives every new parent; :meth:`TreeStore.append_many` writes a
  whole batch in one transaction, all or nothing, and survives a crash once
  it returns (WAL, ``synchronous=FULL`` by default).
* The root at any past size, and inclusion and consistency proofs against any
  past size, read O(log n) rows in one query (see
  :mod:`securechan.audit.merkle`). Stored nodes never change, so a proof
  handed out for an old checkpoint stays valid.
* Several processes may share a file: a writer re-reads the size inside its
  write transaction and reloads its compact range if another one appended.
* The file is opened by :mod:`securechan.sqlite_schema` (WAL,
  ``synchronous``), its tables are in ``securechan/schema/tree/``. SQL is
  parameterised. SQLite failures, a missing row (a damaged file) and a file
  from a newer schema raise :class:`~securechan.errors.StorageError`. Impossible requests
  (``index >= size``, a size beyond the tree) raise ``ValueError``.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import count
from pathlib import Path

from securechan.audit import merkle
from securechan.audit.merkle import HASH_SIZE, CompactRange, NodeId, leaf_hash
from securechan.errors import StorageError
from securechan.sqlite_schema import OwnsConnection, Schema, connect

__all__ = ["SCHEMA", "SCHEMA_VERSION", "TreeStore", "legacy_version", "storage_index"]

# Row positions (about 2n) must fit SQLite's signed 64-bit integers.
_MAX_LEAVES = 1 << 62


def legacy_version(db: sqlite3.Connection) -> int:
    """The version of a file from before ``user_version``: version 1 kept it
    in the one-row table ``schema_version`` (also in ``tlog.db``)."""
    if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_version'").fetchone():
        raise StorageError("not a tree store (no schema version)")
    rows = db.execute("SELECT version FROM schema_version").fetchall()
    if rows != [(1,)]:
        raise StorageError("tree store: damaged schema_version table")
    return 1


SCHEMA = Schema(
    "tree", application_id=0x73635452, title="a securechan tree store", legacy=legacy_version
)
"""``securechan/schema/tree/``: a standalone tree file. ``tlog.db`` holds the
same tables under the relay log's schema (``securechan.relay.tlog``)."""
SCHEMA_VERSION = SCHEMA.version


def storage_index(level: int, index: int) -> int:
    """The row position of complete subtree ``(level, index)``."""
    last = ((index + 1) << level) - 1
    return 2 * last - last.bit_count() + level


def _position(size: int) -> int:
    """Where the next append starts writing (the number of rows so far)."""
    return 2 * size - size.bit_count()


class TreeStore(OwnsConnection):
    """An append-only RFC 6962 Merkle tree in a SQLite file.

    One instance per thread (``sqlite3``'s rule); several instances or
    processes may share the file.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, synchronous: str = "FULL", schema: Schema = SCHEMA
    ) -> None:
        """Open (creating if needed) the tree in ``path``, a file of ``schema``
        (a standalone tree by default; the relay's ``tlog.db`` passes its own)."""
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous is 'FULL' or 'NORMAL'")
        where = Path(path)
        with self._errors():
            # Nodes are never deleted: nothing for secure_delete to overwrite.
            self._db = connect(where, synchronous=synchronous, secure_delete=False)
        try:
            with self._errors():
                schema.apply(self._db, where)
                self._range = self._load_range(self._read_size())
        except BaseException:
            self._db.close()
            raise

    # --- plumbing ------------------------------------------------------------

    @staticmethod
    @contextmanager
    def _errors() -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StorageError(f"tree store: {exc}") from exc

    @contextmanager
    def _write(self) -> Iterator[int]:
        """A write transaction; yields the committed size, reloading if stale."""
        with self._errors():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                size = self._read_size()
                if size != self._range.size:
                    self._range = self._load_range(size)
                yield size
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _read_size(self) -> int:
        row = self._db.execute("SELECT size FROM tree_size WHERE id = 0").fetchone()
        if row is None or type(row[0]) is not int or row[0] < 0:
            raise StorageError("tree store: damaged tree_size table")
        return int(row[0])

    def _load_range(self, size: int) -> CompactRange:
        return CompactRange(size, self.get_nodes(merkle.perfect_cover(0, size)))

    def get_nodes(self, ids: Sequence[NodeId], /) -> list[bytes]:
        """Complete subtree hashes in one query (the :class:`NodeSource` interface)."""
        if not ids:
            return []
        positions = [storage_index(level, index) for level, index in ids]
        wanted = sorted(set(positions))
        found: dict[int, bytes] = {}
        # Chunked to stay below SQLite's bound on host parameters.
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            with self._errors():
                rows = self._db.execute(
                    f"SELECT pos, hash FROM nodes WHERE pos IN ({marks})",  # noqa: S608
                    chunk,
                ).fetchall()
            found.update((pos, h) for pos, h in rows)
        try:
            hashes = [found[pos] for pos in positions]
        except KeyError:
            raise StorageError("tree store: a node is missing (damaged file)") from None
        if any(type(h) is not bytes or len(h) != HASH_SIZE for h in hashes):
            raise StorageError("tree store: a node is damaged")
        return hashes

    # --- writing ---------------------------------------------------------------

    def append(self, data: bytes) -> int:
        """Append one leaf by its data (hashed as ``0x00 || data``); its index."""
        return self.append_many_leaf_hashes([leaf_hash(data)]).start

    def append_leaf_hash(self, leaf: bytes) -> int:
        """Append one leaf given its leaf hash; its index."""
        return self.append_many_leaf_hashes([leaf]).start

    def append_many(self, data: Iterable[bytes]) -> range:
        """Append leaves by their data in one transaction; their indices."""
        return self.append_many_leaf_hashes([leaf_hash(d) for d in data])

    def append_many_leaf_hashes(
        self,
        leaves: Iterable[bytes],
        *,
        also: Callable[[sqlite3.Connection, int], None] | None = None,
    ) -> range:
        """Append leaf hashes in one transaction, all or none; their indices.

        ``also(connection, start)``, if given, runs inside that transaction
        after the tree's rows are written (``start`` is the first new index):
        rows of the caller's own tables in the same file then commit with the
        tree, atomically and with its one sync. If it raises, nothing is
        appended.
        """
        batch = list(leaves)
        if any(type(h) is not bytes or len(h) != HASH_SIZE for h in batch):
            raise ValueError("leaf hashes are 32 bytes")
        with self._write() as size:
            if size + len(batch) > _MAX_LEAVES:
                raise ValueError("the tree store holds at most 2**62 leaves")
            staged = self._range.copy()
            rows: list[bytes] = []
            for h in batch:
                staged.append(h, rows)
            self._db.executemany(
                "INSERT INTO nodes (pos, hash) VALUES (?, ?)",
                zip(count(_position(size)), rows, strict=False),
            )
            self._db.execute("UPDATE tree_size SET size = ? WHERE id = 0", (staged.size,))
            if also is not None:
                also(self._db, size)
        # Only now is the batch durable; a failure above left the range as it was.
        self._range = staged
        return range(size, staged.size)

    # --- reading -----------------------------------------------------------------

    @property
    def appended(self) -> tuple[int, bytes]:
        """The size and root as of this store's last append (or its opening),
        from memory: no query. Appends by another writer since then are not
        seen (:attr:`size` and :meth:`root` read the file)."""
        return self._range.size, self._range.root()

    @property
    def connection(self) -> sqlite3.Connection:
        """This store's connection, for reading the caller's own tables in the
        same file on the same thread. Reading through it rather than a second
        connection keeps its page cache: SQLite drops a connection's whole
        cache when another connection has written to the WAL since it last
        read. Writes belong in :meth:`append_many_leaf_hashes`'s ``also``."""
        return self._db

    @property
    def size(self) -> int:
        """The number of leaves committed (by any writer)."""
        with self._errors():
            return self._read_size()

    def _check_size(self, size: int) -> None:
        if type(size) is not int or size < 0:
            raise ValueError("a tree size is a non-negative integer")
        if size > self.size:
            raise ValueError("the tree has not reached that size")

    def root(self, size: int | None = None) -> bytes:
        """The RFC 6962 root at ``size`` (default: the current size)."""
        if size is None:
            size = self.size
        self._check_size(size)
        return merkle.root_at(self, size)

    def leaf_hash(self, index: int) -> bytes:
        """The leaf hash at ``index``."""
        if type(index) is not int or not 0 <= index < self.size:
            raise ValueError("no leaf at that index")
        return self.get_nodes([(0, index)])[0]

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 inclusion proof of leaf ``index`` in the tree at ``size``."""
        self._check_size(size)
        return merkle.inclusion_proof(self, index, size)

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        """RFC 9162 consistency proof from ``size1`` to ``size2`` (empty from 0)."""
        self._check_size(size2)
        return merkle.consistency_proof(self, size1, size2)
