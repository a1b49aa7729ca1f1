"""Merkle tree hashing, proofs and proof verification of RFC 6962 / RFC 9162.

Hashing (RFC 9162 §2.1.1, the same as RFC 6962 §2.1), with SHA-256::

    MTH({})      = SHA-256()                       (the empty string)
    leaf hash    = SHA-256(0x00 || leaf data)
    node hash    = SHA-256(0x01 || left || right)
    MTH(D[n])    = node(MTH(D[0:k]), MTH(D[k:n]))  k = largest power of 2 < n

A tree of ``n`` leaves is addressed by *complete* subtrees ``(level, index)``:
the node at ``level`` covering leaves ``[index * 2**level, (index + 1) *
2**level)``. Such a node never changes once the log has grown past it, so a
store keeps exactly those, and anything about an older size (its root, a proof)
is rebuilt from O(log n) of them: a node cut by the tree's right edge is the
fold of the complete subtrees covering its leaves (the "ephemeral" node of
transparency-dev/merkle's ``proof`` package).

Proof generation follows the recursive definitions of RFC 9162 §2.1.3.1
(``PATH``) and §2.1.4.1 (``SUBPROOF``), unrolled into lists of leaf ranges.
Verification follows the iterative algorithms of RFC 9162 §2.1.3.2 and
§2.1.4.2 step by step. Hashes in a proof are ordered leaf side first, as in
RFC 6962. Policy beyond the RFC, as the C2SP tlog-witness text requires: a
consistency proof from size 0 is empty, and one between equal sizes is empty
with equal roots.

Verification raises only :class:`~securechan.errors.ProofFailed`, for any
malformed or wrong input (wrong lengths or types, too many or too few hashes,
``index >= size``, ``size1 > size2``...). Generation raises ``ValueError`` for
impossible requests, which are bugs in the caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import islice
from typing import Protocol

from securechan.errors import ProofFailed
from securechan.primitives import constant_time_equal, sha256, sha256_prefixed

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_PROOF_HASHES",
    "MAX_TREE_SIZE",
    "CompactRange",
    "MemoryTree",
    "NodeId",
    "NodeSource",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "perfect_cover",
    "root_at",
    "root_from_leaf_data",
    "root_from_leaf_hashes",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = sha256(b"")
# Every format we speak carries sizes as u64 (checkpoints, tlog-witness).
MAX_TREE_SIZE = (1 << 64) - 1
# An inclusion proof in a tree of at most 2**64 - 1 leaves has at most 64
# hashes, a consistency proof at most 65. The RFC algorithms reject any wrong
# count; this bound only stops a hostile proof from costing more than that.
MAX_PROOF_HASHES = 65

NodeId = tuple[int, int]
"""A complete subtree ``(level, index)``."""

# SHA-256 states that absorbed the domain-separation byte of RFC 9162 §2.1.1:
# each call gives a fresh copy, so a leaf or node hash is copy, update(s),
# digest, with no concatenation and no hash set up from scratch.
_new_leaf = sha256_prefixed(b"\x00")
_new_node = sha256_prefixed(b"\x01")

# Leaves hashed (and reduced to one subtree root) per batch when a whole log is
# recomputed: small enough for the batch's hashes to stay in cache, large
# enough that the per-batch bookkeeping does not matter.
_BATCH = 1 << 12


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``: the hash of one leaf (RFC 9162 §2.1.1)."""
    h = _new_leaf()
    h.update(data)
    return h.digest()


def _node(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``, lengths unchecked (internal)."""
    h = _new_node()
    h.update(left)
    h.update(right)
    return h.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``: an interior node (RFC 9162 §2.1.1)."""
    if len(left) != HASH_SIZE or len(right) != HASH_SIZE:
        raise ValueError("node children are 32-byte hashes")
    return _node(left, right)


def _fold(hashes: Sequence[bytes]) -> bytes:
    """The MTH of leaves covered by ``hashes``, perfect subtrees largest first.

    Folding right to left gives ``node(P1, node(P2, ... Pk))``, which is the
    MTH split rule applied to a run of decreasing powers of two.
    """
    acc = hashes[-1]
    for left in reversed(hashes[:-1]):
        acc = _node(left, acc)
    return acc


def _level_root(level: list[bytes]) -> bytes:
    """Root of a non-empty list of consecutive nodes of one level.

    Pairs are hashed level by level and an odd last node is carried up as is:
    for the RFC 6962 tree this gives MTH, because a node whose right sibling
    lies beyond the tree's edge is promoted unchanged. This is the inner loop
    of full-log verification, so it is written out: one state copy, two
    updates and a digest per node, no function call or concatenation of ours
    (``bench/bench_tlog.py`` measures it against plain SHA-256).
    """
    new = _new_node
    while len(level) > 1:
        upper: list[bytes] = []
        add = upper.append
        pairs = iter(level)
        for left, right in zip(pairs, pairs, strict=False):  # the odd last one: below
            h = new()
            h.update(left)
            h.update(right)
            add(h.digest())
        if len(level) & 1:
            add(level[-1])
        level = upper
    return level[0]


def _leaf_hashes(batch: Iterable[bytes]) -> list[bytes]:
    """The leaf hash of each leaf's data, written out as :func:`_level_root` is."""
    new = _new_leaf
    out: list[bytes] = []
    add = out.append
    for data in batch:
        h = new()
        h.update(data)
        add(h.digest())
    return out


def root_from_leaf_hashes(hashes: Iterable[bytes]) -> bytes:
    """MTH of a whole tree given every leaf hash, in O(n) (reference and audit)."""
    level = list(hashes)
    if any(len(h) != HASH_SIZE for h in level):
        raise ValueError("leaf hashes are 32 bytes")
    return _level_root(level) if level else EMPTY_ROOT


def root_from_leaf_data(data: Iterable[bytes], *, chunk: int = _BATCH) -> bytes:
    """MTH of a whole log recomputed from every leaf's data, in bounded memory.

    Leaves are hashed in chunks of ``chunk`` (a power of two): each full chunk
    is a perfect subtree whose root stands for it one level up, so the result is
    :func:`root_from_leaf_hashes` of all leaf hashes, without holding them all.
    """
    if chunk < 1 or chunk & (chunk - 1):
        raise ValueError("chunk must be a power of two")
    it = iter(data)
    roots: list[bytes] = []
    while batch := list(islice(it, chunk)):
        roots.append(_level_root(_leaf_hashes(batch)))
    return _level_root(roots) if roots else EMPTY_ROOT


def perfect_cover(begin: int, end: int) -> list[NodeId]:
    """The complete subtrees covering leaves ``[begin, end)``, left to right.

    ``begin`` must be a multiple of a power of two at least ``end - begin`` (as
    for any node of the tree), so the cover is one subtree per set bit of
    ``end - begin``, largest first.
    """
    out: list[NodeId] = []
    while begin < end:
        width = begin & -begin if begin else 1 << ((end - begin).bit_length() - 1)
        while width > end - begin:
            width >>= 1
        level = width.bit_length() - 1
        out.append((level, begin >> level))
        begin += width
    return out


class NodeSource(Protocol):
    """Where complete subtree hashes come from (memory, a database)."""

    def get_nodes(self, ids: Sequence[NodeId], /) -> Sequence[bytes]:
        """The hash of each complete subtree in ``ids``, in the same order."""
        ...


def _range_hashes(source: NodeSource, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    """The MTH of each leaf range, fetching every needed node in one batch."""
    covers = [perfect_cover(b, e) for b, e in ranges]
    ids = [node for cover in covers for node in cover]
    hashes = list(source.get_nodes(ids)) if ids else []
    if len(hashes) != len(ids):
        raise ValueError("the node source returned the wrong number of hashes")
    out: list[bytes] = []
    pos = 0
    for cover in covers:
        out.append(_fold(hashes[pos : pos + len(cover)]))
        pos += len(cover)
    return out


def _check_size(size: int) -> None:
    if type(size) is not int or not 0 <= size <= MAX_TREE_SIZE:
        raise ValueError("a tree size is an integer in 0 .. 2**64 - 1")


def root_at(source: NodeSource, size: int) -> bytes:
    """MTH of the first ``size`` leaves, from O(log size) complete subtrees."""
    _check_size(size)
    if size == 0:
        return EMPTY_ROOT
    return _range_hashes(source, [(0, size)])[0]


def inclusion_proof(source: NodeSource, index: int, size: int) -> list[bytes]:
    """``PATH(index, D[size])`` of RFC 9162 §2.1.3.1, leaf side first.

    Walking up from the leaf, each level contributes the sibling of the node on
    the path, unless that sibling lies wholly beyond the tree's edge (then the
    path node is promoted and the level adds nothing). Raises ``ValueError``
    unless ``0 <= index < size``.
    """
    _check_size(size)
    if type(index) is not int or not 0 <= index < size:
        raise ValueError("an inclusion proof needs 0 <= index < size")
    ranges: list[tuple[int, int]] = []
    level, node = 0, index
    while (1 << level) < size:
        begin = (node ^ 1) << level
        if begin < size:
            ranges.append((begin, min(begin + (1 << level), size)))
        level += 1
        node >>= 1
    return _range_hashes(source, ranges)


def consistency_proof(source: NodeSource, size1: int, size2: int) -> list[bytes]:
    """``PROOF(size1, D[size2])`` of RFC 9162 §2.1.4.1.

    Empty when ``size1`` is 0 or equals ``size2``. Raises ``ValueError`` if
    ``size1 > size2``.
    """
    _check_size(size1)
    _check_size(size2)
    if size1 > size2:
        raise ValueError("a consistency proof needs size1 <= size2")
    if size1 in (0, size2):
        return []
    # SUBPROOF(m, D[start:end], b) appends its own MTH *after* the sub-proof it
    # recurses into, so descending collects hashes outermost first; reverse.
    ranges: list[tuple[int, int]] = []
    m, start, end, whole = size1, 0, size2, True
    while m != end - start:
        k = 1 << ((end - start - 1).bit_length() - 1)  # largest power of 2 < n
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            m -= k
            start += k
            whole = False
    if not whole:
        ranges.append((start, end))
    ranges.reverse()
    return _range_hashes(source, ranges)


class CompactRange:
    """The complete subtrees covering ``[0, size)``: one per set bit of ``size``.

    Enough to append leaves and compute the current root, in O(log n) memory.
    """

    __slots__ = ("_nodes", "_size")

    def __init__(self, size: int = 0, nodes: Sequence[bytes] = ()) -> None:
        _check_size(size)
        if len(nodes) != size.bit_count():
            raise ValueError("a compact range holds one hash per set bit of its size")
        self._size = size
        self._nodes = list(nodes)

    @property
    def size(self) -> int:
        """Number of leaves covered."""
        return self._size

    def copy(self) -> CompactRange:
        """An independent copy (to stage appends before they are committed)."""
        return CompactRange(self._size, self._nodes)

    def append(self, leaf: bytes, out: list[bytes]) -> None:
        """Add one leaf hash; extend ``out`` with every node it completes.

        The new nodes come in the order a store writes them: the leaf hash, then
        each parent it completes, lowest first (one per trailing 1 bit of the old
        size). The same order as Go's ``tlog.StoredHashIndex``.
        """
        out.append(leaf)
        index, acc = self._size, leaf
        while index & 1:
            acc = _node(self._nodes.pop(), acc)
            out.append(acc)
            index >>= 1
        self._nodes.append(acc)
        self._size += 1

    def root(self) -> bytes:
        """MTH of the covered leaves."""
        return _fold(self._nodes) if self._nodes else EMPTY_ROOT


class MemoryTree:
    """An append-only tree held in memory (tests, tools, small logs).

    Implements :class:`NodeSource`; proofs and roots for past sizes work as in
    :class:`~securechan.audit.tree.TreeStore`.
    """

    __slots__ = ("_levels", "_range")

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        self._range = CompactRange()
        for h in leaf_hashes:
            self.append_leaf_hash(h)

    @property
    def size(self) -> int:
        """Number of leaves."""
        return self._range.size

    def append(self, data: bytes) -> int:
        """Append a leaf by its data; return its index."""
        return self.append_leaf_hash(leaf_hash(data))

    def append_leaf_hash(self, leaf: bytes) -> int:
        """Append a leaf by its hash; return its index."""
        if len(leaf) != HASH_SIZE:
            raise ValueError("leaf hashes are 32 bytes")
        index = self._range.size
        created: list[bytes] = []
        self._range.append(leaf, created)
        for level, h in enumerate(created):
            if level == len(self._levels):
                self._levels.append([])
            self._levels[level].append(h)
        return index

    def get_nodes(self, ids: Sequence[NodeId], /) -> list[bytes]:
        """Complete subtree hashes; ``ValueError`` for a node not yet complete."""
        # Negative numbers would index lists from the end: refuse them first.
        if any(level < 0 or index < 0 for level, index in ids):
            raise ValueError("no such complete subtree")
        try:
            return [self._levels[level][index] for level, index in ids]
        except IndexError:
            raise ValueError("no such complete subtree") from None

    def _check(self, size: int) -> None:
        _check_size(size)
        if size > self.size:
            raise ValueError("size is beyond the tree")

    def root(self, size: int | None = None) -> bytes:
        """MTH at ``size`` (default: now)."""
        if size is None:
            return self._range.root()
        self._check(size)
        return root_at(self, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """Inclusion proof of leaf ``index`` in the tree at ``size``."""
        self._check(size)
        return inclusion_proof(self, index, size)

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        """Consistency proof from ``size1`` to ``size2``."""
        self._check(size2)
        return consistency_proof(self, size1, size2)


# --- verification (RFC 9162 §2.1.3.2 and §2.1.4.2) ---------------------------


def _is_hash(value: object) -> bool:
    return type(value) is bytes and len(value) == HASH_SIZE


def _proof_hashes(proof: object) -> list[bytes]:
    """The proof as a list of 32-byte hashes, or :class:`ProofFailed`."""
    if not isinstance(proof, list | tuple) or len(proof) > MAX_PROOF_HASHES:
        raise ProofFailed("malformed proof")
    if not all(_is_hash(h) for h in proof):
        raise ProofFailed("malformed proof")
    return list(proof)


def _is_size(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_TREE_SIZE


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree ``(size, root)``.

    The algorithm of RFC 9162 §2.1.3.2. Raises :class:`ProofFailed` on any
    malformed input or when the proof does not lead to ``root``.
    """
    if not (_is_hash(leaf_hash) and _is_hash(root) and _is_size(size) and _is_size(index)):
        raise ProofFailed("malformed inclusion proof")
    path = _proof_hashes(proof)
    # 1. leaf_index must be below tree_size.
    if index >= size:
        raise ProofFailed("leaf index is beyond the tree")
    # 2.-3.
    fn, sn, r = index, size - 1, leaf_hash
    # 4.
    for p in path:
        # a. A hash left over once sn is 0: the proof is too long.
        if sn == 0:
            raise ProofFailed("inclusion proof does not verify")
        # b.
        if fn & 1 or fn == sn:
            r = _node(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _node(r, p)
        # c.
        fn >>= 1
        sn >>= 1
    # 5. sn must have reached 0 (not too short) and r must be the root.
    if sn != 0 or not constant_time_equal(r, root):
        raise ProofFailed("inclusion proof does not verify")


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Check that the tree ``(size2, root2)`` extends ``(size1, root1)``.

    The algorithm of RFC 9162 §2.1.4.2, for ``0 < size1 < size2``. Also: from
    size 0 the proof must be empty and ``root1`` the empty-tree hash; between
    equal sizes the proof must be empty and the roots equal. Raises
    :class:`ProofFailed` on any malformed input or failed check.
    """
    if not (_is_size(size1) and _is_size(size2) and _is_hash(root1) and _is_hash(root2)):
        raise ProofFailed("malformed consistency proof")
    path = _proof_hashes(proof)
    if size1 > size2:
        raise ProofFailed("the first tree is larger than the second")
    if size1 == 0 or size1 == size2:
        # A size-0 tree has the empty-string hash as its root (RFC 9162 §2.1.1),
        # so a different root1 is a forged first tree even with nothing to prove.
        empty_ok = size1 != 0 or constant_time_equal(root1, EMPTY_ROOT)
        same_ok = size1 != size2 or constant_time_equal(root1, root2)
        if path or not empty_ok or not same_ok:
            raise ProofFailed("consistency proof does not verify")
        return
    # 1.
    if not path:
        raise ProofFailed("consistency proof does not verify")
    # 2. A power-of-two first tree is a complete subtree: its root is the seed.
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    # 3.-4.
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5.
    fr = sr = path[0]
    # 6.
    for c in path[1:]:
        # a.
        if sn == 0:
            raise ProofFailed("consistency proof does not verify")
        # b.
        if fn & 1 or fn == sn:
            fr = _node(c, fr)
            sr = _node(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = _node(sr, c)
        # c.
        fn >>= 1
        sn >>= 1
    # 7.
    ok1 = constant_time_equal(fr, root1)
    ok2 = constant_time_equal(sr, root2)
    if not (ok1 and ok2 and sn == 0):
        raise ProofFailed("consistency proof does not verify")
