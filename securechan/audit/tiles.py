"""The relay's log as C2SP tlog-tiles (https://c2sp.org/tlog-tiles): tile
paths, tile contents and proofs computed from tiles. Sans-I/O: no files, no
network; the relay serves and exports tiles with it
(:mod:`securechan.relay.tlog_tiles`), a client or monitor verifies from them
(:mod:`securechan.client.tiles`).

**Tiles.** Tile ``(L, N)`` holds the Merkle Tree Hashes of the 256 subtrees
of ``256**L`` leaves starting at leaf ``(N * 256 + i) * 256**L``: in this
package's node numbering, nodes ``(8 * L, N * 256 + i)`` for ``i`` in
``0 .. 255``. A tree of size ``s`` has a partial tile of width
``floor(s / 256**L) mod 256`` at each level where that is not 0 (never an
empty one). Any complete subtree ``(level, index)`` of the tree lies in one
tile: level ``8 * L + r`` (``0 <= r < 8``) is the hash of ``2**r`` adjacent
hashes of tile level ``L``, so :class:`TileHashes` computes every node the
RFC 9162 proofs of :mod:`securechan.audit.merkle` need from tiles alone.

**Entries.** The log's entry for a leaf is its leaf data,
``"securechan/v1/envelope" || SHA-256(envelope)`` (54 bytes): what a
receipt already proves, never the envelope. An entry bundle is those
entries, each behind its length as a big-endian uint16; each hashes
(``SHA-256(0x00 || entry)``, RFC 6962 §2.1) to the same place of the level
0 tile.

**Paths.** ``tile/<L>/<N>[.p/<W>]`` and ``tile/entries/<N>[.p/<W>]``: ``L``
is 0..63 and ``W`` 1..255 in decimal without leading zeroes; ``N`` in
3-digit groups, every group but the last prefixed with ``x``
(1234067 -> ``x001/x234/067``). :func:`parse_path` accepts exactly these
and nothing else (each group 3 digits, so the work is bounded by the
path's length, itself bounded by :data:`MAX_PATH`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from securechan.audit import merkle
from securechan.audit.merkle import HASH_SIZE, NodeId
from securechan.audit.receipt import ENVELOPE_LEAF_CONTEXT
from securechan.errors import MalformedInput, ProofFailed

__all__ = [
    "ENTRY_SIZE",
    "MAX_PATH",
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "TileHashes",
    "TileId",
    "decode_bundle",
    "encode_bundle",
    "encode_index",
    "parse_path",
    "tile_for_node",
    "tiles_for_proofs",
    "tiles_of_size",
    "verify_bundle",
    "verify_tiles",
]

TILE_HEIGHT: Final = 8
TILE_WIDTH: Final = 1 << TILE_HEIGHT
MAX_LEVEL: Final = 63
ENTRY_SIZE: Final = len(ENVELOPE_LEAF_CONTEXT) + 32
MAX_PATH: Final = 160
"""Longer than any valid tile path (a 64-bit index is 7 groups)."""

_INDEX_GROUPS: Final = 7  # 2**64 has 20 digits: 7 groups of 3
_GROUP = re.compile(r"x[0-9]{3}")
_LAST = re.compile(r"[0-9]{3}")
_NUMBER = re.compile(r"0|[1-9][0-9]{0,2}")


@dataclass(frozen=True, slots=True)
class TileId:
    """One tile: ``level`` 0..63, or ``None`` for an entry bundle; ``index``;
    ``width`` 1..256 (256: a full tile)."""

    level: int | None
    index: int
    width: int = TILE_WIDTH

    def __post_init__(self) -> None:
        if self.level is not None and (type(self.level) is not int or not 0 <= self.level <= 63):
            raise ValueError("a tile level is 0 .. 63")
        if type(self.index) is not int or not 0 <= self.index < 1 << 64:
            raise ValueError("a tile index is 0 .. 2**64 - 1")
        if type(self.width) is not int or not 1 <= self.width <= TILE_WIDTH:
            raise ValueError("a tile width is 1 .. 256")

    @property
    def full(self) -> bool:
        return self.width == TILE_WIDTH

    @property
    def path(self) -> str:
        """The tile's path under the log's prefix (no leading slash)."""
        level = "entries" if self.level is None else str(self.level)
        tail = "" if self.full else f".p/{self.width}"
        return f"tile/{level}/{encode_index(self.index)}{tail}"

    @property
    def hash_level(self) -> int:
        """The level of the tile's hashes in the tree (0 for entries)."""
        return 0 if self.level is None else TILE_HEIGHT * self.level

    def nodes(self) -> list[NodeId]:
        """The complete subtrees whose hashes the tile holds, in order."""
        first = self.index * TILE_WIDTH
        return [(self.hash_level, first + i) for i in range(self.width)]

    def leaves_needed(self) -> int:
        """The smallest tree size that has this tile (at this width)."""
        return (self.index * TILE_WIDTH + self.width) << self.hash_level


def encode_index(index: int) -> str:
    """``N`` in 3-digit groups, all but the last prefixed with ``x``."""
    if type(index) is not int or index < 0:
        raise ValueError("a tile index is a non-negative integer")
    groups = []
    while True:
        groups.append(f"{index % 1000:03d}")
        index //= 1000
        if index == 0:
            break
    groups.reverse()
    return "/".join(["x" + g for g in groups[:-1]] + groups[-1:])


def parse_path(path: str) -> TileId:
    """The tile at ``path`` (``tile/...``, no leading slash, no query).

    Strict: exactly the spelling :attr:`TileId.path` produces; anything
    else raises ``ValueError``. Linear in the path, which must be at most
    :data:`MAX_PATH` characters.
    """
    if not isinstance(path, str) or len(path) > MAX_PATH or not path.isascii():
        raise ValueError("not a tile path")
    parts = path.split("/")
    if len(parts) < 3 or parts[0] != "tile":
        raise ValueError("not a tile path")
    if parts[1] == "entries":
        level: int | None = None
    elif _NUMBER.fullmatch(parts[1]) and int(parts[1]) <= MAX_LEVEL:
        level = int(parts[1])
    else:
        raise ValueError("a tile level is 0 .. 63, or entries")
    rest = parts[2:]
    width = TILE_WIDTH
    if len(rest) >= 2 and rest[-2].endswith(".p"):
        if not _NUMBER.fullmatch(rest[-1]) or not 1 <= int(rest[-1]) < TILE_WIDTH:
            raise ValueError("a partial tile's width is 1 .. 255")
        width = int(rest[-1])
        rest = [*rest[:-2], rest[-2][:-2]]
    if not 1 <= len(rest) <= _INDEX_GROUPS:
        raise ValueError("a tile index is 1 .. 7 groups of 3 digits")
    if not all(_GROUP.fullmatch(g) for g in rest[:-1]) or not _LAST.fullmatch(rest[-1]):
        raise ValueError("a tile index is groups of 3 digits, all but the last after an x")
    if len(rest) > 1 and rest[0] == "x000":
        raise ValueError("a tile index has no leading zero group")
    index = int("".join(g.lstrip("x") for g in rest))
    if index >= 1 << 64:
        raise ValueError("a tile index is 0 .. 2**64 - 1")
    return TileId(level, index, width)


def tiles_of_size(size: int, *, entries: bool = True) -> Iterator[TileId]:
    """Every tile (and entry bundle) of a tree of ``size``: the full ones
    and, where the tree's edge cuts a tile, the partial one of its width."""
    if type(size) is not int or size < 0:
        raise ValueError("a tree size is a non-negative integer")
    level = 0
    while (count := size >> (TILE_HEIGHT * level)) > 0:
        kinds: list[int | None] = [level, None] if entries and level == 0 else [level]
        for kind in kinds:
            for n in range(count // TILE_WIDTH):
                yield TileId(kind, n)
            if count % TILE_WIDTH:
                yield TileId(kind, count // TILE_WIDTH, count % TILE_WIDTH)
        level += 1


def tile_for_node(node: NodeId, size: int) -> TileId:
    """The tile of a tree of ``size`` holding what complete subtree ``node``
    is hashed from (full if the tree has it full, else the partial one)."""
    level, index = node
    tile_level, r = divmod(level, TILE_HEIGHT)
    first = index << r
    n = first // TILE_WIDTH
    width = min(TILE_WIDTH, (size >> (TILE_HEIGHT * tile_level)) - n * TILE_WIDTH)
    if ((index + 1) << level) > size or width < 1:
        raise ValueError("that node is not a complete subtree of the tree")
    return TileId(tile_level, n, width)


class TileHashes:
    """A :class:`~securechan.audit.merkle.NodeSource` over the tiles of a
    tree of one ``size``: any complete subtree's hash, recomputed from the
    tiles given to it (not trusted: a proof built from them verifies
    against a signed root or fails)."""

    def __init__(self, size: int, tiles: Mapping[TileId, bytes] | None = None) -> None:
        if type(size) is not int or size < 0:
            raise ValueError("a tree size is a non-negative integer")
        self.size = size
        self._tiles: dict[TileId, list[bytes]] = {}
        for tile, data in (tiles or {}).items():
            self.add(tile, data)

    def add(self, tile: TileId, data: bytes) -> None:
        """A fetched hash tile: exactly ``width`` hashes, or
        :class:`~securechan.errors.MalformedInput`."""
        if tile.level is None:
            raise ValueError("an entry bundle is not a hash tile")
        if not isinstance(data, bytes) or len(data) != tile.width * HASH_SIZE:
            raise MalformedInput("a tile is not its width in hashes") from None
        self._tiles[tile] = [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]

    def needed(self, ids: Iterable[NodeId]) -> set[TileId]:
        """The tiles, not yet added, that ``ids`` need."""
        return {t for t in (tile_for_node(n, self.size) for n in ids) if t not in self._tiles}

    def get_nodes(self, ids: Sequence[NodeId], /) -> list[bytes]:
        missing = self.needed(ids)
        if missing:  # a caller's bug: tiles_for_proofs lists what to fetch first
            raise LookupError(f"{len(missing)} tiles needed, not added")
        out = []
        for level, index in ids:
            tile = tile_for_node((level, index), self.size)
            r = level - tile.hash_level
            first = (index << r) - tile.index * TILE_WIDTH
            hashes = self._tiles[tile][first : first + (1 << r)]
            while len(hashes) > 1:  # a perfect subtree: pair up, level by level
                hashes = [
                    merkle.node_hash(a, b) for a, b in zip(hashes[::2], hashes[1::2], strict=True)
                ]
            out.append(hashes[0])
        return out

    def root(self) -> bytes:
        """The tree's root from the tiles (``LookupError`` without them)."""
        return merkle.root_at(self, self.size)


class _Recorder:
    """A NodeSource that notes what is asked (the asks never depend on the
    answers), to learn every tile a computation needs in one round."""

    def __init__(self) -> None:
        self.ids: list[NodeId] = []

    def get_nodes(self, ids: Sequence[NodeId], /) -> list[bytes]:
        self.ids += ids
        return [bytes(HASH_SIZE)] * len(ids)


def tiles_for_proofs(
    size: int, *, inclusion: Iterable[int] = (), consistency_from: Iterable[int] = ()
) -> set[TileId]:
    """Every tile needed for the root of the tree of ``size``, inclusion
    proofs of the leaves ``inclusion`` and consistency proofs (and roots)
    from the sizes ``consistency_from``: fetch these in parallel."""
    rec = _Recorder()
    if size:
        merkle.root_at(rec, size)
    for index in inclusion:
        merkle.inclusion_proof(rec, index, size)
    for old in consistency_from:
        merkle.consistency_proof(rec, old, size)
        if old:
            merkle.root_at(rec, old)
    return {tile_for_node(n, size) for n in rec.ids}


def encode_bundle(entries: Sequence[bytes]) -> bytes:
    """An entry bundle: each entry behind its big-endian uint16 length."""
    out = bytearray()
    for entry in entries:
        if len(entry) > 0xFFFF:
            raise ValueError("an entry is at most 65535 bytes")
        out += len(entry).to_bytes(2, "big") + entry
    return bytes(out)


def decode_bundle(data: bytes, width: int) -> list[bytes]:
    """The ``width`` entries of a bundle, or :class:`MalformedInput`."""
    entries: list[bytes] = []
    pos = 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise MalformedInput("an entry bundle ends inside a length") from None
        n = int.from_bytes(data[pos : pos + 2], "big")
        if pos + 2 + n > len(data):
            raise MalformedInput("an entry bundle ends inside an entry") from None
        entries.append(data[pos + 2 : pos + 2 + n])
        pos += 2 + n
    if len(entries) != width:
        raise MalformedInput("an entry bundle does not hold its width in entries") from None
    return entries


def verify_bundle(bundle: TileId, data: bytes, level0: bytes) -> list[bytes]:
    """The entries of ``bundle``, each checked against the hash at its place
    in the level 0 tile ``level0`` (of the same index and width, itself
    checked against a signed root); :class:`ProofFailed` if one differs."""
    if bundle.level is not None:
        raise ValueError("not an entry bundle")
    entries = decode_bundle(data, bundle.width)
    if len(level0) != bundle.width * HASH_SIZE:
        raise MalformedInput("a tile is not its width in hashes") from None
    for i, entry in enumerate(entries):
        if merkle.leaf_hash(entry) != level0[i * HASH_SIZE : (i + 1) * HASH_SIZE]:
            raise ProofFailed("an entry does not hash to its leaf in the tile")
    return entries


def verify_tiles(size: int, root: bytes, tiles: Mapping[TileId, bytes]) -> None:
    """Check a whole set of tiles of the tree of ``size`` (every one of
    :func:`tiles_of_size`, entry bundles included) against its signed
    ``root``: the partial tiles give the root (every hash of each is
    folded into it), each full tile hashes to its place in the tile above,
    each entry bundle's entries hash to their level 0 tile. Raises
    :class:`ProofFailed` or :class:`MalformedInput`; a missing tile is
    ``KeyError``."""
    hashes = TileHashes(size, {t: d for t, d in tiles.items() if t.level is not None})
    if merkle.root_at(hashes, size) != root:
        raise ProofFailed("the tiles do not give the checkpoint's root")
    for tile in tiles_of_size(size):
        data = tiles[tile]
        if tile.level is None:
            verify_bundle(tile, data, tiles[TileId(0, tile.index, tile.width)])
        elif tile.full:
            parent = (tile.hash_level + TILE_HEIGHT, tile.index)
            own = merkle.root_from_leaf_hashes(
                data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)
            )
            if hashes.get_nodes([parent])[0] != own:
                raise ProofFailed(f"{tile.path} does not hash to its place in the tile above")
