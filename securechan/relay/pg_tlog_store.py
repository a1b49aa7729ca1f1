"""The relay's transparency log in PostgreSQL: its tables and the one
sequencing transaction (``docs/RELAY.md``, "The log on PostgreSQL").

Several relay processes share one log. Sequencing follows Tessera's
database backend (its ``TreeState`` row, read ``FOR UPDATE`` at the start of
every integration): :func:`append_leaves` opens a transaction, locks the
one row of ``relay_log_state`` with ``SELECT ... FOR UPDATE`` (so one writer
at a time, in whatever process), looks up which leaves the log already
holds, writes the new leaves' nodes and index rows, the new size and root,
notifies the other processes, and commits. Everything of one batch commits
together or not at all; PostgreSQL's ``synchronous_commit = on`` (set on
every writer connection, whatever the server's default) makes the commit
durable before the caller is answered.

The nodes are stored at the positions :mod:`securechan.audit.tree` uses in
``tlog.db`` (Go sumdb order), so ``securechan relay migrate`` copies rows as
they are. Only hashes are stored, as in ``tlog.db``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Final

from securechan.audit import merkle
from securechan.audit.merkle import HASH_SIZE, CompactRange, NodeId
from securechan.audit.tree import storage_index
from securechan.errors import StorageError

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "CHANNEL",
    "SCHEMA_VERSION",
    "Appended",
    "PgTree",
    "State",
    "append_leaves",
    "connect",
    "ensure_schema",
    "is_postgres_url",
    "lookup_many",
    "pg_error",
    "read_state",
]

CHANNEL: Final = "securechan_relay_log"
"""The LISTEN/NOTIFY channel: payload ``size`` after an append, ``cosig``
after a cosignature is stored."""
SCHEMA_VERSION: Final = 1
_SCHEMA_LOCK: Final = 0x7363544C  # pg_advisory_xact_lock key while creating the tables
_CHUNK: Final = 5000


def is_postgres_url(where: str) -> bool:
    """Whether ``where`` names a PostgreSQL database (not a data folder)."""
    return where.startswith(("postgresql://", "postgres://"))


def pg_error(exc: BaseException, what: str = "the transparency log database") -> BaseException:
    """What a caller sees for ``exc``: psycopg's errors become one
    StorageError naming the SQLSTATE or error class, never the server's
    message (which may quote a row's values); anything else is left as is."""
    import psycopg

    if isinstance(exc, psycopg.Error):
        sqlstate = getattr(exc, "sqlstate", None)
        words = f"{type(exc).__name__} (SQLSTATE {sqlstate})" if sqlstate else type(exc).__name__
        err = StorageError(f"{what} failed: {words}")
        err.__cause__ = exc
        return err
    return exc


def connect(url: str) -> psycopg.Connection[tuple[object, ...]]:
    """A connection for the log, in autocommit mode: a write is one explicit
    ``conn.transaction()`` block (a BEGIN ... COMMIT, never a savepoint of
    some implicit transaction a read left open), and a read holds no
    snapshot or lock after it returns. ``synchronous_commit`` is on whatever
    the server's default, so that a returned commit is on disk."""
    import psycopg

    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
        try:
            conn.execute("SET synchronous_commit = on")
        except BaseException:
            conn.close()
            raise
    except psycopg.Error as e:
        raise pg_error(e) from None
    return conn


def ensure_schema(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Create the log's tables once (processes starting together wait on an
    advisory lock); refuse a database of another schema version."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        has = conn.execute("SELECT to_regclass('relay_log_pg_schema') IS NOT NULL").fetchone()
        if has is None or not has[0]:
            sql = (resources.files("securechan") / "schema/relay_log_pg/v1.sql").read_text("utf-8")
            conn.execute(sql.encode())
            return
        rows = conn.execute("SELECT version FROM relay_log_pg_schema").fetchall()
    if rows != [(SCHEMA_VERSION,)]:
        raise StorageError(
            f"the PostgreSQL log is of schema {rows!r}; this relay reads version {SCHEMA_VERSION}"
        )


@dataclass(frozen=True, slots=True)
class State:
    """The one row of ``relay_log_state``."""

    origin: str
    log_key: str
    size: int
    root: bytes
    last_append: int | None
    cosig_generation: int


def read_state(cur: psycopg.Connection[tuple[object, ...]], *, lock: bool = False) -> State | None:
    """The tree state (``None`` for a new log); ``lock``: ``FOR UPDATE``."""
    sql = (
        "SELECT origin, log_key, size, root, last_append, cosig_generation"
        " FROM relay_log_state WHERE id = 0"
    )
    row = cur.execute(sql + (" FOR UPDATE" if lock else "")).fetchone()
    if row is None:
        return None
    origin, key, size, root, last, gen = row
    if (
        not isinstance(origin, str)
        or not isinstance(key, str)
        or type(size) is not int
        or not isinstance(root, bytes)
        or len(root) != HASH_SIZE
        or type(gen) is not int
    ):
        raise StorageError("the PostgreSQL log: damaged relay_log_state row")
    return State(origin, key, size, root, last if type(last) is int else None, gen)


class PgTree:
    """The log's Merkle tree read from PostgreSQL (a
    :class:`~securechan.audit.merkle.NodeSource`): roots and RFC 9162 proofs
    at any size up to the committed one. Stored nodes never change, so any
    connection may read them without a transaction."""

    def __init__(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        self.conn = conn

    def get_nodes(self, ids: Sequence[NodeId], /) -> list[bytes]:
        if not ids:
            return []
        positions = [storage_index(level, index) for level, index in ids]
        wanted = sorted(set(positions))
        found: dict[int, bytes] = {}
        for start in range(0, len(wanted), _CHUNK):
            rows = self.conn.execute(
                "SELECT pos, hash FROM relay_log_nodes WHERE pos = ANY(%s)",
                (wanted[start : start + _CHUNK],),
            ).fetchall()
            found.update((int(pos), bytes(h)) for pos, h in rows)  # type: ignore[call-overload]
        try:
            hashes = [found[pos] for pos in positions]
        except KeyError:
            raise StorageError("the PostgreSQL log: a node is missing") from None
        if any(len(h) != HASH_SIZE for h in hashes):
            raise StorageError("the PostgreSQL log: a node is damaged")
        return hashes

    @property
    def size(self) -> int:
        state = read_state(self.conn)
        return 0 if state is None else state.size

    def _check(self, size: int) -> None:
        if type(size) is not int or not 0 <= size <= self.size:
            raise ValueError("the tree has not reached that size")

    def root(self, size: int | None = None) -> bytes:
        if size is None:
            size = self.size
        self._check(size)
        return merkle.root_at(self, size)

    def leaf_hash(self, index: int) -> bytes:
        return self.get_nodes([(0, index)])[0]

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        self._check(size)
        return merkle.inclusion_proof(self, index, size)

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        self._check(size2)
        return merkle.consistency_proof(self, size1, size2)

    def close(self) -> None:
        self.conn.close()

    def compact_range(self, size: int) -> CompactRange:
        return CompactRange(size, self.get_nodes(merkle.perfect_cover(0, size)))


def lookup_many(
    conn: psycopg.Connection[tuple[object, ...]], leaves: set[bytes]
) -> dict[bytes, int]:
    """The index of each of ``leaves`` the log holds (one query per 5000)."""
    wanted = list(leaves)
    found: dict[bytes, int] = {}
    for start in range(0, len(wanted), _CHUNK):
        rows = conn.execute(
            "SELECT leaf, idx FROM relay_log_leaves WHERE leaf = ANY(%s)",
            (wanted[start : start + _CHUNK],),
        ).fetchall()
        found.update((bytes(leaf), int(idx)) for leaf, idx in rows)  # type: ignore[call-overload]
    return found


@dataclass(frozen=True, slots=True)
class Appended:
    """What one sequencing transaction committed."""

    size: int
    root: bytes
    placed: dict[bytes, tuple[int, bool]]  # leaf -> (index, appended by this batch)
    compact: CompactRange  # the range at ``size`` (the next batch's start)


def append_leaves(
    conn: psycopg.Connection[tuple[object, ...]],
    leaves: Iterable[bytes],
    *,
    cached: CompactRange | None,
    stamp: int,
) -> Appended:
    """Sequence ``leaves`` (leaf hashes; duplicates and leaves the log holds
    keep their index) in ONE transaction under the tree-state row lock.

    ``cached`` is the compact range this process last committed; it is used
    only if nobody appended since (else it is reloaded from the nodes). The
    caller must not use the result's values before this returns: until the
    commit they are not durable.
    """
    wanted = list(dict.fromkeys(leaves))
    with conn.transaction():
        state = read_state(conn, lock=True)
        if state is None:
            raise StorageError("the PostgreSQL log has no tree state (not opened?)")
        known = lookup_many(conn, set(wanted))
        placed: dict[bytes, tuple[int, bool]] = {}
        new: list[bytes] = []
        for leaf in wanted:
            if leaf in known:
                placed[leaf] = (known[leaf], False)
            else:
                placed[leaf] = (state.size + len(new), True)
                new.append(leaf)
        tree = PgTree(conn)
        if cached is not None and cached.size == state.size:
            compact = cached
        else:
            compact = tree.compact_range(state.size)
        if not new:
            return Appended(state.size, state.root, placed, compact)
        staged = compact.copy()
        rows: list[bytes] = []
        for leaf in new:
            staged.append(leaf, rows)
        start = 2 * state.size - state.size.bit_count()
        root = staged.root()
        # One statement for the whole batch (arrays, not a row each): the
        # nodes, the index rows, the new state, and the notification, which
        # is delivered at commit, never for a rolled-back batch.
        conn.execute(
            "WITH n AS (INSERT INTO relay_log_nodes (pos, hash)"
            "   SELECT * FROM unnest(%s::bigint[], %s::bytea[])),"
            " l AS (INSERT INTO relay_log_leaves (leaf, idx)"
            "   SELECT * FROM unnest(%s::bytea[], %s::bigint[])),"
            " s AS (UPDATE relay_log_state SET size = %s, root = %s, last_append = %s"
            "   WHERE id = 0)"
            " SELECT pg_notify(%s, %s)",
            (
                list(range(start, start + len(rows))),
                rows,
                new,
                list(range(state.size, state.size + len(new))),
                staged.size,
                root,
                stamp,
                CHANNEL,
                str(staged.size),
            ),
        )
    return Appended(staged.size, root, placed, staged)
