"""RFC 6962 / RFC 9162 Merkle trees: published vectors, every proof up to 64
leaves against a reference written from the RFC, systematic mutations of every
proof, and the SQLite :class:`TreeStore` against the reference.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import sqlite3
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securechan.audit import merkle
from securechan.audit.merkle import (
    EMPTY_ROOT,
    MemoryTree,
    leaf_hash,
    node_hash,
    root_from_leaf_data,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)
from securechan.audit.tree import TreeStore, storage_index
from securechan.errors import ProofFailed, StorageError

# --- published vectors --------------------------------------------------------
# Source: transparency-dev/merkle, testonly/constants.go (LeafInputs,
# NodeHashes, RootHashes) and proof/verify_test.go (inclusionProofs,
# consistencyProofs, roots), the RFC 6962 reference tree of the Certificate
# Transparency test suites (certificate-transparency C++ and Go merkletree
# tests). In verify_test.go a leaf is numbered from 1; here from 0.

LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]

ROOTS = [
    bytes.fromhex(h)
    for h in (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]

NODE_HASHES = [
    [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ],
    [
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    ],
    [
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    ["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
]

# (leaf index, tree size, proof)
INCLUSION = [
    (0, 8, ["96a296d2", "5f083f0a", "6b47aaf2"]),
    (5, 8, ["bc1a0643", "ca854ea1", "d37ee418"]),
    (2, 3, ["fac54203"]),
    (1, 5, ["6e340b9c", "5f083f0a", "bc1a0643"]),
]
# (size1, size2, proof)
CONSISTENCY = [
    (1, 1, []),
    (1, 8, ["96a296d2", "5f083f0a", "6b47aaf2"]),
    (6, 8, ["0ebc5d34", "ca854ea1", "d37ee418"]),
    (2, 5, ["5f083f0a", "bc1a0643"]),
    (6, 7, ["0ebc5d34", "b08693ec", "d37ee418"]),
]
# The proofs above, in full (verify_test.go), indexed by their 8-hex prefix.
FULL = {
    h[:8]: bytes.fromhex(h)
    for h in (
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
    )
}
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def _fails(verify: Callable[..., None], *args: object) -> bool:
    """Whether ``verify(*args)`` raises ProofFailed (and nothing else)."""
    try:
        verify(*args)
    except ProofFailed:
        return True
    return False


def _full(prefixes: list[str]) -> list[bytes]:
    return [FULL[p] for p in prefixes]


def _reference_tree() -> MemoryTree:
    return MemoryTree(leaf_hash(d) for d in LEAVES)


# --- a reference written from the RFC's recursive definitions ------------------
# RFC 6962 §2.1 (MTH), §2.1.1 (PATH), §2.1.2 (PROOF / SUBPROOF), over the leaf
# hashes of one fixed list of leaves; hashlib only, nothing from securechan.

REF_LEAVES = [hashlib.sha256(b"\x00" + i.to_bytes(2, "big")).digest() for i in range(130)]


def _h(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _k(n: int) -> int:
    """The largest power of two smaller than n."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


@cache
def ref_mth(lo: int, hi: int) -> bytes:
    n = hi - lo
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return REF_LEAVES[lo]
    k = _k(n)
    return _h(ref_mth(lo, lo + k), ref_mth(lo + k, hi))


def ref_path(m: int, lo: int, hi: int) -> list[bytes]:
    n = hi - lo
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*ref_path(m, lo, lo + k), ref_mth(lo + k, hi)]
    return [*ref_path(m - k, lo + k, hi), ref_mth(lo, lo + k)]


def ref_subproof(m: int, lo: int, hi: int, b: bool) -> list[bytes]:
    n = hi - lo
    if m == n:
        return [] if b else [ref_mth(lo, hi)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, lo, lo + k, b), ref_mth(lo + k, hi)]
    return [*ref_subproof(m - k, lo + k, hi, False), ref_mth(lo, lo + k)]


@pytest.fixture(scope="module")
def ref_tree() -> MemoryTree:
    return MemoryTree(REF_LEAVES)


# --- vectors ------------------------------------------------------------------


def test_reference_roots_for_every_size() -> None:
    tree = _reference_tree()
    for size, root in enumerate(ROOTS):
        hashes = [leaf_hash(d) for d in LEAVES[:size]]
        assert root_from_leaf_hashes(hashes) == root
        assert root_from_leaf_data(LEAVES[:size]) == root
        assert root_from_leaf_data(LEAVES[:size], chunk=2) == root
        assert tree.root(size) == root
    assert tree.root() == ROOTS[8]
    assert ROOTS[0] == EMPTY_ROOT


def test_reference_node_hashes() -> None:
    tree = _reference_tree()
    for level, row in enumerate(NODE_HASHES):
        got = tree.get_nodes([(level, i) for i in range(len(row))])
        assert [h.hex() for h in got] == row
    assert node_hash(bytes.fromhex(NODE_HASHES[0][0]), bytes.fromhex(NODE_HASHES[0][1])) == (
        bytes.fromhex(NODE_HASHES[1][0])
    )


def _inclusion_probes(
    index: int, size: int, proof: list[bytes], root: bytes, leaf: bytes
) -> list[tuple[str, bytes, int, int, list[bytes], bytes]]:
    """Go's corruptInclusionProof, plus every removed and every inserted hash."""
    probes = [
        ("index - 1", leaf, index - 1, size, proof, root),
        ("index + 1", leaf, index + 1, size, proof, root),
        ("index ^ 2", leaf, index ^ 2, size, proof, root),
        ("size * 2", leaf, index, size * 2, proof, root),
        ("size // 2", leaf, index, size // 2, proof, root),
        ("wrong leaf", b"WrongLeaf", index, size, proof, root),
        ("empty root", leaf, index, size, proof, EMPTY_ROOT),
        ("random root", leaf, index, size, proof, SOME_HASH),
        ("trailing garbage", leaf, index, size, [*proof, b""], root),
        ("trailing root", leaf, index, size, [*proof, root], root),
        ("preceding garbage", leaf, index, size, [b"", *proof], root),
        ("preceding root", leaf, index, size, [root, *proof], root),
    ]
    for i in range(len(proof)):
        flipped = bytes([proof[i][0] ^ 8]) + proof[i][1:]
        probes.append(
            (f"bit flip {i}", leaf, index, size, [*proof[:i], flipped, *proof[i + 1 :]], root)
        )
        probes.append((f"removed {i}", leaf, index, size, proof[:i] + proof[i + 1 :], root))
    for i in range(len(proof) + 1):
        probes.append(
            (f"inserted {i}", leaf, index, size, [*proof[:i], SOME_HASH, *proof[i:]], root)
        )
    return probes


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_published_inclusion_proofs(index: int, size: int, proof: list[str]) -> None:
    tree = _reference_tree()
    want = _full(proof)
    assert tree.inclusion_proof(index, size) == want
    leaf = leaf_hash(LEAVES[index])
    verify_inclusion(leaf, index, size, want, ROOTS[size])
    for desc, p_leaf, p_index, p_size, p_proof, p_root in _inclusion_probes(
        index, size, want, ROOTS[size], leaf
    ):
        assert _fails(verify_inclusion, p_leaf, p_index, p_size, p_proof, p_root), desc


def _consistency_probes(
    size1: int, size2: int, proof: list[bytes], root1: bytes, root2: bytes
) -> list[tuple[str, int, int, list[bytes], bytes, bytes]]:
    """Go's corruptConsistencyProof, plus every removed and every inserted hash."""
    probes = [
        ("size1 - 1", size1 - 1, size2, proof, root1, root2),
        ("size1 + 1", size1 + 1, size2, proof, root1, root2),
        ("size1 ^ 2", size1 ^ 2, size2, proof, root1, root2),
        ("size2 * 2", size1, size2 * 2, proof, root1, root2),
        ("size2 // 2", size1, size2 // 2, proof, root1, root2),
        ("wrong root1", size1, size2, proof, b"WrongRoot", root2),
        ("wrong root2", size1, size2, proof, root1, b"WrongRoot"),
        ("swapped roots", size1, size2, proof, root2, root1),
        ("empty proof", size1, size2, [], root1, root2),
        ("trailing garbage", size1, size2, [*proof, b""], root1, root2),
        ("trailing root1", size1, size2, [*proof, root1], root1, root2),
        ("trailing root2", size1, size2, [*proof, root2], root1, root2),
        ("preceding garbage", size1, size2, [b"", *proof], root1, root2),
        ("preceding root1", size1, size2, [root1, *proof], root1, root2),
        ("preceding root2", size1, size2, [root2, *proof], root1, root2),
        ("preceding proof[0]", size1, size2, [proof[0], *proof], root1, root2),
    ]
    for i in range(len(proof)):
        flipped = bytes([proof[i][0] ^ 16]) + proof[i][1:]
        probes.append(
            (f"bit flip {i}", size1, size2, [*proof[:i], flipped, *proof[i + 1 :]], root1, root2)
        )
        probes.append((f"removed {i}", size1, size2, proof[:i] + proof[i + 1 :], root1, root2))
    for i in range(len(proof) + 1):
        probes.append(
            (f"inserted {i}", size1, size2, [*proof[:i], SOME_HASH, *proof[i:]], root1, root2)
        )
    return probes


@pytest.mark.parametrize(("size1", "size2", "proof"), CONSISTENCY)
def test_published_consistency_proofs(size1: int, size2: int, proof: list[str]) -> None:
    tree = _reference_tree()
    want = _full(proof)
    assert tree.consistency_proof(size1, size2) == want
    verify_consistency(size1, size2, want, ROOTS[size1], ROOTS[size2])
    if not want:
        return
    for desc, s1, s2, p, r1, r2 in _consistency_probes(
        size1, size2, want, ROOTS[size1], ROOTS[size2]
    ):
        assert _fails(verify_consistency, s1, s2, p, r1, r2), desc


def test_edge_cases_from_the_go_suite() -> None:
    # TestVerifyInclusionSingleEntry: a one-leaf tree's root is its leaf hash.
    h = leaf_hash(b"data")
    verify_inclusion(h, 0, 1, [], h)
    for leaf, root in ((h, b""), (b"", h), (b"", b"")):
        with pytest.raises(ProofFailed):
            verify_inclusion(leaf, 0, 1, [], root)
    # TestVerifyInclusion: no leaf in an empty tree, none at or beyond the size.
    for index, size in ((0, 0), (0, 1), (1, 0), (2, 1)):
        with pytest.raises(ProofFailed):
            verify_inclusion(SOME_HASH, index, size, [], EMPTY_ROOT)
    # TestVerifyConsistency, with our stricter rule that a size-0 root is empty.
    verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    verify_consistency(0, 1, [], EMPTY_ROOT, ROOTS[1])
    verify_consistency(1, 1, [], ROOTS[1], ROOTS[1])
    bad = [
        (0, 0, [], SOME_HASH, SOME_HASH),  # a size-0 tree with a non-empty root
        (0, 1, [], SOME_HASH, ROOTS[1]),
        (1, 1, [], ROOTS[1], ROOTS[2]),  # same size, different roots
        (1, 0, [], ROOTS[1], EMPTY_ROOT),  # time travel to the past
        (2, 1, [], ROOTS[2], ROOTS[1]),
        (1, 2, [], ROOTS[1], ROOTS[2]),  # empty proof
        (0, 0, [EMPTY_ROOT], EMPTY_ROOT, EMPTY_ROOT),  # equal roots, proof not empty
        (0, 1, [EMPTY_ROOT], EMPTY_ROOT, ROOTS[1]),
        (1, 1, [EMPTY_ROOT], ROOTS[1], ROOTS[1]),
    ]
    for args in bad:
        with pytest.raises(ProofFailed):
            verify_consistency(*args)


# --- every proof up to 64 leaves -------------------------------------------------


def _flip(proof: list[bytes], i: int, bit: int) -> list[bytes]:
    h = bytearray(proof[i])
    h[bit // 8] ^= 1 << (bit % 8)
    return [*proof[:i], bytes(h), *proof[i + 1 :]]


def _mutations(proof: list[bytes]) -> list[list[bytes]]:
    """A flipped bit in every hash, every hash removed, one inserted anywhere."""
    out = []
    for i in range(len(proof)):
        out.append(_flip(proof, i, 0))
        out.append(_flip(proof, i, 255))
        out.append(proof[:i] + proof[i + 1 :])
    for i in range(len(proof) + 1):
        out.append([*proof[:i], SOME_HASH, *proof[i:]])
        out.append([*proof[:i], proof[i - 1] if i else REF_LEAVES[0], *proof[i:]])
    return out


def test_every_inclusion_proof_up_to_64(ref_tree: MemoryTree) -> None:
    for size in range(1, 65):
        root = ref_mth(0, size)
        assert ref_tree.root(size) == root
        for index in range(size):
            proof = ref_tree.inclusion_proof(index, size)
            assert proof == ref_path(index, 0, size)
            leaf = REF_LEAVES[index]
            verify_inclusion(leaf, index, size, proof, root)
            for bad in _mutations(proof):
                with pytest.raises(ProofFailed):
                    verify_inclusion(leaf, index, size, bad, root)
            with pytest.raises(ProofFailed):
                verify_inclusion(REF_LEAVES[index + 1], index, size, proof, root)
            # Another index never verifies. Another size does not either, with
            # that size's real root (the checkpoint signs a size with its root).
            for other in {index - 1, index + 1, index ^ 1, index ^ 2, size, size + 1}:
                if other != index:
                    with pytest.raises(ProofFailed):
                        verify_inclusion(leaf, other, size, proof, root)
            for other in {size - 1, size + 1, size * 2, size // 2}:
                if other != size and other > index:
                    with pytest.raises(ProofFailed):
                        verify_inclusion(leaf, index, other, proof, ref_mth(0, other))


def test_every_consistency_proof_up_to_64(ref_tree: MemoryTree) -> None:
    for size2 in range(0, 65):
        root2 = ref_mth(0, size2)
        for size1 in range(0, size2 + 1):
            root1 = ref_mth(0, size1)
            proof = ref_tree.consistency_proof(size1, size2)
            if 0 < size1 < size2:
                assert proof == ref_subproof(size1, 0, size2, True)
            else:
                assert proof == []
            verify_consistency(size1, size2, proof, root1, root2)
            mutations = _mutations(proof) if proof else [[SOME_HASH], [root1]]
            for bad in mutations:
                with pytest.raises(ProofFailed):
                    verify_consistency(size1, size2, bad, root1, root2)
            if size1 != size2:
                with pytest.raises(ProofFailed):
                    verify_consistency(size1, size2, proof, root2, root1)
            if size1:  # from size 0 nothing constrains the second root
                with pytest.raises(ProofFailed):
                    verify_consistency(size1, size2, proof, root1, SOME_HASH)
            for s1, s2 in {
                (size1 - 1, size2),
                (size1 + 1, size2),
                (size1, size2 + 1),
                (size1, size2 - 1),
                (size1, 2 * size2),
            }:
                # With real roots, (0, n) and (n, n) are true whatever the proof
                # would be; any other changed size must fail.
                if (s1, s2) != (size1, size2) and s1 > 0 and s1 != s2 and s2 >= 0:
                    with pytest.raises(ProofFailed):
                        verify_consistency(s1, s2, proof, ref_mth(0, s1), ref_mth(0, s2))


def test_a_proof_alone_does_not_bind_the_size() -> None:
    """Inherent to RFC 9162: (index 0, size 3) and (index 0, size 4) hash the same
    way, so with size 3's root a size-4 claim verifies. Only a root that really
    belongs to the claimed size (a signed checkpoint) binds the size."""
    proof = ref_path(0, 0, 3)
    verify_inclusion(REF_LEAVES[0], 0, 4, proof, ref_mth(0, 3))
    with pytest.raises(ProofFailed):
        verify_inclusion(REF_LEAVES[0], 0, 4, proof, ref_mth(0, 4))


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(1, 64),
    data=st.data(),
)
def test_any_flipped_bit_fails(ref_tree: MemoryTree, size: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, size - 1))
    proof = ref_tree.inclusion_proof(index, size)
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        with pytest.raises(ProofFailed):
            verify_inclusion(REF_LEAVES[index], index, size, _flip(proof, i, bit), ref_mth(0, size))
    size1 = data.draw(st.integers(1, size))
    proof = ref_tree.consistency_proof(size1, size)
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        with pytest.raises(ProofFailed):
            verify_consistency(
                size1, size, _flip(proof, i, bit), ref_mth(0, size1), ref_mth(0, size)
            )


_junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.binary(max_size=40),
    st.text(max_size=5),
    st.lists(st.binary(min_size=31, max_size=33), max_size=3),
)
_proofs = st.one_of(
    _junk,
    st.lists(st.binary(min_size=32, max_size=32), max_size=70),
    st.lists(st.one_of(st.binary(max_size=40), st.none(), st.text(max_size=3)), max_size=5),
    st.tuples(st.binary(min_size=32, max_size=32)),
)
_sizes = st.one_of(st.integers(-3, 70), st.integers(2**63, 2**65), _junk)
_hashes = st.one_of(
    st.binary(min_size=32, max_size=32), st.sampled_from([EMPTY_ROOT, *ROOTS]), _junk
)


@settings(max_examples=500, deadline=None)
@given(leaf=_hashes, index=_sizes, size=_sizes, proof=_proofs, root=_hashes)
def test_malformed_inclusion_input_raises_only_proof_failed(
    leaf: object, index: object, size: object, proof: object, root: object
) -> None:
    with contextlib.suppress(ProofFailed):
        verify_inclusion(leaf, index, size, proof, root)  # type: ignore[arg-type]


@settings(max_examples=500, deadline=None)
@given(size1=_sizes, size2=_sizes, proof=_proofs, root1=_hashes, root2=_hashes)
def test_malformed_consistency_input_raises_only_proof_failed(
    size1: object, size2: object, proof: object, root1: object, root2: object
) -> None:
    with contextlib.suppress(ProofFailed):
        verify_consistency(size1, size2, proof, root1, root2)  # type: ignore[arg-type]


def test_huge_sizes_and_too_many_hashes() -> None:
    top = merkle.MAX_TREE_SIZE
    with pytest.raises(ProofFailed):
        verify_inclusion(SOME_HASH, 0, top + 1, [SOME_HASH] * 64, SOME_HASH)
    with pytest.raises(ProofFailed):
        verify_inclusion(SOME_HASH, 0, top, [SOME_HASH] * 66, SOME_HASH)
    with pytest.raises(ProofFailed):
        verify_consistency(1, top, [SOME_HASH] * 66, SOME_HASH, SOME_HASH)
    # A well-formed but wrong 64-hash proof in the largest tree runs and fails.
    with pytest.raises(ProofFailed):
        verify_inclusion(SOME_HASH, top - 1, top, [SOME_HASH] * 64, SOME_HASH)


def test_generation_refuses_impossible_requests() -> None:
    tree = _reference_tree()
    for index, size in ((8, 8), (0, 0), (0, 9), (-1, 4)):
        with pytest.raises(ValueError, match=r"size|index"):
            tree.inclusion_proof(index, size)
    for size1, size2 in ((5, 4), (0, 9)):
        with pytest.raises(ValueError, match="size"):
            tree.consistency_proof(size1, size2)
    with pytest.raises(ValueError, match="32 bytes"):
        root_from_leaf_hashes([b"short"])
    with pytest.raises(ValueError, match="power of two"):
        root_from_leaf_data([], chunk=3)


# --- full-log recomputation (the fast path of root_from_leaf_data) -------------


def _mth_of_data(data: list[bytes]) -> bytes:
    """RFC 6962 §2.1 MTH, recursively, with hashlib only (no securechan code)."""
    if not data:
        return hashlib.sha256(b"").digest()
    if len(data) == 1:
        return hashlib.sha256(b"\x00" + data[0]).digest()
    k = _k(len(data))
    return _h(_mth_of_data(data[:k]), _mth_of_data(data[k:]))


def test_root_from_leaf_data_matches_the_rfc_across_batch_edges() -> None:
    rng = random.Random(6962)  # noqa: S311 - test data, not keys
    data = [rng.randbytes(rng.choice((0, 1, 31, 32, 33, 64, 65, 200))) for _ in range(8200)]
    # Every size up to 70 with batches of 1 to 64 leaves (odd carries at every level)...
    for size in range(71):
        want = _mth_of_data(data[:size])
        for chunk in (1, 2, 4, 8, 64):
            assert root_from_leaf_data(data[:size], chunk=chunk) == want, (size, chunk)
        assert root_from_leaf_data(iter(data[:size])) == want
        assert root_from_leaf_hashes([leaf_hash(d) for d in data[:size]]) == want
    # ... and around the default batch of 4096 leaves.
    for size in (4095, 4096, 4097, 8191, 8192, 8193, 8200):
        assert root_from_leaf_data(data[:size]) == _mth_of_data(data[:size]), size


def test_sha256_prefixed_copies_are_independent() -> None:
    from securechan.primitives import sha256_prefixed

    make = sha256_prefixed(b"\x01")
    a, b = make(), make()
    a.update(b"left")
    b.update(b"other")
    a.update(b"right")
    assert a.digest() == hashlib.sha256(b"\x01leftright").digest()
    assert b.digest() == hashlib.sha256(b"\x01other").digest()
    assert make().digest() == hashlib.sha256(b"\x01").digest()
    assert node_hash(bytes(32), bytes(range(32))) == _h(bytes(32), bytes(range(32)))
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()


# --- the SQLite store ---------------------------------------------------------


def _check_against_reference(store: TreeStore, rng: random.Random, samples: int = 40) -> None:
    size = store.size
    assert store.root() == ref_mth(0, size)
    for _ in range(samples):
        s2 = rng.randint(0, size)
        assert store.root(s2) == ref_mth(0, s2)
        if s2:
            index = rng.randrange(s2)
            proof = store.inclusion_proof(index, s2)
            assert proof == ref_path(index, 0, s2)
            verify_inclusion(store.leaf_hash(index), index, s2, proof, ref_mth(0, s2))
        s1 = rng.randint(0, s2)
        proof = store.consistency_proof(s1, s2)
        assert proof == (ref_subproof(s1, 0, s2, True) if 0 < s1 < s2 else [])
        verify_consistency(s1, s2, proof, ref_mth(0, s1), ref_mth(0, s2))


def test_store_matches_reference_for_random_sizes(tmp_path: Path) -> None:
    rng = random.Random(5)  # noqa: S311 (reproducible test sizes)
    with TreeStore(tmp_path / "tree.db") as store:
        assert store.size == 0
        assert store.root() == EMPTY_ROOT
        while store.size < len(REF_LEAVES):
            n = min(rng.randint(1, 9), len(REF_LEAVES) - store.size)
            start = store.size
            if n == 1:
                assert store.append_leaf_hash(REF_LEAVES[start]) == start
            else:
                got = store.append_many_leaf_hashes(REF_LEAVES[start : start + n])
                assert got == range(start, start + n)
            _check_against_reference(store, rng, samples=8)
        _check_against_reference(store, rng, samples=200)


def test_store_layout_is_append_order(tmp_path: Path) -> None:
    path = tmp_path / "tree.db"
    tree = MemoryTree()
    with TreeStore(path) as store:
        for i in range(37):
            store.append(bytes([i]))
            tree.append(bytes([i]))
    db = sqlite3.connect(path)
    rows = db.execute("SELECT pos, hash FROM nodes ORDER BY pos").fetchall()
    db.close()
    assert [pos for pos, _ in rows] == list(range(len(rows)))
    expected: dict[int, bytes] = {}
    for level in range(6):
        for index in range(37 >> level):
            expected[storage_index(level, index)] = tree.get_nodes([(level, index)])[0]
    assert dict(rows) == expected


def test_reopening_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "tree.db"
    rng = random.Random(7)  # noqa: S311 (reproducible test sizes)
    with TreeStore(path) as store:
        store.append_many_leaf_hashes(REF_LEAVES[:77])
        proofs = {(i, s): store.inclusion_proof(i, s) for s in (1, 20, 77) for i in (0, s - 1)}
    with TreeStore(path, synchronous="NORMAL") as store:
        assert store.size == 77
        for (i, s), proof in proofs.items():
            assert store.inclusion_proof(i, s) == proof
        _check_against_reference(store, rng)
        store.append_many_leaf_hashes(REF_LEAVES[77:])
        _check_against_reference(store, rng)


def test_append_many_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "tree.db"
    with TreeStore(path) as store:
        store.append_many_leaf_hashes(REF_LEAVES[:10])
        before = store.root()
        # Make SQLite itself fail in the middle of the next batch's inserts.
        db = sqlite3.connect(path)
        fail_at = int(storage_index(0, 14))  # DDL takes no bound parameters
        db.execute(
            f"CREATE TRIGGER boom BEFORE INSERT ON nodes WHEN NEW.pos = {fail_at} "
            "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )
        db.commit()
        with pytest.raises(StorageError):
            store.append_many_leaf_hashes(REF_LEAVES[10:20])
        assert store.size == 10
        assert store.root() == before
        (rows,) = db.execute("SELECT count(*) FROM nodes").fetchone()
        assert rows == storage_index(0, 10)  # nothing of the failed batch
        # A malformed leaf anywhere in a batch refuses the whole batch.
        with pytest.raises(ValueError, match="32 bytes"):
            store.append_many_leaf_hashes([*REF_LEAVES[10:15], b"short"])
        assert store.size == 10
        db.execute("DROP TRIGGER boom")
        db.commit()
        db.close()
        assert store.append_many_leaf_hashes(REF_LEAVES[10:20]) == range(10, 20)
        assert store.root() == ref_mth(0, 20)


def test_two_writers_share_a_file(tmp_path: Path) -> None:
    path = tmp_path / "tree.db"
    with TreeStore(path) as a, TreeStore(path) as b:
        for i in range(0, 40, 4):
            a.append_many_leaf_hashes(REF_LEAVES[i : i + 2])
            b.append_many_leaf_hashes(REF_LEAVES[i + 2 : i + 4])
        assert a.size == b.size == 40
        assert a.root() == b.root() == ref_mth(0, 40)


def test_store_refuses_bad_requests_and_damage(tmp_path: Path) -> None:
    path = tmp_path / "tree.db"
    with pytest.raises(ValueError, match="synchronous"):
        TreeStore(path, synchronous="OFF")
    with TreeStore(path) as store:
        store.append_many_leaf_hashes(REF_LEAVES[:8])
        with pytest.raises(ValueError, match="size"):
            store.root(9)
        with pytest.raises(ValueError, match="size"):
            store.inclusion_proof(0, 9)
        with pytest.raises(ValueError, match="index"):
            store.inclusion_proof(8, 8)
        with pytest.raises(ValueError, match="size"):
            store.consistency_proof(3, 9)
        with pytest.raises(ValueError, match="leaf"):
            store.leaf_hash(8)
        with pytest.raises(ValueError, match="32 bytes"):
            store.append_leaf_hash(b"\x00" * 31)
    db = sqlite3.connect(path)
    db.execute("DELETE FROM nodes WHERE pos = ?", (storage_index(0, 5),))
    db.commit()
    with TreeStore(path) as store, pytest.raises(StorageError, match="missing"):
        store.inclusion_proof(4, 8)
    db.execute("PRAGMA user_version = 3")
    db.commit()
    db.close()
    with pytest.raises(StorageError, match="newer"):
        TreeStore(path)
