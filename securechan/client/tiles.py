"""Reading a log from its C2SP tlog-tiles (https://c2sp.org/tlog-tiles):
from the relay, or from any static copy of them (a web server, a CDN).

Nothing fetched is trusted: the checkpoint must verify with the log key the
caller names, and every proof is built from the fetched tiles and then
checked against the checkpoint's signed root
(:mod:`securechan.audit.tiles` does the maths). Where it is used:

* :class:`~securechan.client.logview.RelayLogs` proves two checkpoints of
  a relay consistent from the relay's tiles, and ``securechan witness
  cosign`` (:mod:`securechan.client.witness`) the old and new checkpoint
  before it cosigns (:func:`relay_consistency`: the proof endpoint only for
  a relay that serves no tiles);
* ``securechan relay tiles URL DIR`` copies a log's tiles to a folder for a
  static web server, checking every tile and entry on the way (:func:`mirror`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Final

import aiohttp

from securechan.audit import merkle
from securechan.audit.checkpoint import Checkpoint, open_checkpoint
from securechan.audit.note import MAX_NOTE_BYTES, VerifierKey
from securechan.audit.tiles import (
    TileHashes,
    TileId,
    decode_bundle,
    tiles_for_proofs,
    tiles_of_size,
    verify_bundle,
    verify_tiles,
)
from securechan.errors import MalformedInput, RelayError, RelayUnavailable
from securechan.transport import RelayClient

__all__ = [
    "MAX_RESOURCE",
    "Fetch",
    "TileReader",
    "consistency_from_tiles",
    "fetch_tiles",
    "http_fetch",
    "mirror",
    "relay_consistency",
]

Fetch = Callable[[str], Awaitable[bytes | None]]
"""Fetches one resource by its path under the log's prefix (``checkpoint``,
``tile/...``): its body, or ``None`` if the server has none (404)."""

MAX_RESOURCE: Final = 256 * (2 + 0xFFFF)
"""The largest tile or entry bundle (256 entries of at most 65535 bytes)."""


def http_fetch(session: aiohttp.ClientSession, prefix: str) -> Fetch:
    """A :data:`Fetch` over HTTP GET under ``prefix`` (any static server)."""
    base = prefix.rstrip("/") + "/"

    async def fetch(path: str) -> bytes | None:
        try:
            async with session.get(base + path) as resp:
                if resp.status == 404:
                    return None
                if resp.status != 200:
                    raise RelayUnavailable(f"{base + path}: HTTP {resp.status}")
                body = await resp.content.read(MAX_RESOURCE + 1)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise RelayUnavailable(f"{base + path}: {type(e).__name__}") from None
        if len(body) > MAX_RESOURCE:
            raise MalformedInput(f"{path} is larger than any tile")
        return body

    return fetch


async def fetch_tiles(fetch: Fetch, wanted: set[TileId]) -> dict[TileId, bytes]:
    """``wanted``, fetched in parallel; :class:`MalformedInput` if one is missing."""
    order = sorted(wanted, key=lambda t: t.path)
    bodies = await asyncio.gather(*(fetch(t.path) for t in order))
    out = {}
    for tile, body in zip(order, bodies, strict=True):
        if body is None:
            raise MalformedInput(f"the log does not serve {tile.path}")
        out[tile] = body
    return out


async def consistency_from_tiles(fetch: Fetch, old: int, new: int) -> list[bytes]:
    """``PROOF(old, D[new])`` built from the log's tiles of size ``new`` (a
    few tiles, fetched in parallel): what a relay's proof endpoint answers,
    without it. Unverified: check it against the two signed roots with
    :func:`~securechan.audit.merkle.verify_consistency`."""
    hashes = TileHashes(new)
    if 0 < old < new:
        for tile, body in (
            await fetch_tiles(fetch, tiles_for_proofs(new, consistency_from=[old]))
        ).items():
            hashes.add(tile, body)
    return merkle.consistency_proof(hashes, old, new)


async def relay_consistency(rc: RelayClient, old: int, new: int) -> Sequence[bytes]:
    """The consistency proof from ``old`` to ``new`` of a relay's log: from
    its tiles, as any monitor reads them, or from its proof endpoint when it
    serves none (an older relay) or not these. Unverified, like the
    endpoint's answer; the endpoint's refusals are raised as they are."""
    if not 0 < old < new:
        return ()
    try:
        return await consistency_from_tiles(rc.tile_resource, old, new)
    except (MalformedInput, RelayError):
        return await rc.consistency_proof(old, new)


class TileReader:
    """A log read from its tiles at one verified checkpoint."""

    def __init__(self, fetch: Fetch, note: str, checkpoint: Checkpoint) -> None:
        self._fetch = fetch
        self.note = note
        self.checkpoint = checkpoint
        self.hashes = TileHashes(checkpoint.size)
        self._raw: dict[TileId, bytes] = {}

    @classmethod
    async def open(cls, fetch: Fetch, key: VerifierKey) -> TileReader:
        """The log's ``checkpoint``, verified with ``key``
        (:class:`~securechan.errors.VerificationFailed` otherwise)."""
        raw = await fetch("checkpoint")
        if raw is None:
            raise MalformedInput("the log serves no checkpoint")
        if len(raw) > MAX_NOTE_BYTES:
            raise MalformedInput("the log's checkpoint is too long")
        try:
            note = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedInput("the log's checkpoint is not UTF-8") from None
        return cls(fetch, note, open_checkpoint(note, key))

    async def tiles(self, wanted: set[TileId]) -> dict[TileId, bytes]:
        """Fetch (in parallel) the tiles not fetched yet; all of them."""
        new = await fetch_tiles(self._fetch, {t for t in wanted if t not in self._raw})
        for tile, body in new.items():
            if tile.level is not None:
                self.hashes.add(tile, body)
            self._raw[tile] = body
        return {t: self._raw[t] for t in wanted}

    async def _ready(self, **asks: list[int]) -> None:
        await self.tiles(tiles_for_proofs(self.checkpoint.size, **asks))

    async def inclusion_proof(self, index: int) -> list[bytes]:
        """``PATH(index, D[size])`` built from tiles (check it with
        :func:`~securechan.audit.merkle.verify_inclusion`)."""
        await self._ready(inclusion=[index])
        return merkle.inclusion_proof(self.hashes, index, self.checkpoint.size)

    async def consistency_proof(self, old: int) -> list[bytes]:
        """``PROOF(old, D[size])`` built from tiles (check it with
        :func:`~securechan.audit.merkle.verify_consistency`)."""
        await self._ready(consistency_from=[old])
        return merkle.consistency_proof(self.hashes, old, self.checkpoint.size)

    async def entries(self, bundle: int) -> list[bytes]:
        """The entries of bundle ``bundle``, each checked against the signed
        root: the level 0 tile is proved by the inclusion proof of its first
        leaf, whose first 8 hashes are folded from the tile's other hashes."""
        size = self.checkpoint.size
        first = bundle * 256
        if not 0 <= first < size:
            raise ValueError("the checkpoint has no such entry bundle")
        width = min(256, size - first)
        tile, entries = TileId(0, bundle, width), TileId(None, bundle, width)
        got = await self.tiles({tile, entries})
        proof = await self.inclusion_proof(first)
        merkle.verify_inclusion(got[tile][:32], first, size, proof, self.checkpoint.root_hash)
        return verify_bundle(entries, got[entries], got[tile])


def _write(path: Path, data: bytes) -> None:
    """Atomically, so a web server serving the folder sees the old file or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


async def mirror(fetch: Fetch, key: VerifierKey, directory: Path) -> tuple[int, int]:
    """Copy the log's newest checkpoint and all its tiles and entry bundles
    to ``directory`` at their tlog-tiles paths, for a static web server.

    Every tile is checked (:func:`~securechan.audit.tiles.verify_tiles`)
    before anything is written; full tiles already in the folder are read
    from it, not fetched (they never change), so a second run fetches only
    what is new. The checkpoint is written last: the folder never offers a
    checkpoint whose tiles are not there. Returns the size and the number
    of files written. Holds the tiles in memory (8 KiB per 256 leaves).
    """
    reader = await TileReader.open(fetch, key)
    size = reader.checkpoint.size
    have: dict[TileId, bytes] = {}
    for tile in tiles_of_size(size):
        if tile.full and (directory / tile.path).is_file():
            have[tile] = (directory / tile.path).read_bytes()
            if tile.level is not None:
                reader.hashes.add(tile, have[tile])
            else:
                decode_bundle(have[tile], tile.width)
    fetched = await reader.tiles({t for t in tiles_of_size(size) if t not in have})
    verify_tiles(size, reader.checkpoint.root_hash, {**have, **fetched})
    for tile, data in sorted(fetched.items(), key=lambda item: item[0].path):
        _write(directory / tile.path, data)
    _write(directory / "checkpoint", reader.note.encode())
    return size, len(fetched) + 1
