"""Move a relay from its SQLite data folder to PostgreSQL
(``securechan relay migrate --from DATA --to postgresql://...``,
``docs/RELAY.md``, "Moving a relay to PostgreSQL").

The log: every node of ``DATA/tlog.db`` (the stored positions are the same
in both backends), the leaf index, the witnesses' cosignatures, the log's
origin, key and last append time, read in ONE read transaction of
``tlog.db`` (a consistent snapshot even if a relay still writes it) and
written in ONE transaction of PostgreSQL under the tree-state row lock
(all or nothing; refused if the database already holds a non-empty log).
Then the proof: the source's size and root (from ``tlog.db``'s nodes), the
target's size and root as PostgreSQL's nodes give them, the root
recomputed from the leaf hashes PostgreSQL holds, in index order, and every
stored node compared with the tree rebuilt from those leaves; all must
agree (:attr:`LogCopy.unchanged`).

The relay's queues, envelopes and prekeys (``DATA/relay.db``) are copied by
a :data:`StorageCopier` when this build has one
(:func:`storage_copier`); the log part does not depend on it.
"""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from securechan.audit import merkle
from securechan.audit.merkle import HASH_SIZE, CompactRange, NodeId
from securechan.audit.tree import storage_index
from securechan.errors import StorageError
from securechan.relay.pg_tlog_store import (
    PgTree,
    connect,
    ensure_schema,
    pg_error,
    read_state,
)
from securechan.relay.tlog_schema import SCHEMA as TLOG_SCHEMA
from securechan.sqlite_schema import connect as sqlite_connect

if TYPE_CHECKING:
    import psycopg

__all__ = ["LogCopy", "StorageCopier", "migrate_log", "storage_copier"]

_CHUNK: Final = 10_000

StorageCopier = Callable[[Path, str], Coroutine[Any, Any, str]]
"""``copier(data_dir, url)`` copies relay.db's queues, envelopes and
prekeys into the PostgreSQL storage at ``url`` and returns a one-line
summary; raises :class:`~securechan.errors.StorageError`."""


def storage_copier() -> StorageCopier | None:
    """The copier of relay.db into PostgreSQL, if this build has the
    PostgreSQL relay storage. THE SEAM: the PostgreSQL ``RelayStorage``
    (issue 16, item 1, storage side) plugs its copier in here: None
    without psycopg."""
    try:
        from securechan.relay.pg_store_migrate import copy_storage
    except ImportError:
        return None
    return copy_storage


@dataclass(frozen=True, slots=True)
class LogCopy:
    """What :func:`migrate_log` copied and proved."""

    origin: str
    source_size: int
    source_root: bytes
    target_size: int
    target_root: bytes
    leaves: int
    leaves_root: bytes
    nodes_differ: int
    cosignatures: int

    @property
    def unchanged(self) -> bool:
        """Same size (tree state and leaf count) and the same root three ways."""
        return (
            self.source_size == self.target_size == self.leaves
            and self.source_root == self.target_root == self.leaves_root
            and self.nodes_differ == 0
        )

    def lines(self) -> list[str]:
        b64 = base64.b64encode
        return [
            f"log origin: {self.origin}",
            f"source tlog.db: size {self.source_size} root {b64(self.source_root).decode()}",
            f"target PostgreSQL: size {self.target_size} root {b64(self.target_root).decode()}",
            f"PostgreSQL's {self.leaves} leaves: root {b64(self.leaves_root).decode()}",
            f"nodes that differ from a rebuild from those leaves: {self.nodes_differ}",
            f"cosignatures copied: {self.cosignatures}",
        ]


class _SqliteNodes:
    """tlog.db's nodes, read inside the caller's read transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def get_nodes(self, ids: Sequence[NodeId], /) -> list[bytes]:
        positions = [storage_index(level, index) for level, index in ids]
        found: dict[int, bytes] = {}
        wanted = sorted(set(positions))
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            sql = f"SELECT pos, hash FROM nodes WHERE pos IN ({marks})"  # noqa: S608
            found.update(self.conn.execute(sql, chunk).fetchall())
        try:
            return [found[p] for p in positions]
        except KeyError:
            raise StorageError("tlog.db: a node is missing (damaged file)") from None


def _read_source(path: Path) -> tuple[sqlite3.Connection, str, str, int | None, int, bytes]:
    """A read transaction on tlog.db and its origin, key, last append, size, root."""
    if not path.is_file():
        raise StorageError(f"{path}: no transparency log there")
    conn = sqlite_connect(path, read_only=True, secure_delete=False, foreign_keys=False)
    try:
        if TLOG_SCHEMA.check(conn, path) == 0:
            raise StorageError(f"{path}: not a relay log")
        conn.execute("BEGIN")  # one snapshot for everything read below
        meta = conn.execute(
            "SELECT origin, log_key, last_append FROM relay_log_meta WHERE id = 0"
        ).fetchone()
        row = conn.execute("SELECT size FROM tree_size WHERE id = 0").fetchone()
        if meta is None or row is None or type(row[0]) is not int:
            raise StorageError(f"{path}: a damaged or never-opened relay log")
        size = int(row[0])
        root = merkle.root_at(_SqliteNodes(conn), size)
    except BaseException:
        conn.close()
        raise
    last = meta[2] if type(meta[2]) is int else None
    return conn, str(meta[0]), str(meta[1]), last, size, root


def _copy(src: sqlite3.Connection, dst: psycopg.Connection[tuple[object, ...]], size: int) -> int:
    """Nodes, leaf index, entries and cosignatures, inside ``dst``'s transaction."""
    end = 2 * size - size.bit_count()  # the rows a tree of ``size`` holds
    with dst.cursor() as cur:
        with cur.copy("COPY relay_log_nodes (pos, hash) FROM STDIN") as copy:
            nodes = src.execute("SELECT pos, hash FROM nodes WHERE pos < ? ORDER BY pos", (end,))
            for pos, h in nodes:
                if type(h) is not bytes or len(h) != HASH_SIZE:
                    raise StorageError("tlog.db: a node is damaged")
                copy.write_row((pos, h))
        # The leaf index from the tree's own leaves (level 0), not from
        # tlog.db's index table: the tree is what the root commits to.
        with cur.copy("COPY relay_log_leaves (leaf, idx) FROM STDIN") as copy:
            for start in range(0, size, _CHUNK):
                ids = [(0, i) for i in range(start, min(start + _CHUNK, size))]
                for (_, i), leaf in zip(ids, _SqliteNodes(src).get_nodes(ids), strict=True):
                    copy.write_row((leaf, i))
        # The entries (envelope digests) tlog.db kept: from schema version 3
        # on; a leaf appended before has none, as in tlog.db (its entry
        # bundle is not served, docs/RELAY.md "The log as tiles").
        with cur.copy("COPY relay_log_entries (idx, digest) FROM STDIN") as copy:
            for idx, digest in src.execute(
                "SELECT idx, digest FROM relay_log_entries WHERE idx < ? ORDER BY idx", (size,)
            ):
                copy.write_row((idx, digest))
        rows = src.execute(
            "SELECT witness, size, timestamp, line FROM relay_log_cosignatures WHERE size <= ?",
            (size,),
        ).fetchall()
        cur.executemany(
            "INSERT INTO relay_log_cosignatures (witness, size, timestamp, line)"
            " VALUES (%s, %s, %s, %s)",
            rows,
        )
    return len(rows)


def migrate_log(data_dir: Path, url: str) -> LogCopy:
    """Copy ``data_dir/tlog.db`` into the PostgreSQL database at ``url`` and
    prove its size and root unchanged (blocking).

    Raises :class:`~securechan.errors.StorageError` if either side cannot be
    used or the database already holds a non-empty log (nothing is written).
    The caller checks :attr:`LogCopy.unchanged` (the CLI prints
    :meth:`LogCopy.lines` and exits 1 when it is false).
    """
    src, origin, log_key, last, size, root = _read_source(data_dir / "tlog.db")
    try:
        dst = connect(url)
        try:
            ensure_schema(dst)
            with dst.transaction():
                dst.execute(
                    "INSERT INTO relay_log_state (id, origin, log_key, size, root)"
                    " VALUES (0, %s, %s, 0, %s) ON CONFLICT (id) DO NOTHING",
                    (origin, log_key, merkle.EMPTY_ROOT),
                )
                state = read_state(dst, lock=True)
                if (
                    state is None
                    or state.size != 0
                    or (state.origin, state.log_key)
                    != (
                        origin,
                        log_key,
                    )
                ):
                    raise StorageError(
                        "the PostgreSQL database already holds a relay log: refusing to"
                        " write over it (use an empty database)"
                    )
                cosigs = _copy(src, dst, size)
                dst.execute(
                    "UPDATE relay_log_state SET size = %s, root = %s, last_append = %s"
                    " WHERE id = 0",
                    (size, root, last),
                )
        finally:
            dst.close()
        copied = _prove(url, origin, size, root, cosigs)
    except Exception as e:
        raise pg_error(e) from None
    finally:
        src.close()
    return copied


def _prove(url: str, origin: str, size: int, root: bytes, cosigs: int) -> LogCopy:
    """Read the copy back on a new connection: the size the tree state
    holds, the root its nodes give, and the root of its leaf hashes."""
    conn = connect(url)
    try:
        state = read_state(conn)
        if state is None:
            raise StorageError("the PostgreSQL log has no tree state after the copy")
        target_root = PgTree(conn).root(state.size)
        leaves = [
            bytes(leaf)  # type: ignore[call-overload]
            for (leaf,) in conn.execute("SELECT leaf FROM relay_log_leaves ORDER BY idx")
        ]
        differ = _rebuild_differs(conn, leaves)
        return LogCopy(
            origin=origin,
            source_size=size,
            source_root=root,
            target_size=state.size,
            target_root=target_root,
            leaves=len(leaves),
            leaves_root=merkle.root_from_leaf_hashes(leaves),
            nodes_differ=differ,
            cosignatures=cosigs,
        )
    finally:
        conn.close()


def _rebuild_differs(conn: psycopg.Connection[tuple[object, ...]], leaves: list[bytes]) -> int:
    """How many stored nodes differ from the tree rebuilt from ``leaves``
    (missing or extra rows count too). The root alone reads only the
    O(log n) nodes of its cover; proofs read the others, so every one is
    checked."""
    expected: list[bytes] = []
    compact = CompactRange()
    for leaf in leaves:
        compact.append(leaf, expected)
    differ = 0
    seen = 0
    for pos, h in conn.execute("SELECT pos, hash FROM relay_log_nodes ORDER BY pos"):
        seen += 1
        if type(pos) is not int or not 0 <= pos < len(expected) or bytes(h) != expected[pos]:  # type: ignore[call-overload]
            differ += 1
    return differ + abs(len(expected) - seen)
