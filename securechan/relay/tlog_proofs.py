"""Tree maths for the relay's transparency log: inclusion proofs for a
whole batch of leaves at once, and leaf look-ups in its index.

Independent of how the log is run (threads, checkpoints): the functions
read a :class:`~securechan.audit.merkle.NodeSource` (a
:class:`~securechan.audit.tree.TreeStore`, or the PostgreSQL log's tree)
and the leaf index.
"""

from __future__ import annotations

import sqlite3

from securechan.audit import merkle

__all__ = ["inclusion_proofs", "lookup_many"]


def _cover(begin: int, end: int) -> list[merkle.NodeId]:
    """The perfect subtrees covering leaves ``[begin, end)``: most sibling
    ranges are one complete subtree, found without the general walk."""
    width = end - begin
    if width & (width - 1) == 0 and begin % width == 0:
        level = width.bit_length() - 1
        return [(level, begin >> level)]
    return merkle.perfect_cover(begin, end)


def inclusion_proofs(
    tree: merkle.NodeSource, indices: set[int], size: int
) -> dict[int, list[bytes]]:
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


def lookup_many(index: sqlite3.Connection, leaves: set[bytes]) -> dict[bytes, int]:
    """The index of each of ``leaves`` the log holds (a few queries, not one each)."""
    wanted = list(leaves)
    found: dict[bytes, int] = {}
    for start in range(0, len(wanted), 500):  # below SQLite's bound on parameters
        chunk = wanted[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        sql = f"SELECT leaf, idx FROM relay_log_leaves WHERE leaf IN ({marks})"  # noqa: S608
        found.update((leaf, int(idx)) for leaf, idx in index.execute(sql, chunk))
    return found
